//! Pushes and fetches over real network transports on loopback: `git
//! daemon --enable=receive-pack` (git://) and smart HTTP (`git
//! http-backend` behind a small server that demands a token). Checks that
//! refused pushes say which remote and which credential sources were tried,
//! and that no secret reaches an error message.

mod githttp;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git2::Repository;
use huskies_net::git;
use huskies_net::gitauth::GitCredentials;

/// A scratch dir removed on drop, kept when the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("huskies-git-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `git daemon`, its whole process group killed on drop: the `git`
/// wrapper starts the daemon as a child of its own, and killing only the
/// wrapper left one daemon running per `cargo test`.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[path = "ports.rs"]
mod ports;

fn free_port() -> u16 {
    ports::free_port_on("127.0.0.1")
}

fn wait_listening(port: u16) {
    #[allow(clippy::disallowed_methods)] // real processes, real time
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `repos/remote.git` (bare, one commit on main) and a pre-receive hook
/// that refuses `huskies/denied`, as a protected branch would.
fn remote(root: &Path) -> PathBuf {
    let seed = root.join("seed");
    let repo = Repository::init(&seed).unwrap();
    std::fs::write(seed.join("README.md"), "hello\n").unwrap();
    let mut idx = repo.index().unwrap();
    idx.add_path(Path::new("README.md")).unwrap();
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
    let repos = root.join("repos");
    let bare = repos.join("remote.git");
    git2::build::RepoBuilder::new().bare(true).clone(seed.to_str().unwrap(), &bare).unwrap();
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  [ \"$ref\" = refs/heads/huskies/denied ] && { echo 'protected branch' >&2; exit 1; }\ndone\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    repos
}

/// A clone of the remote (by path) whose `origin` is then `url`.
fn work_tree(root: &Path, name: &str, repos: &Path, url: &str) -> PathBuf {
    let work = root.join(name);
    let repo = Repository::clone(repos.join("remote.git").to_str().unwrap(), &work).unwrap();
    repo.remote_set_url("origin", url).unwrap();
    work
}

/// One run's work: a worktree from the remote, a commit, a push.
fn commit_and_push(work: &Path, story: &str, creds: &GitCredentials) -> Result<git2::Oid, git::GitError> {
    let (wt, base, _) = git::prepare_worktree(work, story, creds, None)?;
    let repo = Repository::open(&wt).unwrap();
    std::fs::write(wt.join(format!("{story}.txt")), "done\n").unwrap();
    let mut idx = repo.index().unwrap();
    idx.add_path(Path::new(&format!("{story}.txt"))).unwrap();
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    let parent = repo.find_commit(base).unwrap();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, story, &tree, &[&parent]).unwrap();
    git::push(work, story, git::Claim { stage: "current", token: 1, node: "agent-1" }, creds)?;
    // What lands is huskies' seal commit on top of the agent's.
    let tip = git::branch_head(work, story).expect("a local branch");
    let sealed = Repository::open(work).unwrap();
    let seal = sealed.find_commit(tip).unwrap();
    assert_eq!(seal.parent_id(0).unwrap(), oid);
    assert!(seal.message().unwrap().contains(&format!("Huskies-Claim: {story} current 1 agent-1")));
    Ok(tip)
}

fn remote_tip(repos: &Path, story: &str) -> Option<git2::Oid> {
    let bare = Repository::open_bare(repos.join("remote.git")).unwrap();
    bare.find_reference(&format!("refs/heads/huskies/{story}")).ok()?.target()
}

#[test]
fn push_over_git_daemon() {
    let dir = Scratch::new("daemon");
    let repos = remote(&dir.0);
    let port = free_port();
    let daemon = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", repos.display()))
        .arg(&repos)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git daemon (Debian package git)");
    let _daemon = Daemon(daemon);
    wait_listening(port);
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let work = work_tree(&dir.0, "work", &repos, &url);
    let creds = GitCredentials::default();

    let oid = commit_and_push(&work, "s1", &creds).unwrap();
    assert_eq!(remote_tip(&repos, "s1"), Some(oid));
    // The next stage, on another machine, starts from the pushed branch:
    // a fetch over git://.
    let other = work_tree(&dir.0, "other", &repos, &url);
    let (_, base, _) = git::prepare_worktree(&other, "s1", &creds, None).unwrap();
    assert_eq!(base, oid);
    assert!(!git::has_unpushed_work(&other, "s1", &creds));

    // A ref the remote refuses is an error that names the remote.
    let e = commit_and_push(&work, "denied", &creds).unwrap_err().to_string();
    assert!(e.contains(&url) && e.contains("refs/heads/huskies/denied"), "{e}");
    assert_eq!(remote_tip(&repos, "denied"), None);
}

#[test]
fn push_over_smart_http_with_a_token() {
    let dir = Scratch::new("http");
    let repos = remote(&dir.0);
    let token = "hgt_5ecret-token-value";
    let port = githttp::serve(repos.clone(), Some(token.to_owned()));
    let url = format!("http://127.0.0.1:{port}/remote.git");
    let work = work_tree(&dir.0, "work", &repos, &url);

    let creds = GitCredentials { token: Some(token.to_owned()), ..Default::default() };
    let oid = commit_and_push(&work, "s1", &creds).unwrap();
    assert_eq!(remote_tip(&repos, "s1"), Some(oid));
    let other = work_tree(&dir.0, "other", &repos, &url);
    let (_, base, _) = git::prepare_worktree(&other, "s1", &creds, None).unwrap();
    assert_eq!(base, oid, "fetched the pushed branch over http");

    // No credential at all: the error says which sources were asked.
    let none = GitCredentials::default();
    let e = commit_and_push(&work, "s2", &none).unwrap_err().to_string();
    assert!(e.contains(&format!("from {url}")) || e.contains(&format!("to {url}")), "{e}");
    assert!(e.contains("credentials tried"), "{e}");
    assert_eq!(remote_tip(&repos, "s2"), None);

    // A wrong token: refused, named as the source tried, never printed.
    let wrong = GitCredentials { token: Some("hgt_wrong-secret".into()), ..Default::default() };
    let e = commit_and_push(&work, "s3", &wrong).unwrap_err().to_string();
    assert!(e.contains("HUSKIES_GIT_TOKEN") && e.contains(&url), "{e}");
    assert!(!e.contains("hgt_wrong-secret"), "secret in error: {e}");

    // A token written into the remote URL by the user stays out of errors.
    let leaky = format!("http://x-access-token:hgt_url-secret@127.0.0.1:{port}/remote.git");
    Repository::open(&work).unwrap().remote_set_url("origin", &leaky).unwrap();
    let e = commit_and_push(&work, "s4", &none).unwrap_err().to_string();
    assert!(!e.contains("hgt_url-secret"), "secret in error: {e}");
    assert!(e.contains(&url), "{e}");
}

/// Kills the sshd on drop.
struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Over ssh to an sshd on loopback with a key made in the test (Debian
/// package openssh-server; `.ci/run` installs it). Without sshd the test
/// says why it did not run.
#[test]
fn push_over_ssh_with_a_key_file() {
    let sshd_bin = Path::new("/usr/sbin/sshd");
    if !sshd_bin.exists() {
        eprintln!("SKIPPED push_over_ssh_with_a_key_file: no /usr/sbin/sshd (apt-get install openssh-server)");
        return;
    }
    let dir = Scratch::new("ssh");
    let repos = remote(&dir.0);
    let keygen = |name: &str| {
        let path = dir.0.join(name);
        let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&path).status();
        assert!(ok.is_ok_and(|s| s.success()), "ssh-keygen");
        path
    };
    let host_key = keygen("host_key");
    let client_key = keygen("client_key");
    std::fs::copy(dir.0.join("client_key.pub"), dir.0.join("authorized_keys")).unwrap();
    let port = free_port();
    let config = dir.0.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {}\n",
            host_key.display(),
            dir.0.join("authorized_keys").display(),
            dir.0.join("sshd.pid").display()
        ),
    )
    .unwrap();
    // sshd's privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(sshd_bin)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let _sshd = Sshd(child);
    wait_listening(port);
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", repos.join("remote.git").display());
    let work = work_tree(&dir.0, "work", &repos, &url);

    // An unknown host key is refused, with what to do about it.
    let known_hosts = dir.0.join("known_hosts");
    std::fs::write(&known_hosts, "# nothing yet\n").unwrap();
    let creds = GitCredentials {
        ssh_keys: vec![client_key.clone()],
        known_hosts: Some(known_hosts.clone()),
        ..Default::default()
    };
    let e = commit_and_push(&work, "s0", &creds).unwrap_err().to_string();
    assert!(e.contains("hostkey") && e.contains("HUSKIES_GIT_KNOWN_HOSTS"), "{e}");
    // Once the host's key is listed, as ssh-keyscan writes it, the push goes through.
    let host_pub = std::fs::read_to_string(dir.0.join("host_key.pub")).unwrap();
    let mut parts = host_pub.split_whitespace();
    let (kind, b64) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {b64}\n")).unwrap();
    let oid = commit_and_push(&work, "s1", &creds).unwrap();
    assert_eq!(remote_tip(&repos, "s1"), Some(oid));
    // The next stage fetches it over ssh.
    let other = work_tree(&dir.0, "other", &repos, &url);
    assert_eq!(git::prepare_worktree(&other, "s1", &creds, None).unwrap().1, oid);

    // A key the server does not know: refused, and the key tried is named.
    let stranger = keygen("stranger_key");
    let creds =
        GitCredentials { ssh_keys: vec![stranger.clone()], known_hosts: Some(known_hosts), ..Default::default() };
    let e = commit_and_push(&work, "s2", &creds).unwrap_err().to_string();
    assert!(e.contains(&format!("ssh key {}", stranger.display())), "{e}");
    assert_eq!(remote_tip(&repos, "s2"), None);
}
