//! Landing a batch of stories on the default branch (blocking: run it on a
//! blocking thread). The engine decides what to land; this does it:
//!
//! 1. fetch; the tip of `origin/<default>` is the base;
//! 2. a story already on the branch (its `Huskies-Landed` trailer within
//!    the last [`LANDED_SCAN`] first-parent commits) is reported with that
//!    commit and never applied again;
//! 3. a story whose branch at the remote carries a newer claim than the
//!    landing's is fenced: a superseded merger never lands stale work;
//! 4. each other story is applied on top, in order (squash, merge or
//!    rebase, all in memory); one that conflicts with the base is sent
//!    back with the files, one that conflicts only with a story ahead of
//!    it in the batch waits for the next batch;
//! 5. the gates run in a scratch worktree of the result;
//! 6. the default branch moves to exactly that commit by a push leased on
//!    the base (never forced past anything it did not test); if the base
//!    moved meanwhile, all of it again on the new tip.
//!
//! Speculation: a batch may be built on top of stories of other nodes'
//! batches not landed yet (`ahead`). Their commits are made exactly as
//! their own node makes them (same parent, tree, message, author and
//! times: commit ids are equal), so once they land the default branch is
//! at the very commit this build stacked ours on. The gates run on the
//! whole stack; the push waits until the branch is at that commit and is
//! leased on it. Anything else (the batch ahead failed, or the branch went
//! elsewhere) means build again, or stop when the engine calls it off.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use git2::{Oid, Repository};
use huskies_engine::landing::{CONFLICT_REASON, LandReport, LandResult, LandStory, LeftOut};
use huskies_engine::{StoryId, Token};

use crate::git::{self, GitError};
use crate::gitauth::GitCredentials;
use crate::project::{MergeConfig, MergeMethod};

/// The trailer of every landed commit: `Huskies-Landed: <story> <token>`.
pub const LANDED_TRAILER: &str = "Huskies-Landed:";
/// First-parent commits of the default branch searched for a story's
/// trailer before landing it.
const LANDED_SCAN: usize = 20_000;
/// Builds a landing loses to a default branch that keeps moving before it
/// reports failure.
const LAND_TRIES: u32 = 4;
/// Bytes of a failing gate's output given back with the story.
const GATE_TAIL: usize = 1_500;
/// How often a tested batch built on one ahead looks whether that landed.
const AHEAD_POLL: Duration = Duration::from_secs(1);

/// What one landing needs besides the stories.
pub struct LandJob<'a> {
    pub project_root: &'a Path,
    pub node: &'a str,
    pub merge: &'a MergeConfig,
    pub creds: &'a GitCredentials,
    /// Where the gates' output goes.
    pub log: PathBuf,
    /// Set when the engine calls the landing off.
    pub cancel: &'a AtomicBool,
    /// Told, before the gates run, what each build left out.
    pub built: &'a (dyn Fn(LeftOut) + Sync),
}

fn retry(reason: &str) -> LandResult {
    LandResult::Retry { reason: reason.to_owned() }
}

/// The default branch: configured, else what the remote's HEAD names,
/// else `main` or `master`.
pub fn default_branch(repo: &Repository, configured: Option<&str>) -> Result<String, GitError> {
    if let Some(b) = configured {
        return Ok(b.to_owned());
    }
    if let Ok(r) = repo.find_reference("refs/remotes/origin/HEAD")
        && let Ok(Some(target)) = r.symbolic_target()
        && let Some(name) = target.strip_prefix("refs/remotes/origin/")
    {
        return Ok(name.to_owned());
    }
    for name in ["main", "master"] {
        if repo.refname_to_id(&format!("refs/remotes/origin/{name}")).is_ok() {
            return Ok(name.to_owned());
        }
    }
    Err(GitError::Git(git2::Error::from_str(
        "no default branch at the remote (origin/HEAD, main or master); set [merge] default_branch",
    )))
}

