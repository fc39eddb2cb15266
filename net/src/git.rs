//! git2 operations, all blocking (run them on a blocking thread): worktree
//! per story on branch `huskies/<story>`, push to `origin`, inspect, prune.

use std::path::{Path, PathBuf};

use git2::{BranchType, FetchOptions, Oid, PushOptions, Repository, WorktreeAddOptions};

use crate::gitauth::{GitCredentials, Tried, callbacks, redact};

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{}", .0.message())]
    Git(#[from] git2::Error),
    /// A file operation on the worktree failed.
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// A fetch or push failed at the remote: where (without secrets), why,
    /// and which credential sources were tried.
    #[error("{what} {url} failed: {why}{hint} (credentials tried: {tried})")]
    Remote { what: &'static str, url: String, why: String, hint: &'static str, tried: String },
    #[error("no commit to start from: the repository is empty")]
    EmptyRepository,
    #[error("push of {branch}: the remote kept moving; gave up after {tries} tries")]
    Contended { branch: String, tries: u32 },
}

impl GitError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GitError + 'a {
        move |source| GitError::Io { what, path: path.to_owned(), source }
    }
}

pub fn branch_name(story: &str) -> String {
    format!("huskies/{story}")
}

pub fn worktree_path(project_root: &Path, story: &str) -> PathBuf {
    project_root.join(".huskies").join("worktrees").join(story)
}

/// A remote operation failed: says where (without secrets), why, and which
/// credential sources were tried.
fn remote_error(what: &'static str, remote: &git2::Remote<'_>, why: &str, tried: &Tried) -> GitError {
    let url = remote.url().map_or_else(|_| "?".to_owned(), redact);
    let hint = if why.contains("hostkey") {
        "; add the host to ~/.ssh/known_hosts (ssh-keyscan) or point HUSKIES_GIT_KNOWN_HOSTS at a file that lists it"
    } else {
        ""
    };
    GitError::Remote { what, url, why: why.to_owned(), hint, tried: tried.describe() }
}

/// Held while a fetch or a push writes remote-tracking refs.
///
/// Every fetch rewrites `refs/remotes/origin/*`, and a push updates the
/// tracking ref of what it pushed. libgit2 locks each ref file it writes
/// and fails (rather than waits) when another writer holds the lock, so
/// two runs of one node fetching at once failed on
/// `refs/remotes/origin/huskies/<id>.lock` (seen in CI: a failed attempt,
/// then a retry). Runs of one node take turns at the remote instead.
static REMOTE_REFS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn fetch(repo: &Repository, creds: &GitCredentials) -> Result<(), GitError> {
    let mut remote = repo.find_remote("origin")?;
    let mut opts = FetchOptions::new();
    let tried = Tried::default();
    opts.remote_callbacks(callbacks(creds, repo.config().ok(), tried.clone()));
    let _turn = REMOTE_REFS.lock().unwrap_or_else(|p| p.into_inner());
    remote
        .fetch(&["+refs/heads/*:refs/remotes/origin/*"], Some(&mut opts), None)
        .map_err(|e| remote_error("fetch from", &remote, e.message(), &tried))
}

/// Where a run of `story` under claim `token` pushes its work in progress.
pub fn wip_ref(story: &str, token: u64) -> String {
    format!("refs/heads/huskies-wip/{story}/{token}")
}

/// The work in progress a dead holder pushed under `token`, if it builds on
/// the story's branch (or there is none yet): a reclaim resumes from it.
fn resume_point(repo: &Repository, story: &str, token: u64) -> Option<Oid> {
    let wip = repo.refname_to_id(&format!("refs/remotes/origin/huskies-wip/{story}/{token}")).ok()?;
    match repo.refname_to_id(&format!("refs/remotes/origin/{}", branch_name(story))) {
        Ok(tip) if tip != wip && !repo.graph_descendant_of(wip, tip).unwrap_or(false) => None,
        _ => Some(wip),
    }
}

/// The commit a story's work starts from: its branch on the remote if an
/// earlier stage pushed one, else the remote's default branch, else HEAD.
fn base_commit(repo: &Repository, story: &str) -> Result<Oid, GitError> {
    let candidates = [
        format!("refs/remotes/origin/{}", branch_name(story)),
        "refs/remotes/origin/HEAD".to_owned(),
        "refs/remotes/origin/main".to_owned(),
        "refs/remotes/origin/master".to_owned(),
        "HEAD".to_owned(),
    ];
    for name in candidates {
        if let Ok(r) = repo.revparse_single(&name) {
            return Ok(r.peel_to_commit()?.id());
        }
    }
    Err(GitError::EmptyRepository)
}

