//! Landing end to end: real `huskies` agents land stories on the default
//! branch of a real remote served by `git daemon`, gated by a test script
//! from the repository itself.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// `git daemon`, its whole process group killed on drop (the `git`
/// wrapper starts the daemon as a child of its own).
struct GitDaemon(Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn git_daemon(base: &Path) -> (GitDaemon, u16) {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let child = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git daemon (Debian package git)");
    let daemon = GitDaemon(child);
    wait_for("git daemon", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (daemon, port)
}

/// The repository's own gate: no conflict markers, no `BROKEN` file. A
/// tree holding `slow.txt` makes the first gate run stop for a while (and
/// say where it runs), so the test can kill the node in the middle.
const CHECK_SH: &str = r#"#!/bin/sh
if grep -rqE '^(<<<<<<<|>>>>>>>)' --exclude-dir=.git .; then echo "conflict markers"; exit 1; fi
if [ -e BROKEN ]; then echo "BROKEN is here"; exit 1; fi
if [ -e slow.txt ] && [ ! -e "$SLOW_MARK" ]; then pwd > "$SLOW_MARK"; sleep 60; fi
echo ok
"#;

/// The agent for `current`: writes its story's file; `clash-*` stories all
/// rewrite the first line of `shared.txt` (so they really conflict); the
/// `broken` story adds `BROKEN` until its gate failure comes back. Told of
/// a conflict, it merges the default branch in, keeping its own side.
const AGENT_SH: &str = r#"set -e
id=$HUSKIES_STORY_ID
git config user.email agent@huskies.invalid
git config user.name agent
case "$HUSKIES_LAST_FAILURE" in
  *"merge conflict"*) git merge -q -X ours --no-edit "origin/$HUSKIES_DEFAULT_BRANCH" ;;
esac
case $id in
  clash-*) echo "$id" > shared.txt; git add shared.txt ;;
  broken) case "$HUSKIES_LAST_FAILURE" in
      *gate*) git rm -q BROKEN ;;
      *) echo x > BROKEN; git add BROKEN ;;
    esac ;;
  *) echo "$id" > "$id.txt"; git add "$id.txt" ;;
esac
git commit -q -m "$id" || true
"#;

fn seed_repo(root: &Path) {
    let seed = root.join("seed");
    let repo = git2::Repository::init(&seed).unwrap();
    std::fs::write(seed.join("shared.txt"), "nobody\n").unwrap();
    std::fs::write(seed.join("check.sh"), CHECK_SH).unwrap();
    let mut idx = repo.index().unwrap();
    for f in ["shared.txt", "check.sh"] {
        idx.add_path(Path::new(f)).unwrap();
    }
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("e2e", "e2e@huskies.invalid").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
    let remote = root.join("remote.git");
    let _ = std::fs::remove_dir_all(&remote);
    git2::build::RepoBuilder::new().bare(true).clone(seed.to_str().unwrap(), &remote).unwrap();
    // The reflog shows every commit the default branch ever pointed at.
    git2::Repository::open_bare(&remote).unwrap().config().unwrap().set_str("core.logAllRefUpdates", "always").unwrap();
}

