//! The stand-in agent: what `demo` and the end-to-end tests run instead of
//! a real coding agent. It waits a while, then appends a line to
//! `stories/<id>.md` in its worktree and commits it, or fails on purpose.
//!
//! In `current` it first merges the default branch in, as an agent told of
//! a conflict would, and resolves conflicts by keeping the lines of both
//! sides. `--conflict-every N` makes every Nth story (by a hash of its id)
//! also add a line to the shared `CHANGELOG.md`, so that such stories
//! really conflict when they land; `--break-every N` makes every Nth story
//! leave a `broken/<id>` file on its first run, which the demo's gate
//! refuses, and remove it once landing sent the story back for its gate.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use huskies_engine::hash::stable_hash;

#[derive(clap::Args)]
pub struct StandInArgs {
    /// How long the "work" takes.
    #[arg(long, default_value_t = 1_000)]
    duration_ms: u64,
    /// Extra random time, 0..jitter.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// Share of runs that fail (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// From this attempt on, never fail on purpose (0: no such limit). The
    /// demo passes the agents' `max_attempts`, so its injected failures show
    /// retries but never give a story up.
    #[arg(long, default_value_t = 0)]
    succeed_from_attempt: u32,
    /// Append "story stage token node" here when a run starts.
    #[arg(long)]
    journal: Option<std::path::PathBuf>,
    /// Mixed into the choice of runs that fail, so another seed fails
    /// other runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Every Nth story also edits the shared CHANGELOG.md (0: none).
    #[arg(long, default_value_t = 0)]
    conflict_every: u64,
    /// Every Nth story is broken (fails the gate) until sent back (0: none).
    #[arg(long, default_value_t = 0)]
    break_every: u64,
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set: the stand-in runs under a huskies agent"))
}

pub fn run(a: StandInArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        return Err(format!("--fail-rate {} is not between 0 and 1", a.fail_rate));
    }
    let story = env("HUSKIES_STORY_ID")?;
    let stage = env("HUSKIES_STAGE")?;
    let token = env("HUSKIES_TOKEN")?;
    let node = env("HUSKIES_NODE")?;
    let attempt = std::env::var("HUSKIES_ATTEMPT").unwrap_or_default();
    if let Some(j) = &a.journal {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(j).map_err(|e| e.to_string())?;
        f.write_all(format!("{story} {stage} {token} {node}\n").as_bytes()).map_err(|e| e.to_string())?;
    }
    let h = stable_hash(&[
        story.as_bytes(),
        stage.as_bytes(),
        token.as_bytes(),
        node.as_bytes(),
        attempt.as_bytes(),
        &a.seed.to_be_bytes(),
    ]);
    let jitter = if a.jitter_ms > 0 { h % a.jitter_ms } else { 0 };
    std::thread::sleep(Duration::from_millis(a.duration_ms + jitter));
    let spared = a.succeed_from_attempt > 0 && attempt.parse::<u32>().is_ok_and(|n| n >= a.succeed_from_attempt);
    if !spared && ((h >> 32) as f64 / u32::MAX as f64) < a.fail_rate {
        return Err(format!("stand-in failed {story} ({stage}) on purpose"));
    }
    let dir = Path::new(".");
    let git = |e: git2::Error| format!("git: {}", e.message());
    let repo = git2::Repository::open(dir).map_err(git)?;
    let last_failure = std::env::var("HUSKIES_LAST_FAILURE").unwrap_or_default();
    let mut touched = vec![];
    // Work starts on top of the default branch as it is now (after a
    // conflict, that is how it gets resolved). Later stages do not merge
    // again, so stories that edit the same lines really conflict.
    let branch = std::env::var("HUSKIES_DEFAULT_BRANCH").unwrap_or_default();
    if !branch.is_empty() && stage == "current" {
        merge_default(&repo, &branch).map_err(git)?;
    }
    if stage == "current" {
        let pick = |every: u64, salt: &[u8]| every > 0 && stable_hash(&[salt, story.as_bytes()]).is_multiple_of(every);
        if pick(a.conflict_every, b"conflict") {
            let title = std::env::var("HUSKIES_STORY_TITLE").unwrap_or_default();
            add_line(dir, Path::new("CHANGELOG.md"), &format!("- {story}: {title}"), true)?;
            touched.push(std::path::PathBuf::from("CHANGELOG.md"));
        }
        let broken = Path::new("broken").join(&story);
        if pick(a.break_every, b"break") && !last_failure.contains("gate") {
            add_line(dir, &broken, "this story breaks the build until it is sent back", false)?;
            touched.push(broken);
        } else if dir.join(&broken).exists() {
            std::fs::remove_file(dir.join(&broken)).map_err(|e| format!("{}: {e}", broken.display()))?;
            touched.push(broken);
        }
    }
    let rel = Path::new("stories").join(format!("{story}.md"));
    add_line(dir, &rel, &format!("- {stage}: done by {node} (token {token})"), false)?;
    touched.push(rel);
    commit(&repo, &story, &stage, &node, &touched).map_err(|e| format!("commit: {}", e.message()))
}