fn remove_worktree(repo: &Repository, project_root: &Path, story: &str) -> Result<(), GitError> {
    let path = worktree_path(project_root, story);
    if path.exists() {
        std::fs::remove_dir_all(&path).map_err(GitError::io("removing the worktree", &path))?;
    }
    if let Ok(wt) = repo.find_worktree(story) {
        let mut opts = git2::WorktreePruneOptions::new();
        opts.valid(true).working_tree(true);
        wt.prune(Some(&mut opts))?;
    }
    Ok(())
}

/// Held while worktrees are made or removed (see [`prepare_worktree`]).
pub(crate) static WORKTREES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A fresh worktree for a run; returns its path, its base commit, and
/// whether that base is the pushed progress of `resume_token`'s claim.
pub fn prepare_worktree(
    project_root: &Path,
    story: &str,
    creds: &GitCredentials,
    resume_token: Option<u64>,
) -> Result<(PathBuf, Oid, bool), GitError> {
    let repo = Repository::open(project_root)?;
    if let Err(e) = fetch(&repo, creds) {
        tracing::warn!(%story, error = %e, "fetch failed; starting from what we have");
    }
    let resumed = resume_token.and_then(|t| resume_point(&repo, story, t));
    let base = match resumed {
        Some(wip) => wip,
        None => base_commit(&repo, story)?,
    };
    // libgit2's worktree calls are not safe to run at once on one
    // repository: a worktree being made reads as "already checked out" to
    // the other, and `.git/worktrees` itself was raced for. Runs of one
    // node start at once (capacity > 1), so they take turns here.
    let _turn = WORKTREES.lock().unwrap_or_else(|p| p.into_inner());
    remove_worktree(&repo, project_root, story)?;
    let commit = repo.find_commit(base)?;
    let branch = repo.branch(&branch_name(story), &commit, true)?;
    let path = worktree_path(project_root, story);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(GitError::io("making the worktrees directory", parent))?;
    }
    let mut opts = WorktreeAddOptions::new();
    let reference = branch.into_reference();
    opts.reference(Some(&reference));
    repo.worktree(story, &path, Some(&opts))?;
    Ok((path, base, resumed.is_some()))
}

/// Pushes the story's branch, as it is now, to this claim's
/// work-in-progress ref (a namespace of its own: no other claim writes
/// there). Returns whether there was anything new to push.
pub fn push_wip(project_root: &Path, story: &str, token: u64, creds: &GitCredentials) -> Result<bool, GitError> {
    let repo = Repository::open(project_root)?;
    let Some(head) = branch_head(project_root, story) else { return Ok(false) };
    let wip = wip_ref(story, token);
    if remote_value(&repo, &wip) == Some(head) {
        return Ok(false);
    }
    let local = format!("refs/huskies/wip/{story}");
    repo.reference(&local, head, true, "huskies: work in progress")?;
    let mut remote = repo.find_remote("origin")?;
    let tried = Tried::default();
    let mut opts = PushOptions::new();
    opts.remote_callbacks(callbacks(creds, repo.config().ok(), tried.clone()));
    let _turn = REMOTE_REFS.lock().unwrap_or_else(|p| p.into_inner());
    remote
        .push(&[format!("+{local}:{wip}").as_str()], Some(&mut opts))
        .map_err(|e| remote_error("push to", &remote, e.message(), &tried))?;
    // Remember what the remote has, so an unchanged branch is not pushed again.
    repo.reference(&format!("refs/remotes/origin/{}", &wip["refs/heads/".len()..]), head, true, "huskies: wip pushed")?;
    Ok(true)
}

/// The claim a push is made under: it goes into the trailer of the seal
/// commit, and decides against the remote's tip.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub stage: &'a str,
    pub token: u64,
    pub node: &'a str,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The story's branch now ends in our seal commit. `replaced` names the
    /// side ref that keeps a tip of an older claim we displaced.
    Landed { tip: Oid, replaced: Option<String> },
    /// A newer claim (or commits huskies did not push) holds the branch:
    /// ours went to `kept` instead.
    Fenced { by_token: Option<u64>, kept: String },
}

