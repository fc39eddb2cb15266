//! git2 operations, all blocking (run them on a blocking thread): worktree
//! per story on branch `huskies/<story>`, push to `origin`, inspect, prune.

use std::path::{Path, PathBuf};

use git2::{BranchType, FetchOptions, Oid, PushOptions, Repository, WorktreeAddOptions};

use crate::gitauth::{GitCredentials, Tried, callbacks, redact};

pub fn branch_name(story: &str) -> String {
    format!("huskies/{story}")
}

pub fn worktree_path(project_root: &Path, story: &str) -> PathBuf {
    project_root.join(".huskies").join("worktrees").join(story)
}

/// A remote operation failed: says where (without secrets), why, and which
/// credential sources were tried.
fn remote_error(what: &str, remote: &git2::Remote<'_>, e: &git2::Error, tried: &Tried) -> git2::Error {
    let url = remote.url().map_or_else(|_| "?".to_owned(), redact);
    let hint = if e.message().contains("hostkey") {
        "; add the host to ~/.ssh/known_hosts (ssh-keyscan) or point HUSKIES_GIT_KNOWN_HOSTS at a file that lists it"
    } else {
        ""
    };
    git2::Error::from_str(&format!(
        "{what} {url} failed: {}{hint} (credentials tried: {})",
        e.message(),
        tried.describe()
    ))
}

fn fetch(repo: &Repository, creds: &GitCredentials) -> Result<(), git2::Error> {
    let mut remote = repo.find_remote("origin")?;
    let mut opts = FetchOptions::new();
    let tried = Tried::default();
    opts.remote_callbacks(callbacks(creds, repo.config().ok(), tried.clone()));
    remote
        .fetch(&["+refs/heads/*:refs/remotes/origin/*"], Some(&mut opts), None)
        .map_err(|e| remote_error("fetch from", &remote, &e, &tried))
}

/// The commit a story's work starts from: its branch on the remote if an
/// earlier stage pushed one, else the remote's default branch, else HEAD.
fn base_commit(repo: &Repository, story: &str) -> Result<Oid, git2::Error> {
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
    Err(git2::Error::from_str("no commit to start from: the repository is empty"))
}

fn remove_worktree(repo: &Repository, project_root: &Path, story: &str) -> Result<(), git2::Error> {
    let path = worktree_path(project_root, story);
    if path.exists() {
        std::fs::remove_dir_all(&path).map_err(|e| git2::Error::from_str(&e.to_string()))?;
    }
    if let Ok(wt) = repo.find_worktree(story) {
        let mut opts = git2::WorktreePruneOptions::new();
        opts.valid(true).working_tree(true);
        wt.prune(Some(&mut opts))?;
    }
    Ok(())
}

/// A fresh worktree for a run; returns its path and base commit.
pub fn prepare_worktree(
    project_root: &Path,
    story: &str,
    creds: &GitCredentials,
) -> Result<(PathBuf, Oid), git2::Error> {
    let repo = Repository::open(project_root)?;
    if let Err(e) = fetch(&repo, creds) {
        tracing::warn!(%story, error = %e, "fetch failed; starting from what we have");
    }
    let base = base_commit(&repo, story)?;
    remove_worktree(&repo, project_root, story)?;
    let commit = repo.find_commit(base)?;
    let branch = repo.branch(&branch_name(story), &commit, true)?;
    let path = worktree_path(project_root, story);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| git2::Error::from_str(&e.to_string()))?;
    }
    let mut opts = WorktreeAddOptions::new();
    let reference = branch.into_reference();
    opts.reference(Some(&reference));
    repo.worktree(story, &path, Some(&opts))?;
    Ok((path, base))
}

/// Force-pushes the story's branch to origin (a reclaimed run replaces the
/// fenced one's push).
pub fn push(project_root: &Path, story: &str, creds: &GitCredentials) -> Result<(), git2::Error> {
    let repo = Repository::open(project_root)?;
    let mut remote = repo.find_remote("origin")?;
    let mut opts = PushOptions::new();
    let tried = Tried::default();
    let mut cb = callbacks(creds, repo.config().ok(), tried.clone());
    // libgit2 reports a ref the remote refused here, not as an error.
    let refused = std::rc::Rc::new(std::cell::RefCell::new(None));
    let refused_cb = refused.clone();
    cb.push_update_reference(move |name, status| {
        if let Some(why) = status {
            *refused_cb.borrow_mut() = Some(format!("{name}: {why}"));
        }
        Ok(())
    });
    opts.remote_callbacks(cb);
    let spec = format!("+refs/heads/{b}:refs/heads/{b}", b = branch_name(story));
    remote.push(&[spec.as_str()], Some(&mut opts)).map_err(|e| remote_error("push to", &remote, &e, &tried))?;
    match refused.borrow_mut().take() {
        Some(why) => Err(remote_error("push to", &remote, &git2::Error::from_str(&format!("refused {why}")), &tried)),
        None => Ok(()),
    }
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

pub fn prune(project_root: &Path, story: &str) -> Result<(), git2::Error> {
    let repo = Repository::open(project_root)?;
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
        let (wt, base) = prepare_worktree(&work, "s1", &creds).unwrap();
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
        push(&work, "s1", &creds).unwrap();
        assert!(!has_unpushed_work(&work, "s1", &creds));
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        assert!(remote.find_reference("refs/heads/huskies/s1").is_ok());
        // The next stage starts from the pushed branch.
        let (_, base2) = prepare_worktree(&work, "s1", &creds).unwrap();
        assert_ne!(base2, base);
        prune(&work, "s1").unwrap();
        assert!(!worktree_path(&work, "s1").exists());
    }
}
