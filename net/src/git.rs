//! git2 operations, all blocking (run them on a blocking thread): worktree
//! per story on branch `huskies/<story>`, push to `origin`, inspect, prune.

use std::path::{Path, PathBuf};

use git2::{BranchType, Cred, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository, WorktreeAddOptions};

pub fn branch_name(story: &str) -> String {
    format!("huskies/{story}")
}

pub fn worktree_path(project_root: &Path, story: &str) -> PathBuf {
    project_root.join(".huskies").join("worktrees").join(story)
}

/// Credentials come from the environment or an ssh agent, never from the
/// remote URL.
fn callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(|_url, username, allowed| {
        if allowed.is_ssh_key()
            && let Some(user) = username
        {
            return Cred::ssh_key_from_agent(user);
        }
        match (std::env::var("HUSKIES_GIT_USERNAME"), std::env::var("HUSKIES_GIT_PASSWORD")) {
            (Ok(u), Ok(p)) => Cred::userpass_plaintext(&u, &p),
            _ => Cred::default(),
        }
    });
    cb
}

fn fetch(repo: &Repository) -> Result<(), git2::Error> {
    let mut remote = repo.find_remote("origin")?;
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks());
    remote.fetch(&["+refs/heads/*:refs/remotes/origin/*"], Some(&mut opts), None)
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
pub fn prepare_worktree(project_root: &Path, story: &str) -> Result<(PathBuf, Oid), git2::Error> {
    let repo = Repository::open(project_root)?;
    if let Err(e) = fetch(&repo) {
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
pub fn push(project_root: &Path, story: &str) -> Result<(), git2::Error> {
    let repo = Repository::open(project_root)?;
    let mut remote = repo.find_remote("origin")?;
    let mut opts = PushOptions::new();
    opts.remote_callbacks(callbacks());
    let spec = format!("+refs/heads/{b}:refs/heads/{b}", b = branch_name(story));
    remote.push(&[spec.as_str()], Some(&mut opts))
}

/// Does the story's worktree hold commits the remote does not have?
pub fn has_unpushed_work(project_root: &Path, story: &str) -> bool {
    let Ok(repo) = Repository::open(project_root) else { return false };
    let Ok(local) = repo.find_branch(&branch_name(story), BranchType::Local) else { return false };
    let Some(head) = local.get().target() else { return false };
    let _ = fetch(&repo);
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
        let (wt, base) = prepare_worktree(&work, "s1").unwrap();
        assert!(!has_unpushed_work(&work, "s1"));
        let repo = Repository::open(&wt).unwrap();
        std::fs::write(wt.join("s1.txt"), "done\n").unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new("s1.txt")).unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parent = repo.find_commit(base).unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "work", &tree, &[&parent]).unwrap();
        assert!(has_unpushed_work(&work, "s1"));
        push(&work, "s1").unwrap();
        assert!(!has_unpushed_work(&work, "s1"));
        let remote = Repository::open_bare(dir.path().join("remote.git")).unwrap();
        assert!(remote.find_reference("refs/heads/huskies/s1").is_ok());
        // The next stage starts from the pushed branch.
        let (_, base2) = prepare_worktree(&work, "s1").unwrap();
        assert_ne!(base2, base);
        prune(&work, "s1").unwrap();
        assert!(!worktree_path(&work, "s1").exists());
    }
}