/// The trailer every seal commit carries.
const TRAILER: &str = "Huskies-Claim:";

/// Where a superseded tip of `story`'s branch, pushed under `token` by
/// `node`, is kept (token and node together: claims made on both sides of
/// a partition can share a token).
pub fn fenced_ref(story: &str, token: u64, node: &str) -> String {
    format!("refs/heads/huskies-fenced/{story}/{token}-{node}")
}

/// The claim (token, node) in `commit`'s `Huskies-Claim` trailer for `story`.
pub(crate) fn claim_of(commit: &git2::Commit<'_>, story: &str) -> Option<(u64, String)> {
    let msg = commit.message().ok()?;
    msg.lines().rev().find_map(|l| {
        let mut w = l.strip_prefix(TRAILER)?.split_whitespace();
        (w.next()? == story).then_some(())?;
        let _stage = w.next()?;
        let token = w.next()?.parse().ok()?;
        Some((token, w.next()?.to_owned()))
    })
}

fn claim_token(commit: &git2::Commit<'_>, story: &str) -> Option<u64> {
    claim_of(commit, story).map(|(t, _)| t)
}

/// Seals the local branch: an empty commit on top whose trailer names the
/// claim (once per claim: a retried push reuses it).
fn seal(repo: &Repository, story: &str, claim: Claim<'_>) -> Result<Oid, git2::Error> {
    let mut branch = repo.find_branch(&branch_name(story), BranchType::Local)?;
    let head = branch.get().peel_to_commit()?;
    if claim_token(&head, story) == Some(claim.token) {
        return Ok(head.id());
    }
    let sig = git2::Signature::now("huskies", "huskies@localhost")?;
    let msg = format!(
        "huskies: {stage} of {story} by {node} (token {token})\n\n{TRAILER} {story} {stage} {token} {node}\n",
        stage = claim.stage,
        node = claim.node,
        token = claim.token
    );
    let oid = repo.commit(None, &sig, &sig, &msg, &head.tree()?, &[&head])?;
    branch.get_mut().set_target(oid, "huskies: seal")?;
    Ok(oid)
}

/// What the last fetch saw of the remote's `refs/heads/...` ref.
pub(crate) fn remote_value(repo: &Repository, remote_ref: &str) -> Option<Oid> {
    let name = remote_ref.strip_prefix("refs/heads/")?;
    repo.refname_to_id(&format!("refs/remotes/origin/{name}")).ok()
}

/// libgit2 pushes to a remote on a local path (a bare repository on a
/// shared disk, as the demo's) by writing the remote's refs outright,
/// never checking their old values (`transports/local.c`): two processes
/// landing on the same base at once both "won", and one story reported
/// landed was lost from the default branch. Every huskies process pushing
/// there holds an exclusive lock on a file in that repository across the
/// lease's check (at connect, when refs are listed) and the write; the
/// lock goes with the process if it dies. Network remotes check the old
/// value in receive-pack: `None`.
fn lock_local_remote(remote: &git2::Remote<'_>) -> Result<Option<std::fs::File>, GitError> {
    let Ok(url) = remote.url() else { return Ok(None) };
    let path = match url.strip_prefix("file://") {
        Some(p) => p,
        None if !url.contains("://") && !url.contains('@') => url,
        None => return Ok(None),
    };
    let dir = std::path::Path::new(path);
    if !dir.is_dir() {
        return Ok(None);
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("huskies-push.lock"))
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|source| GitError::Io { what: "lock for a push", path: dir.join("huskies-push.lock"), source })?;
    Ok(Some(lock))
}