/// The story and token of a landed commit's trailer.
pub fn landed_of(message: &str) -> Option<(&str, u64)> {
    message.lines().rev().find_map(|l| {
        let mut w = l.strip_prefix(LANDED_TRAILER)?.split_whitespace();
        let story = w.next()?;
        Some((story, w.next()?.parse().ok()?))
    })
}

/// Lands `stories`, in order, on top of the stories of `ahead` not landed
/// yet. Never panics on what the remote holds.
pub fn land(job: &LandJob<'_>, ahead: &[LandStory], stories: &[LandStory]) -> LandReport {
    match land_tries(job, ahead, stories) {
        Ok(report) => report,
        Err(e) => LandReport { result: LandResult::Failed { reason: e.to_string() }, ..LandReport::default() },
    }
}

fn land_tries(job: &LandJob<'_>, ahead: &[LandStory], stories: &[LandStory]) -> Result<LandReport, GitError> {
    let repo = Repository::open(job.project_root)?;
    'build: for _ in 0..LAND_TRIES {
        git::fetch(&repo, job.creds)?;
        let branch = default_branch(&repo, job.merge.default_branch.as_deref())?;
        let tracking = format!("refs/remotes/origin/{branch}");
        let base = repo.refname_to_id(&tracking).map_err(|_| {
            GitError::Git(git2::Error::from_str(&format!("the remote has no branch {branch} to land on")))
        })?;
        let built = build(&repo, job, &branch, base, ahead, stories)?;
        let mut report = built.report;
        report.speculative = built.expect != base;
        if built.tip.is_some() && !report.left_out().is_empty() {
            (job.built)(report.left_out());
        }
        let Some(tip) = built.tip else {
            report.result = LandResult::Landed { commits: built.commits };
            return Ok(report);
        };
        match run_gates(&repo, job, base, tip, stories)? {
            GateVerdict::Passed => {}
            GateVerdict::Cancelled => {
                report.result = retry("called off");
                return Ok(report);
            }
            GateVerdict::Failed { gate, tail } => {
                report.result = LandResult::GateFailed { gate, output_tail: tail };
                return Ok(report);
            }
        }
        // Until the branch is where our stack starts: the tip we built on,
        // or (speculating) the commit the batch ahead lands as.
        #[allow(clippy::disallowed_methods)] // how long we wait is wall time
        let waiting_since = std::time::Instant::now();
        let mut at = base;
        loop {
            if job.cancel.load(Ordering::Relaxed) {
                report.result = retry("called off");
                return Ok(report);
            }
            if at == built.expect {
                let local = format!("refs/huskies/land/{}", job.node);
                repo.reference(&local, tip, true, "huskies: tested landing")?;
                let dst = format!("refs/heads/{branch}");
                let mut remote = repo.find_remote("origin")?;
                match git::push_leased(&repo, &mut remote, job.creds, &[(local, dst, at)])? {
                    Ok(()) => {
                        repo.reference(&tracking, tip, true, "huskies: landed")?;
                        report.result = LandResult::Landed { commits: built.commits };
                        return Ok(report);
                    }
                    Err(why) => {
                        tracing::info!(%why, "the default branch moved while the gates ran; building on the new tip");
                        continue 'build;
                    }
                }
            }
            // On the way to our stack's start (the batch ahead has not
            // landed, or landed in part): wait. Anywhere else: build again.
            let on_the_way = at == base || repo.graph_descendant_of(built.expect, at).unwrap_or(false);
            if !on_the_way {
                continue 'build;
            }
            if waiting_since.elapsed() > Duration::from_millis(job.merge.gate_timeout_ms) {
                report.result = retry("the batch ahead did not land");
                return Ok(report);
            }
            std::thread::sleep(AHEAD_POLL);
            git::fetch(&repo, job.creds)?;
            at = repo.refname_to_id(&tracking)?;
        }
    }
    Ok(LandReport { result: retry("the default branch kept moving"), ..LandReport::default() })
}