/// Two agents land five stories through a real `git daemon`: two that
/// edit the same line (one goes back with the file named, and lands after
/// its agent merged), one that breaks the gate (goes back with the gate's
/// output, lands fixed), and one whose landing node is killed with -9 in
/// the middle of its gate (the other node lands it). The default branch
/// ends with each story exactly once, and every commit it ever pointed at
/// passes the gate.
#[test]
fn stories_land_on_main_through_conflicts_gate_failures_and_a_kill() {
    let dir = tempdir::TempDir::new("landing");
    let root = dir.0.clone();
    seed_repo(&root);
    let (_daemon, git_port) = git_daemon(&root);
    let url = format!("git://127.0.0.1:{git_port}/remote.git");
    let mut c = Cluster::unstarted(dir);
    let slow_mark = root.join("slow-gate-started");
    c.env.push(("SLOW_MARK".into(), slow_mark.to_string_lossy().into()));
    c.start_server();
    let agents = format!(
        "[agents.current]\ncommand = \"sh\"\nargs = [\"-c\", {AGENT_SH:?}]\n\
         [agents.qa]\ncommand = \"true\"\n\
         [merge]\ngates = [\"sh check.sh\"]\ngate_timeout_ms = 120000\nbatch = 3\n"
    );
    for i in 1..=2 {
        let work = root.join(format!("agent-{i}"));
        git2::Repository::clone(&url, &work).unwrap();
        std::fs::create_dir_all(work.join(".huskies")).unwrap();
        let toml =
            format!("capacity = 3\nclaim_timeout_ms = 3000\nscan_interval_ms = 200\nretry_backoff_ms = 500\n{agents}");
        std::fs::write(work.join(".huskies/project.toml"), toml).unwrap();
        c.start_agent_with(i, "127.0.0.1", "");
    }
    let stories = ["clash-a", "clash-b", "broken", "slow", "plain"];
    for s in stories {
        c.add_story(s);
    }
    // Kill the node whose gate runs the slow tree, in the middle of it.
    wait_for("the slow gate to start", Duration::from_secs(60), || slow_mark.exists());
    let at = std::fs::read_to_string(&slow_mark).unwrap();
    let victim = if at.contains("agent-1") { "agent-1" } else { "agent-2" };
    c.kill(victim, libc::SIGKILL);
    wait_for("every story done", Duration::from_secs(120), || {
        let st = c.stages();
        st.len() == stories.len() && st.iter().all(|(_, stage, _)| stage == "done")
    });

    let remote = git2::Repository::open_bare(root.join("remote.git")).unwrap();
    let tip = remote.refname_to_id("refs/heads/master").unwrap();
    let mut walk = remote.revwalk().unwrap();
    walk.push(tip).unwrap();
    walk.simplify_first_parent().unwrap();
    let mut landed = Vec::new();
    for oid in walk {
        let commit = remote.find_commit(oid.unwrap()).unwrap();
        if let Some((story, _)) = huskies_net::land::landed_of(commit.message().unwrap_or("")) {
            landed.push(story.to_owned());
        }
    }
    landed.sort();
    let mut want: Vec<String> = stories.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(landed, want, "each story on master exactly once");

    // `huskies queue`: nothing waits; the landings, each with the commit
    // master holds for it.
    let server = format!("http://127.0.0.1:{}", c.port);
    let q: serde_json::Value =
        serde_json::from_str(&cli(&["queue", "--json", "--server", &server, "--key", &c.key])).unwrap();
    assert_eq!(q["order"].as_array().map(Vec::len), Some(0), "{q}");
    let shown = q["landed"].as_array().cloned().unwrap_or_default();
    assert_eq!(shown.len(), stories.len(), "{q}");
    for l in &shown {
        let commit = remote.find_commit(git2::Oid::from_str(l["commit"].as_str().unwrap()).unwrap()).unwrap();
        let on = huskies_net::land::landed_of(commit.message().unwrap()).map(|(s, _)| s.to_owned());
        assert_eq!(on.as_deref(), l["id"].as_str(), "the queue names the commit that landed it");
    }
    let shown = cli(&["story", "show", "slow", "--server", &server, "--key", &c.key]);
    let commit = shown.lines().find_map(|l| l.strip_prefix("landed on the default branch in ")).unwrap_or("");
    let commit = remote.find_commit(git2::Oid::from_str(commit.trim()).unwrap()).unwrap();
    assert_eq!(huskies_net::land::landed_of(commit.message().unwrap()).map(|(s, _)| s), Some("slow"), "{shown}");
    let text = cli(&["queue", "--server", &server, "--key", &c.key]);
    assert!(text.contains("merge queue: 0 waiting") && text.contains("last landed:"), "{text}");

    // Every commit master ever pointed at passes the gate's checks.
    let reflog = remote.reflog("refs/heads/master").unwrap();
    // At least two: the stories sent back (the conflict, the broken gate)
    // land after the others. Batching decides whether more pushes happen
    // (a loaded CI machine once saw exactly two).
    assert!(reflog.len() >= 2, "landed in several pushes: {}", reflog.len());
    for entry in reflog.iter() {
        let tree = remote.find_commit(entry.id_new()).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("BROKEN")).is_err(), "master pointed at a broken tree");
        let shared = tree.get_path(Path::new("shared.txt")).unwrap();
        let text = String::from_utf8_lossy(remote.find_blob(shared.id()).unwrap().content()).into_owned();
        assert!(!text.contains("<<<<<<<"), "master pointed at conflict markers");
    }

    // What went back, and why, is in the stories' run records.
    let runs = |id: &str| {
        let v: serde_json::Value = http()
            .get(format!("http://127.0.0.1:{}/api/stories/{id}", c.port))
            .header("authorization", &format!("Bearer {}", c.key))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        v["runs"].as_array().cloned().unwrap_or_default()
    };
    let returned = |id: &str| -> Vec<String> {
        runs(id)
            .iter()
            .filter(|r| r["outcome"] == "returned")
            .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let clashes: Vec<String> = ["clash-a", "clash-b"].iter().flat_map(|s| returned(s)).collect();
    assert!(
        clashes.iter().any(|r| r.contains("merge conflict") && r.contains("shared.txt")),
        "a clash went back naming the file: {clashes:?}"
    );
    let broken = returned("broken");
    assert!(broken.iter().any(|r| r.contains("sh check.sh") && r.contains("BROKEN is here")), "{broken:?}");
    let slow: serde_json::Value = runs("slow").last().cloned().unwrap_or_default();
    let survivor = if victim == "agent-1" { "agent-2" } else { "agent-1" };
    assert_eq!(slow["node"], survivor, "the node that lived landed the slow story: {slow}");
}