/// Pushes `updates` (local ref -> remote ref) with a lease on each:
/// the push goes through only if every remote ref is still at the value
/// given (zero: absent). The remote's receive-pack checks the old value
/// atomically, so two pushes racing cannot both win.
pub(crate) fn push_leased(
    repo: &Repository,
    remote: &mut git2::Remote<'_>,
    creds: &GitCredentials,
    updates: &[(String, String, Oid)],
) -> Result<Result<(), String>, GitError> {
    let tried = Tried::default();
    let mut cb = callbacks(creds, repo.config().ok(), tried.clone());
    let expected: Vec<(String, Oid)> = updates.iter().map(|(_, dst, old)| (dst.clone(), *old)).collect();
    cb.push_negotiation(move |proposed| {
        for u in proposed {
            let dst = u.dst_refname().unwrap_or_default();
            if let Some((_, old)) = expected.iter().find(|(d, _)| d == dst)
                && u.src() != *old
            {
                return Err(git2::Error::from_str(&format!("lease broken: {dst} moved to {}", u.src())));
            }
        }
        Ok(())
    });
    let refused = std::rc::Rc::new(std::cell::RefCell::new(None));
    let refused_cb = refused.clone();
    cb.push_update_reference(move |name, status| {
        if let Some(why) = status {
            *refused_cb.borrow_mut() = Some(format!("{name}: {why}"));
        }
        Ok(())
    });
    let mut opts = PushOptions::new();
    opts.remote_callbacks(cb);
    let specs: Vec<String> = updates.iter().map(|(src, dst, _)| format!("+{src}:{dst}")).collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let pushed = {
        let _turn = REMOTE_REFS.lock().unwrap_or_else(|p| p.into_inner());
        let _local = lock_local_remote(remote)?;
        remote.push(&specs, Some(&mut opts))
    };
    match pushed {
        Err(e) if e.message().contains("lease broken") => return Ok(Err(e.message().to_owned())),
        Err(e) => return Err(remote_error("push to", remote, e.message(), &tried)),
        Ok(()) => {}
    }
    let why = refused.borrow_mut().take();
    match why {
        None => Ok(Ok(())),
        // The ref moved under us: a race to retry, not a refusal.
        Some(why)
            if ["stale", "expected", "lock", "fetch first", "non-fast-forward"].iter().any(|m| why.contains(m)) =>
        {
            Ok(Err(why))
        }
        Some(why) => Err(remote_error("push to", remote, &format!("refused {why}"), &tried)),
    }
}

/// Pushes the story's branch under `claim`, never blindly: the remote's
/// tip decides.
///
/// - It carries a newer claim: our tip goes to [`fenced_ref`] and the
///   branch is left alone (`Fenced`), even if ours builds on it: a
///   superseded claim never lands.
/// - Our tip contains it: a compare-and-swap fast-forward.
/// - It carries an older (or our) claim: it is kept on [`fenced_ref`] and
///   replaced by ours, by compare-and-swap.
/// - It is commits huskies did not push, and ours does not contain them:
///   `Fenced` as well; nothing of a person's is overwritten.
///
/// A lost race (the remote moved between fetch and push) starts over.
/// Fetch-and-push rounds before a push that keeps losing races gives up.
const PUSH_TRIES: u32 = 4;

pub fn push(project_root: &Path, story: &str, claim: Claim<'_>, creds: &GitCredentials) -> Result<Pushed, GitError> {
    let repo = Repository::open(project_root)?;
    let ours = seal(&repo, story, claim)?;
    let branch_ref = format!("refs/heads/{}", branch_name(story));
    let tracking = format!("refs/remotes/origin/{}", branch_name(story));
    for _ in 0..PUSH_TRIES {
        fetch(&repo, creds)?;
        let mut remote = repo.find_remote("origin")?;
        let theirs = repo.refname_to_id(&tracking).ok();
        let their_claim = theirs.and_then(|t| repo.find_commit(t).ok()).and_then(|c| claim_of(&c, story));
        let their_token = their_claim.as_ref().map(|(t, _)| *t);
        let contains = |t: Oid| t == ours || repo.graph_descendant_of(ours, t).unwrap_or(false);
        let zero = Oid::ZERO_SHA1;
        let newer_holds = their_token.is_some_and(|tok| tok > claim.token);
        let outcome = match theirs {
            None => push_leased(&repo, &mut remote, creds, &[(branch_ref.clone(), branch_ref.clone(), zero)])?
                .map(|()| None),
            Some(t) if !newer_holds && contains(t) => {
                push_leased(&repo, &mut remote, creds, &[(branch_ref.clone(), branch_ref.clone(), t)])?.map(|()| None)
            }
            Some(t) if their_token.is_some() && !newer_holds => {
                // An older claim's work: keep it, then take the branch.
                let (tok, node) = their_claim.clone().unwrap_or_default();
                let keep = fenced_ref(story, tok, &node);
                let local_keep = format!("refs/huskies/keep/{story}");
                repo.reference(&local_keep, t, true, "huskies: keep a superseded tip")?;
                // The side ref may exist from an earlier try of ours.
                let kept_before = remote_value(&repo, &keep).unwrap_or(zero);
                let updates = [(local_keep, keep.clone(), kept_before), (branch_ref.clone(), branch_ref.clone(), t)];
                push_leased(&repo, &mut remote, creds, &updates)?.map(|()| Some(keep))
            }
            Some(_) => {
                // A newer claim holds the branch (or a person pushed to it):
                // our work is kept beside it, never over it.
                let kept = fenced_ref(story, claim.token, claim.node);
                let local = format!("refs/huskies/keep/{story}");
                repo.reference(&local, ours, true, "huskies: keep fenced work")?;
                let before = remote_value(&repo, &kept).unwrap_or(zero);
                match push_leased(&repo, &mut remote, creds, &[(local, kept.clone(), before)])? {
                    Ok(()) => return Ok(Pushed::Fenced { by_token: their_token, kept }),
                    Err(why) => {
                        tracing::debug!(%story, %why, "keeping fenced work raced; trying again");
                        continue;
                    }
                }
            }
        };
        match outcome {
            Ok(replaced) => return Ok(Pushed::Landed { tip: ours, replaced }),
            Err(why) => tracing::debug!(%story, %why, "the remote moved during the push; trying again"),
        }
    }
    Err(GitError::Contended { branch: branch_ref, tries: PUSH_TRIES })
}