/// A batch applied on the base, in memory.
struct Built {
    report: LandReport,
    /// Every story of the batch that is (or will be, with `tip`) on the
    /// branch, with its commit.
    commits: Vec<(StoryId, String)>,
    /// The commit to test and land; `None` when nothing new applied.
    tip: Option<Oid>,
    /// Where our stories start: the base, or the commit the stories ahead
    /// make.
    expect: Oid,
}

fn build(
    repo: &Repository,
    job: &LandJob<'_>,
    branch: &str,
    base: Oid,
    ahead: &[LandStory],
    stories: &[LandStory],
) -> Result<Built, GitError> {
    let mut report = LandReport { base: base.to_string(), ..LandReport::default() };
    let all: Vec<LandStory> = ahead.iter().chain(stories).cloned().collect();
    let landed = landed_before(repo, base, &all)?;
    let mut commits = Vec::new();
    let mut cur = base;
    // The stories ahead, as their own nodes build them; one that does not
    // apply is theirs to report, and is left out of the stack.
    for s in ahead {
        if landed.iter().any(|(id, _)| *id == s.id.as_str()) {
            continue;
        }
        let Some(story_tip) = story_tip(repo, s) else { continue };
        if git::claim_of(&story_tip, s.id.as_str()).is_some_and(|(t, _)| t > s.token.0) {
            continue;
        }
        if let Ok(next) = apply(repo, job.merge.method, cur, &story_tip, s)? {
            cur = next;
        }
    }
    let expect = cur;
    let short = &report.base[..12.min(report.base.len())];
    for s in stories {
        if let Some(c) = landed.iter().find(|(id, _)| *id == s.id.as_str()).map(|(_, c)| *c) {
            commits.push((s.id.clone(), c.to_string()));
            continue;
        }
        let Some(story_tip) = story_tip(repo, s) else {
            let why = format!("its branch {} is not at the remote; push it again", git::branch_name(s.id.as_str()));
            report.conflicts.push((s.id.clone(), why));
            continue;
        };
        if let Some((t, _)) = git::claim_of(&story_tip, s.id.as_str())
            && t > s.token.0
        {
            report.fenced.push((s.id.clone(), Token(t)));
            continue;
        }
        match apply(repo, job.merge.method, cur, &story_tip, s)? {
            Ok(next) => {
                cur = next;
                commits.push((s.id.clone(), next.to_string()));
            }
            Err(files) => {
                // Against the base alone: a real conflict goes back to its
                // agent; one with a story stacked before it waits.
                if cur != base && apply(repo, job.merge.method, base, &story_tip, s)?.is_ok() {
                    report.deferred.push(s.id.clone());
                    continue;
                }
                let why = format!(
                    "{CONFLICT_REASON} with {branch} at {short} in: {files}; merge origin/{branch} into {} and resolve the conflicts in these files",
                    git::branch_name(s.id.as_str()),
                    files = files.join(", ")
                );
                report.conflicts.push((s.id.clone(), why));
            }
        }
    }
    Ok(Built { report, commits, tip: (cur != expect).then_some(cur), expect })
}

/// The story's branch at the remote, as last fetched.
fn story_tip<'r>(repo: &'r Repository, s: &LandStory) -> Option<git2::Commit<'r>> {
    let name = format!("refs/remotes/origin/{}", git::branch_name(s.id.as_str()));
    repo.refname_to_id(&name).ok().and_then(|oid| repo.find_commit(oid).ok())
}

/// Stories of the batch whose trailer is on the branch, with the commit.
fn landed_before<'a>(repo: &Repository, base: Oid, stories: &'a [LandStory]) -> Result<Vec<(&'a str, Oid)>, GitError> {
    let mut found = Vec::new();
    let mut walk = repo.revwalk()?;
    walk.push(base)?;
    walk.simplify_first_parent()?;
    for oid in walk.take(LANDED_SCAN) {
        let oid = oid?;
        let commit = repo.find_commit(oid)?;
        let Some((story, _)) = commit.message().ok().and_then(landed_of) else { continue };
        if let Some(s) = stories.iter().find(|s| s.id.as_str() == story)
            && !found.iter().any(|(id, _)| *id == s.id.as_str())
        {
            found.push((s.id.as_str(), oid));
        }
        if found.len() == stories.len() {
            break;
        }
    }
    Ok(found)
}

