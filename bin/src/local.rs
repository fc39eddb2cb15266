//! A real local cluster's parts, for `huskies demo` and `huskies
//! fleet-bench`: child processes stopped on drop, free ports, a scratch git
//! project with its gate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::CliError;

/// Child processes, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Procs(pub Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        #[allow(clippy::disallowed_methods)] // wall-clock wait for real processes
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, c) in &mut self.0 {
            #[allow(clippy::disallowed_methods)]
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

pub fn git_fixture(scratch: &Path) -> Result<PathBuf, String> {
    let err = |e: git2::Error| e.message().to_owned();
    let seed = scratch.join("seed");
    let repo = git2::Repository::init(&seed).map_err(err)?;
    std::fs::write(seed.join("README.md"), "# demo project\n").map_err(|e| e.to_string())?;
    std::fs::write(seed.join("CHANGELOG.md"), "# Changelog\n").map_err(|e| e.to_string())?;
    std::fs::write(seed.join("ci.sh"), CI_SH).map_err(|e| e.to_string())?;
    let mut idx = repo.index().map_err(err)?;
    for f in ["README.md", "CHANGELOG.md", "ci.sh"] {
        idx.add_path(Path::new(f)).map_err(err)?;
    }
    let tree = repo.find_tree(idx.write_tree().map_err(err)?).map_err(err)?;
    let sig = git2::Signature::now("huskies demo", "demo@huskies.invalid").map_err(err)?;
    repo.commit(Some("HEAD"), &sig, &sig, "initial commit", &tree, &[]).map_err(err)?;
    let remote = scratch.join("remote.git");
    let seed_url = seed.to_str().ok_or("scratch path is not UTF-8")?;
    git2::build::RepoBuilder::new().bare(true).clone(seed_url, &remote).map_err(err)?;
    Ok(remote)
}

/// The demo repository's gate: what landing runs on every merged tree.
const CI_SH: &str = "#!/bin/sh
# The gate huskies runs before it moves the default branch.
if grep -rqE '^(<<<<<<<|>>>>>>>)' --exclude-dir=.git .; then echo 'conflict markers left'; exit 1; fi
if [ -d broken ] && [ -n \"$(ls broken)\" ]; then echo \"broken: $(ls broken)\"; exit 1; fi
echo 'all checks passed'
";

pub fn wait_healthy(client: &Client, what: &str) -> Result<(), CliError> {
    for _ in 0..200 {
        if client.healthy() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not come up").into())
}

/// Starts `exe` with `args` and `envs`, its stderr (the logs) to `log`.
pub fn spawn(exe: &Path, args: &[String], log: &Path, envs: &[(&str, &str)]) -> Result<Child, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

/// Waits for a starting server to write its cluster key into `data_dir`
/// (up to 10 s).
pub fn wait_for_key(data_dir: &Path) -> Result<String, String> {
    for _ in 0..400 {
        if let Ok(Some(k)) = huskies_net::auth::read_key(data_dir) {
            return Ok(k);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err("the server did not create its cluster key".into())
}

/// The arguments of a local server: the rendezvous on 127.0.0.1:`port`.
pub fn server_args(port: u16, data_dir: &Path, project_root: &Path) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    vec![
        "server".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        s(data_dir),
        "--project-root".into(),
        s(project_root),
        "--node-id".into(),
        "rendezvous".into(),
    ]
}