/// The tip of the story's local branch.
pub fn branch_head(project_root: &Path, story: &str) -> Option<Oid> {
    let repo = Repository::open(project_root).ok()?;
    let branch = repo.find_branch(&branch_name(story), BranchType::Local).ok()?;
    branch.get().target()
}

/// Does the story's worktree hold commits the remote does not have?
pub fn has_unpushed_work(project_root: &Path, story: &str, creds: &GitCredentials) -> bool {
    let Ok(repo) = Repository::open(project_root) else { return false };
    let Ok(local) = repo.find_branch(&branch_name(story), BranchType::Local) else { return false };
    let Some(head) = local.get().target() else { return false };
    let _ = fetch(&repo, creds);
    match base_commit(&repo, story) {
        Ok(remote) => head != remote && !repo.graph_descendant_of(remote, head).unwrap_or(false),
        Err(_) => false,
    }
}

pub fn prune(project_root: &Path, story: &str) -> Result<(), GitError> {
    let repo = Repository::open(project_root)?;
    let _turn = WORKTREES.lock().unwrap_or_else(|p| p.into_inner());
    remove_worktree(&repo, project_root, story)?;
    if let Ok(mut b) = repo.find_branch(&branch_name(story), BranchType::Local) {
        b.delete()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repo with one commit, a bare remote, and a clone wired to it.
    pub fn fixture(dir: &Path) -> PathBuf {
        let seed = dir.join("seed");
        let repo = Repository::init(&seed).unwrap();
        std::fs::write(seed.join("README.md"), "hello\n").unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("README.md")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
        let remote = dir.join("remote.git");
        git2::build::RepoBuilder::new().bare(true).clone(seed.to_str().unwrap(), &remote).unwrap();
        let work = dir.join("work");
        Repository::clone(remote.to_str().unwrap(), &work).unwrap();
        work
    }

    #[test]
    fn worktree_commit_push_inspect_prune() {
        let dir = tempfile::tempdir().unwrap();
        let work = fixture(dir.path());
        let creds = GitCredentials::default();
        let (wt, base, _) = prepare_worktree(&work, "s1", &creds, None).unwrap();
        assert!(!has_unpushed_work(&work, "s1", &creds));
        let repo = Repository::open(&wt).unwrap();
        std::fs::write(wt.join("s1.txt"), "done\n").unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("s1.txt")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parent = repo.find_commit(base).unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "work", &tree, &[&parent]).unwrap();
        assert!(has_unpushed_work(&work, "s1", &creds));
        let claim = Claim { stage: "current", token: 1, node: "agent-1" };
        assert!(matches!(push(&work, "s1", claim, &creds).unwrap(), Pushed::Landed { replaced: None, .. }));
        assert!(!has_unpushed_work(&work, "s1", &creds));
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        assert!(remote.find_reference("refs/heads/huskies/s1").is_ok());
        // The next stage starts from the pushed branch.
        let (_, base2, _) = prepare_worktree(&work, "s1", &creds, None).unwrap();
        assert_ne!(base2, base);
        prune(&work, "s1").unwrap();
        assert!(!worktree_path(&work, "s1").exists());
    }

    /// Runs of several stories starting at once all get their worktree
    /// (libgit2 raced for `.git/worktrees`, and saw a worktree being made
    /// as "already checked out": both seen on a demo's dashboard).
    #[test]
    fn first_worktrees_made_at_once() {
        for round in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let work = fixture(dir.path());
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let (work, barrier) = (work.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        prepare_worktree(&work, &format!("s{i}"), &GitCredentials::default(), None).map(|_| ())
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }

    /// Runs of one node finishing at once all push (every fetch rewrote
    /// the remote-tracking refs, and libgit2 failed on a ref lock the
    /// other held: seen in CI as a failed attempt and a retry).
    #[test]
    fn pushes_of_one_node_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let work = fixture(dir.path());
        let creds = GitCredentials::default();
        for round in 0..3 {
            let stories: Vec<String> = (0..8).map(|i| format!("r{round}s{i}")).collect();
            for story in &stories {
                let (wt, base, _) = prepare_worktree(&work, story, &creds, None).unwrap();
                let repo = Repository::open(&wt).unwrap();
                std::fs::write(wt.join("f.txt"), story).unwrap();
                let mut idx = repo.index().unwrap();
                idx.add_path(Path::new("f.txt")).unwrap();
                let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
                let sig = git2::Signature::now("t", "t@example.com").unwrap();
                let parent = repo.find_commit(base).unwrap();
                repo.commit(Some("HEAD"), &sig, &sig, story, &tree, &[&parent]).unwrap();
            }
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(stories.len()));
            let threads: Vec<_> = stories
                .iter()
                .map(|story| {
                    let (work, barrier, story) = (work.clone(), barrier.clone(), story.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let claim = Claim { stage: "current", token: 1, node: "agent-1" };
                        push_wip(&work, &story, 1, &GitCredentials::default())?;
                        push(&work, &story, claim, &GitCredentials::default())
                    })
                })
                .collect();
            for t in threads {
                let pushed = t.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert!(matches!(pushed, Pushed::Landed { .. }), "round {round}: {pushed:?}");
            }
        }
    }

    /// A clone of the fixture's remote at `dir/name` with one commit on
    /// story `story`'s branch, made as a run from the remote's tip would.
    fn run_commits(dir: &Path, name: &str, story: &str) -> PathBuf {
        let work = dir.join(name);
        Repository::clone(dir.join("remote.git").to_str().unwrap(), &work).unwrap();
        let creds = GitCredentials::default();
        let (wt, base, _) = prepare_worktree(&work, story, &creds, None).unwrap();
        let repo = Repository::open(&wt).unwrap();
        std::fs::write(wt.join(format!("{name}.txt")), name).unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new(&format!("{name}.txt"))).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parent = repo.find_commit(base).unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, name, &tree, &[&parent]).unwrap();
        work
    }

    fn remote_ref(dir: &Path, name: &str) -> Option<Oid> {
        Repository::open_bare(dir.join("remote.git")).unwrap().refname_to_id(name).ok()
    }

    /// The contract between the sims' git remote (`testkit::remote`) and
    /// the real push: the same runs, started and pushed in the same seeded
    /// order against both, give the same outcome of every push (landed or
    /// fenced, by which token, kept where), the same branch tip, and the
    /// same side refs. Zombies push late, claims on two sides of a
    /// partition share a token, and later stages build on earlier tips.
    #[test]
    fn the_sims_remote_model_and_the_real_push_agree() {
        use huskies_engine::testkit::remote::RemoteModel;
        use huskies_engine::{NodeId, PushError, StoryId, Token};
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let creds = GitCredentials::default();
        let bare = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        let mut pushes = 0;
        for seed in 1..=16u64 {
            let story = format!("c{seed}");
            let sid = StoryId::new(&story).unwrap();
            let mut model = RemoteModel::default();
            let mut draw = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = |n: u64| {
                draw ^= draw << 13;
                draw ^= draw >> 7;
                draw ^= draw << 17;
                draw % n
            };
            // Runs started and not yet pushed: (work dir, token, node).
            let mut started: Vec<(PathBuf, u64, String)> = Vec::new();
            let mut token = 0;
            let mut claims = std::collections::BTreeSet::new();
            for step in 0..12 {
                if started.is_empty() || next(3) > 0 {
                    // A new claim (now and then one sharing the last token,
                    // made across a partition) starts a run from the tip.
                    token += u64::from(token == 0 || next(4) > 0);
                    let mut node = format!("a{}", next(3) + 1);
                    // A node never claims one token twice: the shared
                    // token is another node's.
                    while !claims.insert((token, node.clone())) {
                        node.push('x');
                    }
                    let work = run_commits(dir.path(), &format!("{story}-{step}"), &story);
                    model.run_started(&sid, Token(token), &NodeId::new(&node).unwrap());
                    started.push((work, token, node));
                    continue;
                }
                let (work, tok, node) = started.remove(next(started.len() as u64) as usize);
                let claim = Claim { stage: "current", token: tok, node: &node };
                let real = push(&work, &story, claim, &creds).unwrap();
                let modelled = model.push(&sid, Token(tok), &NodeId::new(&node).unwrap());
                pushes += 1;
                let case = format!("seed {seed} step {step}: push of ({tok}, {node})");
                match (&real, &modelled) {
                    (Pushed::Landed { .. }, Ok(())) => {}
                    (Pushed::Fenced { by_token, kept }, Err(PushError::Fenced { by_token: by, kept: k })) => {
                        assert_eq!(*by_token, by.map(|t| t.0), "{case}: fenced by");
                        assert_eq!(kept, k, "{case}: kept at");
                    }
                    _ => panic!("{case}: real {real:?}, model {modelled:?}"),
                }
                let tip = bare.refname_to_id(&format!("refs/heads/{}", branch_name(&story))).unwrap();
                let real_tip = claim_of(&bare.find_commit(tip).unwrap(), &story);
                let model_tip = model.tip(&sid).map(|(t, n)| (t.0, n.to_string()));
                assert_eq!(real_tip, model_tip, "{case}: the branch tip");
                for t in 1..=token {
                    let side = bare.references_glob(&format!("refs/heads/huskies-fenced/{story}/{t}-*")).unwrap();
                    assert_eq!(side.count() > 0, model.is_kept(&sid, Token(t)), "{case}: side ref of token {t}");
                }
            }
        }
        assert!(pushes >= 30, "{pushes} pushes compared");
    }

    /// The zombie pushes after the newer claim: fenced, its work on the
    /// side ref. The zombie pushes first: the newer claim replaces it and
    /// keeps it on the side ref. A later stage fast-forwards.
    #[test]
    fn pushes_are_fenced_by_the_claim_token() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let creds = GitCredentials::default();
        let (zombie, winner) =
            (Claim { stage: "current", token: 1, node: "a1" }, Claim { stage: "current", token: 2, node: "a2" });

        let (a, b) = (run_commits(dir.path(), "a", "s"), run_commits(dir.path(), "b", "s"));
        let won = push(&b, "s", winner, &creds).unwrap();
        assert!(matches!(won, Pushed::Landed { replaced: None, .. }));
        let lost = push(&a, "s", zombie, &creds).unwrap();
        assert_eq!(lost, Pushed::Fenced { by_token: Some(2), kept: "refs/heads/huskies-fenced/s/1-a1".into() });
        assert_eq!(remote_ref(dir.path(), "refs/heads/huskies/s"), branch_head(&b, "s"), "the winner's tip stands");
        assert_eq!(
            remote_ref(dir.path(), "refs/heads/huskies-fenced/s/1-a1"),
            branch_head(&a, "s"),
            "the zombie's is kept"
        );

        let (a, b) = (run_commits(dir.path(), "a2", "t"), run_commits(dir.path(), "b2", "t"));
        assert!(matches!(push(&a, "t", zombie, &creds).unwrap(), Pushed::Landed { replaced: None, .. }));
        let won = push(&b, "t", winner, &creds).unwrap();
        assert!(
            matches!(won, Pushed::Landed { replaced: Some(ref r), .. } if r == "refs/heads/huskies-fenced/t/1-a1"),
            "{won:?}"
        );
        assert_eq!(remote_ref(dir.path(), "refs/heads/huskies/t"), branch_head(&b, "t"));
        assert_eq!(remote_ref(dir.path(), "refs/heads/huskies-fenced/t/1-a1"), branch_head(&a, "t"));

        // The next stage starts from the winner's tip: a fast-forward.
        let qa = run_commits(dir.path(), "qa", "t");
        let next = Claim { stage: "qa", token: 3, node: "a1" };
        assert!(matches!(push(&qa, "t", next, &creds).unwrap(), Pushed::Landed { replaced: None, .. }));
        assert_eq!(remote_ref(dir.path(), "refs/heads/huskies/t"), branch_head(&qa, "t"));
        // A push retried under the same claim seals once and changes nothing.
        let again = push(&qa, "t", next, &creds).unwrap();
        assert!(matches!(again, Pushed::Landed { replaced: None, .. }));
        assert_eq!(remote_ref(dir.path(), "refs/heads/huskies/t"), branch_head(&qa, "t"));
    }

    /// Environment of a child of `processes_racing_leased_pushes_lose_none`.
    const RACE_REMOTE: &str = "HUSKIES_PUSH_RACE_REMOTE";
    const RACE_WINS: usize = 12;

    /// Processes, not threads: within one process a mutex orders pushes,
    /// and libgit2's local transport writes a path remote's refs with no
    /// old-value check, so only a lock the processes share can make the
    /// lease a compare-and-swap. Each child lands commits on the remote's
    /// default branch by leased pushes; every push reported won must be on
    /// it.
    #[test]
    fn processes_racing_leased_pushes_lose_none() {
        const CHILDREN: usize = 3;
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let remote = dir.path().join("remote.git");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..CHILDREN)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "git::tests::leased_push_race_child",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(RACE_REMOTE, &remote)
                    .env("HUSKIES_PUSH_RACE_DIR", dir.path().join(format!("child-{i}")))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut won = 0;
        let mut lost = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "a child failed: {text}");
            let line = text.lines().find_map(|l| l.split_once("race: ").map(|(_, t)| t)).expect("a child's tally");
            let (w, l) = line.split_once(' ').unwrap();
            won += w.parse::<usize>().unwrap();
            lost += l.parse::<usize>().unwrap();
        }
        assert_eq!(won, CHILDREN * RACE_WINS);
        let bare = Repository::open_bare(&remote).unwrap();
        let mut walk = bare.revwalk().unwrap();
        walk.push_ref("refs/heads/master").unwrap();
        let on_master = walk.count() - 1;
        assert_eq!(on_master, won, "every push reported won is on master ({lost} leases lost and retried)");
    }

    /// One racer: run only by `processes_racing_leased_pushes_lose_none`.
    #[test]
    #[ignore = "a child process of processes_racing_leased_pushes_lose_none"]
    fn leased_push_race_child() {
        let (Some(remote), Some(dir)) = (std::env::var_os(RACE_REMOTE), std::env::var_os("HUSKIES_PUSH_RACE_DIR"))
        else {
            panic!("run by processes_racing_leased_pushes_lose_none only");
        };
        let dir = PathBuf::from(dir);
        let repo = Repository::clone(Path::new(&remote).to_str().unwrap(), &dir).unwrap();
        let creds = GitCredentials::default();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let (mut won, mut lost) = (0, 0);
        while won < RACE_WINS {
            assert!(lost < 1000, "leases kept breaking");
            fetch(&repo, &creds).unwrap();
            let base = repo.refname_to_id("refs/remotes/origin/master").unwrap();
            let parent = repo.find_commit(base).unwrap();
            let name = format!("{}-{won}-{lost}.txt", dir.file_name().unwrap().to_string_lossy());
            let blob = repo.blob(name.as_bytes()).unwrap();
            let mut tree = repo.treebuilder(Some(&parent.tree().unwrap())).unwrap();
            tree.insert(&name, blob, 0o100644).unwrap();
            let tree = repo.find_tree(tree.write().unwrap()).unwrap();
            let ours = repo.commit(None, &sig, &sig, &name, &tree, &[&parent]).unwrap();
            repo.reference("refs/heads/race", ours, true, "race").unwrap();
            let mut origin = repo.find_remote("origin").unwrap();
            let update = [("refs/heads/race".to_owned(), "refs/heads/master".to_owned(), base)];
            match push_leased(&repo, &mut origin, &creds, &update).unwrap() {
                Ok(()) => won += 1,
                Err(_) => lost += 1,
            }
        }
        println!("race: {won} {lost}");
    }
}