/// Appends `line` to `rel` (once only, with `once`).
fn add_line(dir: &Path, rel: &Path, line: &str, once: bool) -> Result<(), String> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    if once && std::fs::read_to_string(&path).is_ok_and(|t| t.lines().any(|l| l == line)) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

/// Merges `origin/<branch>` into HEAD unless HEAD has it already; a
/// conflicting text file keeps the lines of both sides (theirs first).
fn merge_default(repo: &git2::Repository, branch: &str) -> Result<(), git2::Error> {
    let Ok(theirs) = repo.refname_to_id(&format!("refs/remotes/origin/{branch}")) else { return Ok(()) };
    let head = repo.head()?.peel_to_commit()?;
    if head.id() == theirs || repo.graph_descendant_of(head.id(), theirs)? {
        return Ok(());
    }
    let theirs = repo.find_commit(theirs)?;
    let mut index = repo.merge_commits(&head, &theirs, None)?;
    let conflicts: Vec<git2::IndexConflict> = index.conflicts()?.collect::<Result<_, _>>()?;
    for c in conflicts {
        let text = |e: &Option<git2::IndexEntry>| {
            e.as_ref()
                .and_then(|e| repo.find_blob(e.id).ok())
                .map(|b| String::from_utf8_lossy(b.content()).into_owned())
                .unwrap_or_default()
        };
        let (ours, theirs_text) = (text(&c.our), text(&c.their));
        let mut lines: Vec<&str> = theirs_text.lines().collect();
        for l in ours.lines() {
            if !lines.contains(&l) {
                lines.push(l);
            }
        }
        let merged = lines.join("\n") + "\n";
        let Some(mut entry) = c.our.or(c.their) else { continue };
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&entry.path).into_owned());
        entry.id = repo.blob(merged.as_bytes())?;
        entry.file_size = merged.len() as u32;
        entry.flags &= !0x3000; // stage 0: resolved
        index.remove_path(&path)?;
        index.add(&entry)?;
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let sig = git2::Signature::now("huskies stand-in", "stand-in@huskies.invalid")?;
    let msg = format!("merge origin/{branch}, conflicts resolved by keeping both sides");
    repo.commit(Some("HEAD"), &sig, &sig, &msg, &tree, &[&head, &theirs])?;
    let mut co = git2::build::CheckoutBuilder::new();
    co.force();
    repo.checkout_head(Some(&mut co))
}

fn commit(
    repo: &git2::Repository,
    story: &str,
    stage: &str,
    node: &str,
    paths: &[std::path::PathBuf],
) -> Result<(), git2::Error> {
    let dir = repo.workdir().ok_or_else(|| git2::Error::from_str("a bare repository"))?.to_owned();
    let mut index = repo.index()?;
    for rel in paths {
        if dir.join(rel).exists() {
            index.add_path(rel)?;
        } else {
            index.remove_path(rel)?;
        }
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("huskies stand-in", "stand-in@huskies.invalid")?;
    let parent = repo.head()?.peel_to_commit()?;
    repo.commit(Some("HEAD"), &sig, &sig, &format!("{story}: {stage} by {node}"), &tree, &[&parent])?;
    Ok(())
}
