//! End-to-end tests of stories and runs with real processes on loopback:
//! a body reaching the agent and the pushed branch, runs that must commit,
//! edit / retry / rm, logs fetched from the node that ran the story, the
//! the demo
//! green for several seeds.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// The CLI against this cluster's server, with its admin key.
fn run(c: &Cluster, args: &[&str]) -> std::process::Output {
    let server = format!("http://127.0.0.1:{}", c.port);
    Command::new(EXE).args(args).args(["--server", &server, "--key", &c.key]).output().unwrap()
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    let out = run(c, args);
    assert!(out.status.success(), "huskies {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn story_json(c: &Cluster, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(c, &["story", "show", id, "--json"])).unwrap()
}

fn wait_stage(c: &Cluster, id: &str, stage: &str, secs: u64) {
    wait_for(&format!("{id} in {stage}"), Duration::from_secs(secs), || {
        c.stages().iter().any(|(s, st, _)| s == id && st == stage)
    });
}

/// A committing shell agent: `script` runs in the worktree, then
/// everything it wrote is committed.
fn sh_agent(stage: &str, script: &str, extra: &str) -> String {
    let script = format!(
        "{script} && git add -A && git -c user.name=agent -c user.email=agent@example.com commit -qm \"$HUSKIES_STORY_ID\""
    );
    format!("[agents.{stage}]\ncommand = \"sh\"\nargs = [\"-c\", {script:?}, \"sh\", \"{{body}}\"]\n{extra}")
}

fn branch_file(c: &Cluster, story: &str, file: &str) -> Option<String> {
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    let r = remote.find_reference(&format!("refs/heads/huskies/{story}")).ok()?;
    let tree = r.peel_to_commit().unwrap().tree().unwrap();
    let entry = tree.get_path(Path::new(file)).ok()?;
    Some(String::from_utf8_lossy(remote.find_blob(entry.id()).unwrap().content()).into_owned())
}

/// A story's body reaches the agent (story file and `{body}`), which writes
/// it into the repository and commits; the pushed branch holds it, and the
/// run's record names the commit.
#[test]
fn body_reaches_the_agent_and_the_pushed_branch() {
    let mut c = Cluster::new("body");
    c.start_agent_with(
        1,
        "127.0.0.1",
        &sh_agent("current", "cp \"$HUSKIES_STORY_FILE\" story.md && printf '%s' \"$1\" > body.md", ""),
    );
    let body =
        "## Acceptance\n\n- the login form says *why* it failed\n- \"quotes\", {title} and $HOME stay as written\n";
    let file = c.root().join("body.md");
    std::fs::write(&file, body).unwrap();
    let id = ok(&c, &["story", "add", "Login errors", "--body-file", file.to_str().unwrap(), "--stage", "current"]);
    let id = id.trim();
    wait_stage(&c, id, "qa", 30);
    assert_eq!(branch_file(&c, id, "body.md").as_deref(), Some(body), "{{body}} reached the agent verbatim");
    let story = branch_file(&c, id, "story.md").unwrap();
    for want in [format!("- id: {id}"), "# Login errors".into(), "- stage: current".into(), "- attempt: 1".into()] {
        assert!(story.contains(&want), "story file lacks {want:?}:\n{story}");
    }
    assert!(story.contains(body), "{story}");
    let d = story_json(&c, id);
    assert_eq!(d["body"], body);
    let runs = d["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    // The branch ends in huskies' seal commit; the record names the
    // agent's commit beneath it.
    let seal = remote.find_reference(&format!("refs/heads/huskies/{id}")).unwrap().peel_to_commit().unwrap();
    assert!(seal.message().unwrap().contains(&format!("Huskies-Claim: {id} current 1 agent-1")));
    assert_eq!((runs[0]["outcome"].as_str(), runs[0]["exit_code"].as_i64()), (Some("succeeded"), Some(0)));
    assert_eq!(runs[0]["commit"], seal.parent_id(0).unwrap().to_string(), "the record names the agent's commit");
    println!("{}", ok(&c, &["story", "show", id]));
}

/// A run that exits 0 without committing fails with "no commits" and the
/// story does not advance; after `max_attempts` it is failed, `status`
/// lists it with the reason. An edit and a retry (with an agent that now
/// commits) take it through.
#[test]
fn no_commits_fails_then_edit_and_retry() {
    let mut c = Cluster::new("nocommit");
    c.start_agent_with(1, "127.0.0.1", "[agents.current]\ncommand = \"true\"\nmax_attempts = 2\n");
    ok(&c, &["story", "add", "Nothing happens", "--id", "idle", "--stage", "current"]);
    wait_for("idle to fail for good", Duration::from_secs(40), || story_json(&c, "idle")["failed"] == true);
    let show = ok(&c, &["story", "show", "idle"]);
    assert!(show.contains("no commits") && show.contains("FAILED after 2 attempts"), "{show}");
    assert_eq!(story_json(&c, "idle")["stage"], "current", "it did not advance");
    let runs = story_json(&c, "idle")["runs"].clone();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert!(runs.as_array().unwrap().iter().all(|r| r["outcome"] == "failed" && r["exit_code"] == 0));
    let status = ok(&c, &["status"]);
    assert!(
        status.contains("failed (") && status.lines().any(|l| l.contains("idle") && l.contains("no commits")),
        "{status}"
    );

    // A retry is refused while nothing failed... and works after a fix.
    let agent_toml = c.root().join("agent-1/.huskies/project.toml");
    let fixed = format!(
        "capacity = 2\nclaim_timeout_ms = 3000\nscan_interval_ms = 200\n{}",
        sh_agent("current", "echo work > work.md", "")
    );
    std::fs::write(&agent_toml, fixed).unwrap();
    ok(&c, &["story", "edit", "idle", "--title", "Something happens", "--priority", "3", "--body", "now with a body"]);
    let d = story_json(&c, "idle");
    assert_eq!(
        (d["title"].as_str(), d["priority"].as_i64(), d["body"].as_str()),
        (Some("Something happens"), Some(3), Some("now with a body"))
    );
    std::thread::sleep(Duration::from_millis(500)); // the agent reloads its project.toml
    ok(&c, &["story", "retry", "idle"]);
    wait_stage(&c, "idle", "qa", 30);
    let d = story_json(&c, "idle");
    let outcomes: Vec<&str> = d["runs"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failed", "failed", "succeeded"]);
    assert_eq!(d["reason"], serde_json::Value::Null, "an advance clears the reason");
    println!("{}", ok(&c, &["story", "show", "idle"]));
    let again = run(&c, &["story", "retry", "idle"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("has not failed"));
}

/// `story rm` stops the run of a held story and leaves a tombstone that is
/// listed only with `--all` and never claimed or moved again.
#[test]
fn rm_stops_a_held_story_and_leaves_a_tombstone() {
    let mut c = Cluster::new("rm");
    let port = c.start_agent_with(1, "127.0.0.1", "[agents.current]\ncommand = \"sleep\"\nargs = [\"30\"]\n");
    ok(&c, &["story", "add", "Long job", "--id", "long", "--stage", "current"]);
    let key = c.key.clone();
    let running =
        || status_at("127.0.0.1", port, &key).is_some_and(|s| s["runs"].as_array().is_some_and(|r| !r.is_empty()));
    wait_for("the agent to run it", Duration::from_secs(20), running);
    let out = ok(&c, &["story", "rm", "long"]);
    assert!(out.contains("removed"), "{out}");
    wait_for("the run to stop", Duration::from_secs(10), || !running());
    let d = story_json(&c, "long");
    assert_eq!((d["removed"].as_bool(), d["holder"].is_null()), (Some(true), true));
    assert!(!ok(&c, &["story", "list"]).contains("long"));
    assert!(ok(&c, &["story", "list", "--all"]).lines().any(|l| l.starts_with("long") && l.contains("REMOVED")));
    let mv = run(&c, &["story", "move", "long", "qa"]);
    assert!(String::from_utf8_lossy(&mv.stderr).contains("was removed"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!running(), "a tombstone is never claimed");
}

/// `huskies logs` asks the server which node ran the story and fetches the
/// log from that node's API; once that node is gone it says so.
#[test]
fn logs_come_from_the_node_that_ran_the_story() {
    let mut c = Cluster::new("logs");
    c.start_agent_with(
        1,
        "127.0.0.2",
        &sh_agent(
            "current",
            "echo \"hello from $HUSKIES_STORY_ID on $HUSKIES_NODE\" && echo 'warning: to stderr' >&2 && echo x > x.md",
            "",
        ),
    );
    ok(&c, &["story", "add", "Chatty", "--id", "chatty", "--stage", "current"]);
    wait_stage(&c, "chatty", "qa", 30);
    let log = ok(&c, &["logs", "chatty"]);
    assert!(log.contains("hello from chatty on agent-1") && log.contains("warning: to stderr"), "{log}");
    assert_eq!(ok(&c, &["logs", "chatty", "--stage", "current"]), log);
    let d = story_json(&c, "chatty");
    assert!(d["runs"][0]["stderr_tail"].as_str().unwrap().contains("warning: to stderr"));
    c.kill("agent-1", libc::SIGKILL);
    wait_for("the server to see agent-1 dead", Duration::from_secs(15), || {
        status(c.port, &c.key)
            .is_some_and(|s| s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "agent-1" && n["alive"] == false))
    });
    let out = run(&c, &["logs", "chatty"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("agent-1") && err.contains("offline"), "{err}");
}

/// On a machine whose git knows nobody (no user config, no system config,
/// no identity variables), an agent's plain `git commit` works: the run
/// gets `huskies <node>`, and the project's `git_author` when set.
#[test]
fn agents_commit_on_a_machine_with_no_git_identity() {
    let mut c = Cluster::new("noident");
    let home = c.root().join("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    for (k, v) in [
        ("HOME", home.display().to_string()),
        ("XDG_CONFIG_HOME", home.display().to_string()),
        ("GIT_CONFIG_NOSYSTEM", "1".to_owned()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".to_owned()),
        // Where a CI runner has these set, the test would prove nothing.
        ("GIT_AUTHOR_NAME", String::new()),
        ("GIT_AUTHOR_EMAIL", String::new()),
        ("GIT_COMMITTER_NAME", String::new()),
        ("GIT_COMMITTER_EMAIL", String::new()),
        ("EMAIL", String::new()),
    ] {
        c.env.push((k.to_owned(), v));
    }
    let agent = "[agents.current]\ncommand = \"sh\"\nargs = [\"-c\", \"echo $HUSKIES_STORY_ID > work.txt && git add work.txt && git commit -qm work\"]\n";
    c.start_agent_with(1, "127.0.0.1", agent);
    c.start_agent_via(2, "127.0.0.1", "git_author = \"Ada Lovelace <ada@example.org>\"\n", agent, c.port);
    for id in ["plain", "named"] {
        ok(&c, &["story", "add", id, "--id", id, "--stage", "current"]);
    }
    wait_stage(&c, "plain", "qa", 30);
    wait_stage(&c, "named", "qa", 30);
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    for id in ["plain", "named"] {
        let seal = remote.find_reference(&format!("refs/heads/huskies/{id}")).unwrap().peel_to_commit().unwrap();
        let work = seal.parent(0).unwrap();
        assert_eq!(work.message().ok(), Some("work\n"));
        let (name, email) = (work.author().name().unwrap().to_owned(), work.author().email().unwrap().to_owned());
        let node = story_json(&c, id)["runs"][0]["node"].as_str().unwrap().to_owned();
        let want =
            if node == "agent-2" { ("Ada Lovelace", "ada@example.org".to_owned()) } else { ("huskies", node.clone()) };
        assert_eq!((name.as_str(), email), want, "{id}, run on {node}");
        assert_eq!(work.committer().name().ok(), Some(want.0));
    }
}

/// An agent that exits 0 but reports, as Claude Code does, that a tool
/// call was denied: the run fails with the call named, whatever the exit
/// code and the commits say.
#[test]
fn a_denied_tool_call_fails_the_run_with_its_name() {
    let mut c = Cluster::new("denied");
    let result = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"Done: committed.","total_cost_usd":0.0123,"usage":{"input_tokens":120,"output_tokens":55},"permission_denials":[{"tool_name":"Bash","tool_use_id":"t1","tool_input":{"command":"echo hi > f && git add f"}}]}"#;
    let agent = sh_agent("current", &format!("echo work > f.txt && printf '%s\\n' '{result}'"), "max_attempts = 1\n");
    c.start_agent_with(1, "127.0.0.1", &agent);
    ok(&c, &["story", "add", "Denied", "--id", "denied", "--stage", "current"]);
    wait_for("the run to be recorded", Duration::from_secs(30), || {
        story_json(&c, "denied")["runs"].as_array().is_some_and(|r| !r.is_empty())
    });
    let run = &story_json(&c, "denied")["runs"][0];
    assert_eq!(run["outcome"], "failed", "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("denied: Bash(echo hi > f && git add f)"), "{run}");
    let text = ok(&c, &["story", "show", "denied"]);
    assert!(text.contains("cost $0.0123") && text.contains("$0.0123  2 turns  tokens in 120 out 55"), "{text}");
    // What it cost is recorded all the same (the ledger's line).
    assert_eq!(
        (run["usage"]["cost_micro_usd"].as_u64(), run["usage"]["input_tokens"].as_u64()),
        (Some(12_300), Some(120)),
        "{run}"
    );
}

/// The demo's front door: green for several seeds, with injected failures
/// at 50% (retries happen, a story is never given up).
#[test]
fn demo_is_green_for_several_seeds() {
    let demos: Vec<_> = (1..=3)
        .map(|seed| {
            Command::new(EXE)
                .args(["demo", "--stories", "4", "--agents", "2", "--no-kill", "--fail-rate", "0.5"])
                .args(["--seed", &seed.to_string(), "--timeout-secs", "100"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (seed, d) in (1..=3).zip(demos) {
        let out = d.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "demo --seed {seed}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("stories done       4/4"), "{text}");
    }
}

/// The fleet bench as the README runs it, on a fleet of 3: every story
/// done, and every number read back from where it lives (/proc, /metrics,
/// the nodes' logs), none left at zero.
#[test]
fn fleet_bench_measures_a_small_fleet() {
    let out = Command::new(EXE)
        .args(["fleet-bench", "--agents", "3", "--stories", "4", "--rate", "4", "--timeout-secs", "100"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = text.lines().find(|l| l.starts_with("| 3 | 4/4 |")).unwrap_or_else(|| panic!("no result row: {text}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    // agents, done, CPU s/story, cores, server RSS, agent RSS, add → claim,
    // change → every node, heartbeat B/s per agent, server heartbeat B/s,
    // signature checks per agent per second.
    assert_eq!(cells.len(), 11, "{row}");
    let numbers = |cell: &str| cell.split(" / ").map(|v| v.parse::<f64>().ok()).collect::<Option<Vec<f64>>>();
    for (i, cell) in cells.iter().enumerate().skip(2) {
        let values = numbers(cell).unwrap_or_else(|| panic!("cell {i} of {row}"));
        // Every change reaching all 4 nodes in the same millisecond reads
        // 0, and so does a window without a new chain to check.
        let may_be_zero = i == 7 || i == 10;
        assert!(values.iter().all(|v| *v > 0.0 || (may_be_zero && *v == 0.0)), "cell {i} of {row}");
    }
    assert!(text.contains("heartbeats checked") && !text.contains("heartbeats checked      0.0 per"), "{text}");
    assert!(text.contains("stage changes seen by all 4 nodes"), "{text}");
}

/// Fencing at the remote with real processes and real git: agent-1 is cut
/// off from the cluster (a proxy between it and the server drops every
/// connection) but not from the remote, past the claim timeout, while its
/// run goes on. agent-2 reclaims, finishes and pushes. agent-1's run then
/// ends and its push is fenced; after the heal the branch holds agent-2's
/// work and agent-1's is on its side ref.
#[test]
fn a_cut_off_agent_cannot_overwrite_the_winner_at_the_remote() {
    let mut c = Cluster::new("fence");
    let proxy = Proxy::new(c.port);
    let slow = sh_agent("current", "sleep 8 && echo from-agent-1 > work.md", "");
    let port1 = c.start_agent_via(1, "127.0.0.1", "max_mesh_peers = 0\n", &slow, proxy.port);
    ok(&c, &["story", "add", "Contested", "--id", "contested", "--stage", "current"]);
    let key = c.key.clone();
    let running_on =
        |p: u16| status_at("127.0.0.1", p, &key).is_some_and(|s| s["runs"].as_array().is_some_and(|r| !r.is_empty()));
    wait_for("agent-1 to run the story", Duration::from_secs(20), || running_on(port1));
    let fast = sh_agent("current", "echo from-agent-2 > work.md", "");
    c.start_agent_via(2, "127.0.0.1", "max_mesh_peers = 0\n", &fast, c.port);
    proxy.cut();
    // agent-2 reclaims after the claim timeout, finishes and pushes.
    wait_stage(&c, "contested", "qa", 30);
    let winner_token = story_json(&c, "contested")["runs"][0]["token"].as_u64().unwrap();
    // agent-1's run ends meanwhile; its push meets agent-2's tip.
    wait_for("agent-1's push to be fenced", Duration::from_secs(30), || {
        status_at("127.0.0.1", port1, &key).is_some_and(|s| s["counters"]["fenced"] == 1)
    });
    proxy.heal();
    wait_for("agent-1's fenced run in the story's history", Duration::from_secs(30), || {
        story_json(&c, "contested")["runs"].as_array().is_some_and(|r| r.iter().any(|r| r["outcome"] == "fenced"))
    });
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    let tip = remote.find_reference("refs/heads/huskies/contested").unwrap().peel_to_commit().unwrap();
    assert!(
        tip.message().unwrap().contains(&format!("Huskies-Claim: contested current {winner_token} agent-2")),
        "{:?}",
        tip.message()
    );
    assert_eq!(branch_file(&c, "contested", "work.md").as_deref(), Some("from-agent-2\n"));
    let d = story_json(&c, "contested");
    let fenced = d["runs"].as_array().unwrap().iter().find(|r| r["outcome"] == "fenced").cloned().unwrap();
    let kept = format!("refs/heads/huskies-fenced/contested/{}-agent-1", fenced["token"]);
    assert!(fenced["reason"].as_str().unwrap().contains(&kept), "{fenced}");
    let loser = remote.find_reference(&kept).unwrap().peel_to_commit().unwrap();
    assert!(loser.message().unwrap().contains("agent-1"));
    let blob = loser.tree().unwrap().get_path(Path::new("work.md")).unwrap().id();
    assert_eq!(remote.find_blob(blob).unwrap().content(), b"from-agent-1\n", "agent-1's work is kept");
    assert_eq!(d["stage"], "qa", "the story advanced once, on agent-2's account");
    let refs = Command::new("git")
        .args(["for-each-ref", "--format=%(refname) %(objectname:short) %(subject)"])
        .current_dir(c.root().join("remote.git"))
        .output()
        .unwrap();
    println!("refs on the remote after a fenced push:\n{}", String::from_utf8_lossy(&refs.stdout));
    let status = ok(&c, &["status"]);
    assert!(status.contains("fenced runs") && status.contains(&kept), "{status}");
    println!("{}", ok(&c, &["story", "show", "contested"]));
}

/// Reclaim keeps progress: agent-1 pushes work in progress, then dies
/// (kill -9). agent-2 reclaims, starts from that progress, and is told it
/// resumes (`HUSKIES_RESUME`, the previous node and token).
#[test]
fn a_reclaim_resumes_from_pushed_progress() {
    let mut c = Cluster::new("resume");
    let first = sh_agent(
        "current",
        "echo step-1 > progress.md && git add -A && git -c user.name=a -c user.email=a@example.com commit -qm progress && sleep 60",
        "wip_push_interval_ms = 300\n",
    );
    c.start_agent_with(1, "127.0.0.1", &first);
    ok(&c, &["story", "add", "Long haul", "--id", "haul", "--stage", "current"]);
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    wait_for("agent-1's work in progress on the remote", Duration::from_secs(20), || {
        remote.find_reference("refs/heads/huskies-wip/haul/1").is_ok()
    });
    let resumed = sh_agent(
        "current",
        "test \"$HUSKIES_RESUME\" = 1 && test -f progress.md && echo \"resumed from $HUSKIES_PREVIOUS_NODE token $HUSKIES_PREVIOUS_TOKEN\" > resumed.md && grep -q 'resuming: the work of agent-1' \"$HUSKIES_STORY_FILE\"",
        "",
    );
    c.start_agent_with(2, "127.0.0.1", &resumed);
    c.kill("agent-1", libc::SIGKILL);
    wait_stage(&c, "haul", "qa", 30);
    assert_eq!(branch_file(&c, "haul", "progress.md").as_deref(), Some("step-1\n"), "agent-1's progress is in");
    assert_eq!(branch_file(&c, "haul", "resumed.md").as_deref(), Some("resumed from agent-1 token 1\n"));
    println!("{}", ok(&c, &["story", "show", "haul"]));
}

/// A graceful stop (SIGTERM) announces the node is leaving: with a 20 s
/// claim timeout, its story is reclaimed and finished by another agent in
/// a few seconds.
#[test]
fn a_stopped_agent_is_reclaimed_at_once() {
    let mut c = Cluster::with_settings("leave", "claim_timeout_ms = 20000\nscan_interval_ms = 200\n");
    let port1 = c.start_agent_with(1, "127.0.0.1", "[agents.current]\ncommand = \"sleep\"\nargs = [\"60\"]\n");
    ok(&c, &["story", "add", "Handed over", "--id", "handover", "--stage", "current"]);
    let key = c.key.clone();
    wait_for("agent-1 to run it", Duration::from_secs(20), || {
        status_at("127.0.0.1", port1, &key).is_some_and(|s| s["runs"].as_array().is_some_and(|r| !r.is_empty()))
    });
    c.start_agent_with(2, "127.0.0.1", &sh_agent("current", "echo done > done.md", ""));
    wait_for("agent-2 to be up", Duration::from_secs(20), || {
        status(c.port, &key)
            .is_some_and(|s| s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "agent-2" && n["alive"] == true))
    });
    #[allow(clippy::disallowed_methods)] // real processes, real time
    let stopped = std::time::Instant::now();
    c.kill("agent-1", libc::SIGTERM);
    wait_stage(&c, "handover", "qa", 15);
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(10), "reclaimed {took:?} after the stop; the claim timeout is 20 s");
    println!("reclaimed and finished {took:?} after SIGTERM (claim timeout 20 s)");
}

/// A busy agent process never delays the heartbeat: a run that keeps a
/// core spinning for 6 s (twice the claim timeout) is never counted dead
/// or reclaimed.
#[test]
fn a_busy_run_does_not_starve_heartbeats() {
    let mut c = Cluster::new("busy");
    c.start_agent_with(
        1,
        "127.0.0.1",
        &sh_agent("current", "timeout 6 sh -c 'while :; do :; done' ; echo spun > spun.md", ""),
    );
    ok(&c, &["story", "add", "Spin", "--id", "spin", "--stage", "current"]);
    let key = c.key.clone();
    let alive = || {
        status(c.port, &key)
            .is_some_and(|s| s["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "agent-1" && n["alive"] == true))
    };
    wait_for("agent-1 up", Duration::from_secs(20), alive);
    #[allow(clippy::disallowed_methods)] // real processes, real time
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        assert!(alive(), "agent-1 counted dead while its run spun ({:?} in)", start.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_stage(&c, "spin", "qa", 20);
    let d = story_json(&c, "spin");
    assert_eq!(d["runs"].as_array().unwrap().len(), 1, "one run, never reclaimed: {}", d["runs"]);
}

/// Epochs on a real cluster: with a small `epoch_after_changes` the server
/// cuts epochs while stories flow and get archived; both nodes move with
/// it, finished work keeps flowing, and an archived story that left the
/// live document is still shown, from the server's cold storage on disk.
#[test]
fn archived_stories_leave_the_live_document_and_stay_readable() {
    let mut c = Cluster::with_settings("epochs", "epoch_after_changes = 40\n");
    let stages: Vec<String> =
        ["current", "qa", "merge"].iter().map(|st| sh_agent(st, &format!("echo {st} >> out.txt"), "")).collect();
    let agent = c.start_agent_with(1, "127.0.0.1", &stages.join("\n"));
    for k in 0..6 {
        ok(&c, &["story", "add", &format!("Early {k}"), "--id", &format!("early-{k}"), "--stage", "current"]);
    }
    for k in 0..6 {
        wait_stage(&c, &format!("early-{k}"), "done", 60);
    }
    let key = c.key.clone();
    let epoch = |port: u16| status_at("127.0.0.1", port, &key).and_then(|s| s["epoch"].as_u64()).unwrap_or(0);
    for k in 0..6 {
        ok(&c, &["story", "move", &format!("early-{k}"), "archived"]);
    }
    // The early stories' own changes may already have made the server cut
    // (40 changes): only a cut after the moves leaves them out.
    let archived_in = epoch(c.port);
    // More work: enough changes for the server to cut.
    for k in 0..6 {
        ok(&c, &["story", "add", &format!("Late {k}"), "--id", &format!("late-{k}"), "--stage", "current"]);
    }
    for k in 0..6 {
        wait_stage(&c, &format!("late-{k}"), "done", 60);
    }
    wait_for("the server to cut an epoch after the moves", Duration::from_secs(30), || epoch(c.port) > archived_in);
    wait_for("the agent to follow", Duration::from_secs(30), || epoch(agent) == epoch(c.port));
    let archives: Vec<_> = std::fs::read_dir(c.root().join("server-data/archive")).unwrap().collect();
    assert!(!archives.is_empty(), "the previous epoch is in cold storage");
    let live = ok(&c, &["story", "list", "--all"]);
    for k in 0..6 {
        let id = format!("early-{k}");
        assert!(!live.lines().any(|l| l.starts_with(&id)), "{id} left the live document:\n{live}");
        let d = story_json(&c, &id);
        assert_eq!(d["stage"], "archived", "{id} shown from cold storage: {d}");
        // Its run history: a succeeded run per stage (a push can fail and
        // be retried, which adds a failed record).
        let runs = d["runs"].as_array().cloned().unwrap_or_default();
        for stage in ["current", "qa", "merge"] {
            let ok = runs.iter().any(|r| r["stage"] == stage && r["outcome"] == "succeeded");
            assert!(ok, "{id} from cold storage keeps its {stage} run: {d}");
        }
    }
    assert!(!run(&c, &["story", "show", "never-was"]).status.success(), "an unknown story is still unknown");
    // Each archive got its index of story ids on the way.
    for entry in std::fs::read_dir(c.root().join("server-data/archive")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "automerge") {
            let ids = std::fs::read_to_string(path.with_extension("ids")).unwrap_or_default();
            assert!(ids.starts_with("huskies-archive-ids 1 "), "{} has its index: {ids:?}", path.display());
        }
    }
}