/// The committer of landed commits, at the story's own time: every node
/// that builds a story on the same commit makes the same commit id, which
/// is what lets a batch be tested on top of another node's.
fn signature(story: &git2::Commit<'_>) -> Result<git2::Signature<'static>, git2::Error> {
    git2::Signature::new("huskies", "huskies@localhost", &story.committer().when())
}

/// The story's author: that of its newest commit not made by huskies.
fn author_of<'r>(repo: &'r Repository, tip: &git2::Commit<'r>, base: Oid) -> Option<git2::Signature<'static>> {
    let mut walk = repo.revwalk().ok()?;
    walk.push(tip.id()).ok()?;
    walk.hide(base).ok()?;
    walk.filter_map(Result::ok)
        .filter_map(|oid| repo.find_commit(oid).ok())
        .find(|c| c.author().name().ok() != Some("huskies"))
        .map(|c| c.author().to_owned())
}

fn message(s: &LandStory, body: &str) -> String {
    format!(
        "{title} ({id})\n\n{body}{trailer} {id} {token}\n",
        title = s.title,
        id = s.id,
        trailer = LANDED_TRAILER,
        token = s.token.0
    )
}

/// Conflicting paths of a merged index.
fn conflicts(index: &git2::Index) -> Result<Vec<String>, git2::Error> {
    let mut files = Vec::new();
    for c in index.conflicts()? {
        let c = c?;
        let entry = c.our.or(c.their).or(c.ancestor);
        if let Some(e) = entry {
            files.push(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Puts one story on `onto`; `Err(files)` when it conflicts there.
fn apply(
    repo: &Repository,
    method: MergeMethod,
    onto: Oid,
    story: &git2::Commit<'_>,
    s: &LandStory,
) -> Result<Result<Oid, Vec<String>>, GitError> {
    let onto_commit = repo.find_commit(onto)?;
    let sig = signature(story)?;
    let author = author_of(repo, story, onto).unwrap_or_else(|| sig.clone());
    match method {
        MergeMethod::Squash | MergeMethod::Merge => {
            let mut index = repo.merge_commits(&onto_commit, story, None)?;
            if index.has_conflicts() {
                return Ok(Err(conflicts(&index)?));
            }
            let tree = repo.find_tree(index.write_tree_to(repo)?)?;
            let from = git::branch_name(s.id.as_str());
            let oid = if method == MergeMethod::Squash {
                let msg = message(s, &format!("Squashed from {from} by huskies.\n\n"));
                repo.commit(None, &author, &sig, &msg, &tree, &[&onto_commit])?
            } else {
                let msg = message(s, &format!("Merge {from} by huskies.\n\n"));
                repo.commit(None, &author, &sig, &msg, &tree, &[&onto_commit, story])?
            };
            Ok(Ok(oid))
        }
        MergeMethod::Rebase => {
            let mut walk = repo.revwalk()?;
            walk.push(story.id())?;
            walk.hide(onto)?;
            walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
            let mut cur = onto_commit;
            for oid in walk {
                let c = repo.find_commit(oid?)?;
                // Seals (empty commits of huskies) and merges carry nothing
                // a replay needs.
                if c.parent_count() != 1 || c.parent(0).is_ok_and(|p| p.tree_id() == c.tree_id()) {
                    continue;
                }
                let mut index = repo.cherrypick_commit(&c, &cur, 0, None)?;
                if index.has_conflicts() {
                    return Ok(Err(conflicts(&index)?));
                }
                let tree = repo.find_tree(index.write_tree_to(repo)?)?;
                let msg = c.message().unwrap_or("").trim_end().to_owned() + "\n";
                let oid = repo.commit(None, &c.author(), &sig, &msg, &tree, &[&cur])?;
                cur = repo.find_commit(oid)?;
            }
            // The trailer goes on an empty commit of its own, so that every
            // landed story is found by one line whatever its commits said.
            let msg = message(s, &format!("Rebased from {} by huskies.\n\n", git::branch_name(s.id.as_str())));
            let tree = cur.tree()?;
            let oid = repo.commit(None, &author, &sig, &msg, &tree, &[&cur])?;
            Ok(Ok(oid))
        }
    }
}

enum GateVerdict {
    Passed,
    Failed { gate: String, tail: String },
    Cancelled,
}

/// Checks `tip` out in this node's scratch worktree and runs the gates
/// there, in order, up to the first that fails.
fn run_gates(
    repo: &Repository,
    job: &LandJob<'_>,
    base: Oid,
    tip: Oid,
    stories: &[LandStory],
) -> Result<GateVerdict, GitError> {
    if job.merge.gates.is_empty() {
        return Ok(GateVerdict::Passed);
    }
    let dir = scratch_worktree(repo, job, tip)?;
    if let Some(parent) = job.log.parent() {
        std::fs::create_dir_all(parent).map_err(|source| GitError::Io {
            what: "making",
            path: parent.into(),
            source,
        })?;
    }
    let ids: Vec<&str> = stories.iter().map(|s| s.id.as_str()).collect();
    for gate in &job.merge.gates {
        let log = std::fs::File::create(&job.log).map_err(|source| GitError::Io {
            what: "creating",
            path: job.log.clone(),
            source,
        })?;
        let err = log.try_clone().map_err(|source| GitError::Io { what: "opening", path: job.log.clone(), source })?;
        let mut cmd = std::process::Command::new("sh");
        for var in crate::runner::SECRET_VARS.iter().chain(&crate::gitauth::SECRET_VARS) {
            cmd.env_remove(var);
        }
        use std::os::unix::process::CommandExt;
        let child = cmd
            .arg("-c")
            .arg(gate)
            .current_dir(&dir)
            .env("HUSKIES_LAND_BASE", base.to_string())
            .env("HUSKIES_LAND_TIP", tip.to_string())
            .env("HUSKIES_LAND_STORIES", ids.join(" "))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn();
        let passed = match child {
            Ok(child) => wait_gate(child, Duration::from_millis(job.merge.gate_timeout_ms), job.cancel),
            Err(e) => Err(format!("cannot start sh: {e}")),
        };
        if job.cancel.load(Ordering::Relaxed) {
            return Ok(GateVerdict::Cancelled);
        }
        if let Err(why) = passed {
            let tail = log_tail(&job.log, GATE_TAIL);
            return Ok(GateVerdict::Failed { gate: gate.clone(), tail: format!("{why}\n{tail}") });
        }
    }
    Ok(GateVerdict::Passed)
}

/// Waits for a gate; kills its process group past the timeout or when the
/// landing is called off.
fn wait_gate(mut child: std::process::Child, timeout: Duration, cancel: &AtomicBool) -> Result<(), String> {
    #[allow(clippy::disallowed_methods)] // a gate's timeout is wall time
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if started.elapsed() >= timeout || cancel.load(Ordering::Relaxed) => {
                // SAFETY: kill(2) on the process group the gate leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("timed out after {} ms", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
}

fn log_tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(max as u64)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// This node's scratch worktree (`.huskies/land/<node>`), checked out
/// at `tip`, detached. Build products the gates leave (ignored files)
/// stay between landings, so incremental builds stay incremental.
fn scratch_worktree(repo: &Repository, job: &LandJob<'_>, tip: Oid) -> Result<PathBuf, GitError> {
    let name = format!("huskies-land-{}", job.node);
    let path = job.project_root.join(".huskies").join("land").join(job.node);
    {
        let _turn = git::WORKTREES.lock().unwrap_or_else(|p| p.into_inner());
        if repo.find_worktree(&name).is_err() || !path.join(".git").exists() {
            if let Ok(wt) = repo.find_worktree(&name) {
                let mut opts = git2::WorktreePruneOptions::new();
                opts.valid(true).working_tree(true);
                wt.prune(Some(&mut opts))?;
            }
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(|source| GitError::Io {
                    what: "removing",
                    path: path.clone(),
                    source,
                })?;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| GitError::Io {
                    what: "making",
                    path: parent.into(),
                    source,
                })?;
            }
            let branch = repo.branch(&name, &repo.find_commit(tip)?, true)?;
            let reference = branch.into_reference();
            let mut opts = git2::WorktreeAddOptions::new();
            opts.reference(Some(&reference));
            repo.worktree(&name, &path, Some(&opts))?;
        }
    }
    let wt = Repository::open(&path)?;
    wt.set_head_detached(tip)?;
    let mut co = git2::build::CheckoutBuilder::new();
    co.force().remove_untracked(true);
    wt.checkout_head(Some(&mut co))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{Claim, prepare_worktree, push};

    /// A repo with one commit, a bare remote, and a clone wired to it.
    fn fixture(dir: &Path) -> PathBuf {
        let seed = dir.join("seed");
        let repo = Repository::init(&seed).unwrap();
        std::fs::write(seed.join("x.txt"), "one\ntwo\nthree\n").unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("x.txt")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
        let remote = dir.join("remote.git");
        git2::build::RepoBuilder::new().bare(true).clone(seed.to_str().unwrap(), &remote).unwrap();
        let work = dir.join("work");
        Repository::clone(remote.to_str().unwrap(), &work).unwrap();
        work
    }

    /// A story whose run wrote `files` and pushed under `token`.
    fn story(work: &Path, id: &str, files: &[(&str, &str)], token: u64) -> LandStory {
        let creds = GitCredentials::default();
        let (wt, base, _) = prepare_worktree(work, id, &creds, None).unwrap();
        let repo = Repository::open(&wt).unwrap();
        let mut idx = repo.index().unwrap();
        for (f, text) in files {
            std::fs::write(wt.join(f), text).unwrap();
            idx.add_path(Path::new(f)).unwrap();
        }
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("agent", "agent@example.com").unwrap();
        let parent = repo.find_commit(base).unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, &format!("work on {id}"), &tree, &[&parent]).unwrap();
        push(work, id, Claim { stage: "merge", token, node: "n1" }, &creds).unwrap();
        LandStory { id: StoryId::new(id).unwrap(), token: Token(token), title: format!("story {id}") }
    }

    static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

    fn job<'a>(work: &'a Path, merge: &'a MergeConfig, creds: &'a GitCredentials) -> LandJob<'a> {
        let log = work.join(".huskies/logs/land.log");
        LandJob { project_root: work, node: "n1", merge, creds, log, cancel: &NOT_CANCELLED, built: &|_| {} }
    }

    fn main_tip(dir: &Path) -> Oid {
        Repository::open_bare(dir.join("remote.git")).unwrap().refname_to_id("refs/heads/master").unwrap()
    }

    fn file_on_main(dir: &Path, path: &str) -> Option<String> {
        let repo = Repository::open_bare(dir.join("remote.git")).unwrap();
        let tree = repo.find_commit(main_tip(dir)).unwrap().tree().unwrap();
        let entry = tree.get_path(Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).unwrap();
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }

    fn landed(report: &LandReport) -> Vec<&str> {
        match &report.result {
            LandResult::Landed { commits } => commits.iter().map(|(s, _)| s.as_str()).collect(),
            other => panic!("not landed: {other:?} ({report:?})"),
        }
    }

    /// Two stories land in one squash commit each, gated; a story that
    /// edits what landed meanwhile is sent back with the file; landing a
    /// story again finds it and moves nothing; a gate failure and a newer
    /// claim at the remote move nothing either.
    #[test]
    fn lands_sends_back_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let work = fixture(dir.path());
        let creds = GitCredentials::default();
        let merge = MergeConfig { gates: vec!["test ! -e bad".into()], ..MergeConfig::default() };
        let before = main_tip(dir.path());
        let a = story(&work, "a", &[("x.txt", "one\nTWO by a\nthree\n")], 3);
        let b = story(&work, "b", &[("y.txt", "b\n")], 3);
        let c = story(&work, "c", &[("x.txt", "one\ntwo by c\nthree\n")], 3);
        let report = land(&job(&work, &merge, &creds), &[], &[a.clone(), b.clone()]);
        assert_eq!(landed(&report), vec!["a", "b"]);
        assert_eq!(report.base, before.to_string());
        let tip = main_tip(dir.path());
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        let top = remote.find_commit(tip).unwrap();
        assert_eq!(landed_of(top.message().unwrap()), Some(("b", 3)));
        assert_eq!(top.parent(0).unwrap().parent_id(0).unwrap(), before, "one commit per story on the old tip");
        assert_eq!(file_on_main(dir.path(), "x.txt").as_deref(), Some("one\nTWO by a\nthree\n"));
        assert_eq!(top.parent(0).unwrap().author().name().ok(), Some("agent"), "the story's author is kept");

        let report = land(&job(&work, &merge, &creds), &[], std::slice::from_ref(&c));
        assert_eq!(report.conflicts.len(), 1, "{report:?}");
        assert!(report.conflicts[0].1.contains("x.txt") && report.conflicts[0].1.contains("merge origin/master"));
        assert_eq!(main_tip(dir.path()), tip);

        let again = land(&job(&work, &merge, &creds), &[], std::slice::from_ref(&a));
        assert_eq!(landed(&again), vec!["a"]);
        assert_eq!(main_tip(dir.path()), tip, "landed once");

        let d = story(&work, "d", &[("bad", "x\n")], 4);
        let report = land(&job(&work, &merge, &creds), &[], std::slice::from_ref(&d));
        assert!(matches!(&report.result, LandResult::GateFailed { gate, .. } if gate == "test ! -e bad"), "{report:?}");
        assert_eq!(main_tip(dir.path()), tip);

        let e = story(&work, "e", &[("e.txt", "e\n")], 9);
        let stale = LandStory { token: Token(5), ..e };
        let report = land(&job(&work, &merge, &creds), &[], &[stale]);
        assert_eq!(report.fenced, vec![(StoryId::new("e").unwrap(), Token(9))]);
        assert_eq!(main_tip(dir.path()), tip);
    }

    /// A story that conflicts only with one ahead in its batch waits; the
    /// default branch moving while the gates run makes the landing build
    /// and test again on the new tip.
    #[test]
    fn defers_batch_conflicts_and_rebuilds_on_a_moved_tip() {
        let dir = tempfile::tempdir().unwrap();
        let work = fixture(dir.path());
        let creds = GitCredentials::default();
        let p = story(&work, "p", &[("z.txt", "p\n")], 2);
        let q = story(&work, "q", &[("z.txt", "q\n")], 2);
        let merge = MergeConfig::default();
        let report = land(&job(&work, &merge, &creds), &[], &[p, q]);
        assert_eq!(landed(&report), vec!["p"]);
        assert_eq!(report.deferred, vec![StoryId::new("q").unwrap()]);

        // The gate lands someone else's commit first, once.
        let other = dir.path().join("other");
        let o = Repository::clone(dir.path().join("remote.git").to_str().unwrap(), &other).unwrap();
        std::fs::write(other.join("o.txt"), "o\n").unwrap();
        let mut idx = o.index().unwrap();
        idx.add_path(Path::new("o.txt")).unwrap();
        let tree = o.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("o", "o@example.com").unwrap();
        let parent = o.head().unwrap().peel_to_commit().unwrap();
        o.commit(Some("HEAD"), &sig, &sig, "meanwhile", &tree, &[&parent]).unwrap();
        let marker = dir.path().join("pushed-once");
        let gate = format!(
            "test -e {m} || (git -C {o} push -q origin HEAD:master && touch {m})",
            m = marker.display(),
            o = other.display()
        );
        let r = story(&work, "r", &[("r.txt", "r\n")], 2);
        let merge = MergeConfig { gates: vec![gate], ..MergeConfig::default() };
        let report = land(&job(&work, &merge, &creds), &[], &[r]);
        assert_eq!(landed(&report), vec!["r"]);
        let tip = main_tip(dir.path());
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        let meanwhile = o.head().unwrap().target().unwrap();
        assert_eq!(remote.find_commit(tip).unwrap().parent_id(0).unwrap(), meanwhile, "built again on the new tip");
        assert_eq!(report.base, meanwhile.to_string());
    }

    #[test]
    fn trailer_parses() {
        assert_eq!(landed_of("t (s1)\n\nbody\n\nHuskies-Landed: s1 7\n"), Some(("s1", 7)));
        assert_eq!(landed_of("Huskies-Landed: s1 x\n"), None);
        assert_eq!(landed_of("no trailer"), None);
    }

    /// A batch tested on top of another node's batch lands on the very
    /// commit that batch lands as (equal commit ids), after it; called off
    /// while it waits, it pushes nothing.
    #[test]
    fn speculative_batch_lands_behind_the_batch_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let work_a = fixture(dir.path());
        let work_b = dir.path().join("b");
        Repository::clone(dir.path().join("remote.git").to_str().unwrap(), &work_b).unwrap();
        let creds = GitCredentials::default();
        let a1 = story(&work_a, "a1", &[("a.txt", "a\n")], 2);
        let b1 = story(&work_b, "b1", &[("b.txt", "b\n")], 2);
        let before = main_tip(dir.path());
        let merge = MergeConfig { gates: vec!["test -e a.txt && test -e b.txt".into()], ..MergeConfig::default() };
        let (wb, m, a) = (work_b.clone(), merge.clone(), a1.clone());
        let behind = std::thread::spawn(move || {
            let creds = GitCredentials::default();
            land(&job(&wb, &m, &creds), std::slice::from_ref(&a), std::slice::from_ref(&b1))
        });
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(main_tip(dir.path()), before, "the batch behind waits for the one ahead");
        let merge_a = MergeConfig::default();
        let ahead = land(&job(&work_a, &merge_a, &creds), &[], std::slice::from_ref(&a1));
        assert_eq!(landed(&ahead), vec!["a1"]);
        let behind = behind.join().unwrap();
        assert!(behind.speculative, "{behind:?}");
        assert_eq!(landed(&behind), vec!["b1"]);
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        let top = remote.find_commit(main_tip(dir.path())).unwrap();
        let LandResult::Landed { commits } = &ahead.result else { unreachable!() };
        assert_eq!(top.parent_id(0).unwrap().to_string(), commits[0].1, "stacked on the commit a1 landed as");

        // Called off while waiting for a batch ahead that never lands.
        let c1 = story(&work_b, "c1", &[("c.txt", "c\n")], 2);
        let d1 = story(&work_a, "d1", &[("d.txt", "d\n")], 2);
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let (wb, flag) = (work_b.clone(), cancel.clone());
        let waiting = std::thread::spawn(move || {
            let creds = GitCredentials::default();
            let merge = MergeConfig::default();
            let log = wb.join(".huskies/logs/land.log");
            let job = LandJob {
                project_root: &wb,
                node: "n2",
                merge: &merge,
                creds: &creds,
                log,
                cancel: &flag,
                built: &|_| {},
            };
            land(&job, std::slice::from_ref(&d1), std::slice::from_ref(&c1))
        });
        std::thread::sleep(Duration::from_millis(1_500));
        let tip = main_tip(dir.path());
        cancel.store(true, Ordering::Relaxed);
        let report = waiting.join().unwrap();
        assert!(matches!(report.result, LandResult::Retry { .. }), "{report:?}");
        assert_eq!(main_tip(dir.path()), tip, "nothing pushed");
    }
}
