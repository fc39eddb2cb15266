//! Helpers shared by the end-to-end tests: scratch clusters of real
//! `huskies` processes on loopback, bounded waits, a git fixture.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
mod ports;
pub use ports::free_port_on;

pub const EXE: &str = env!("CARGO_BIN_EXE_huskies");

pub struct Proc {
    pub name: String,
    pub child: Child,
}

/// A scratch cluster; kills its processes when dropped.
pub struct Cluster {
    pub dir: tempdir::TempDir,
    pub port: u16,
    pub procs: Vec<Proc>,
    pub key: String,
    /// Extra environment for processes started from now on.
    pub env: Vec<(String, String)>,
    /// Extra flags for the server.
    pub server_args: Vec<String>,
}

pub mod tempdir {
    /// A directory removed on drop (no extra crate for one helper).
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("huskies-e2e-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    /// The last lines of every `*.log` in `dir` (the nodes' logs).
    fn print_log_tails(dir: &std::path::Path) {
        const TAIL_LINES: usize = 40;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut logs: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last {TAIL_LINES} lines of {}", log.display());
            for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                eprintln!("{line}");
            }
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            // A failed test keeps its logs and data for a post-mortem.
            // The logs' tails go to stderr too: a CI run keeps only its
            // output, not the machine's /tmp.
            if std::thread::panicking() {
                print_log_tails(&self.0);
                eprintln!("kept for inspection: {}", self.0.display());
                return;
            }
            if std::env::var_os("HUSKIES_E2E_KEEP").is_some() {
                eprintln!("kept (HUSKIES_E2E_KEEP): {}", self.0.display());
                return;
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

pub fn status(port: u16, key: &str) -> Option<serde_json::Value> {
    status_at("127.0.0.1", port, key)
}

pub fn status_at(host: &str, port: u16, key: &str) -> Option<serde_json::Value> {
    let mut r = http()
        .get(format!("http://{host}:{port}/api/status"))
        .header("authorization", &format!("Bearer {key}"))
        .call()
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.body_mut().read_json().ok()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)] // real processes, real time
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

impl Cluster {
    pub fn root(&self) -> &Path {
        &self.dir.0
    }

    pub fn spawn(&mut self, name: &str, args: &[String]) {
        let log = std::fs::File::create(self.root().join(format!("{name}.log"))).unwrap();
        let child = Command::new(EXE)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(Proc { name: name.to_owned(), child });
    }

    pub fn kill(&mut self, name: &str, signal: i32) {
        let i = self.procs.iter().position(|p| p.name == name).unwrap();
        let mut p = self.procs.remove(i);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(p.child.id() as i32, signal) };
        let _ = p.child.wait();
    }

    pub fn start_server(&mut self) {
        let root = self.root().to_owned();
        std::fs::create_dir_all(root.join("server/.huskies")).unwrap();
        let toml = root.join("server/.huskies/project.toml");
        if !toml.exists() {
            std::fs::write(toml, "claim_timeout_ms = 3000\nscan_interval_ms = 200\n").unwrap();
        }
        let args: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            root.join("server-data").to_string_lossy().into(),
            "--project-root".into(),
            root.join("server").to_string_lossy().into(),
            "--node-id".into(),
            "rendezvous".into(),
        ];
        let args = [args, self.server_args.clone()].concat();
        self.spawn("server", &args);
        let port = self.port;
        wait_for("the server", Duration::from_secs(10), || {
            http().get(format!("http://127.0.0.1:{port}/healthz")).call().is_ok()
        });
        self.key = std::fs::read_to_string(root.join("server-data/admin.key")).unwrap().trim().to_owned();
    }

    pub fn token(&self) -> String {
        let out = Command::new(EXE)
            .args(["token", "create", "--ttl", "10m", "--data-dir"])
            .arg(self.root().join("server-data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn start_agent(&mut self, i: usize, stand_in_ms: u64) {
        self.start_agent_at(i, stand_in_ms, "127.0.0.1");
    }

    /// Starts agent `i` listening on `host` (another loopback address
    /// stands in for another machine); returns its API port.
    pub fn start_agent_at(&mut self, i: usize, stand_in_ms: u64, host: &str) -> u16 {
        let agents = format!(
            "[agents.current]\ncommand = {EXE:?}\nargs = [\"stand-in\", \"--duration-ms\", \"{stand_in_ms}\", \"--jitter-ms\", \"300\"]\n"
        );
        self.start_agent_with(i, host, &agents)
    }

    /// Starts agent `i` on `host` with `agents` as the `[agents.*]` part of
    /// its project.toml (kept if the agent ran before); returns its port.
    pub fn start_agent_with(&mut self, i: usize, host: &str, agents: &str) -> u16 {
        let port = self.port;
        self.start_agent_via(i, host, "", agents, port)
    }

    /// As [`Cluster::start_agent_with`], with `top` added to the top-level
    /// settings and the rendezvous dialled at `rendezvous_port`.
    pub fn start_agent_via(&mut self, i: usize, host: &str, top: &str, agents: &str, rendezvous_port: u16) -> u16 {
        let root = self.root().join(format!("agent-{i}"));
        if !root.exists() {
            git2::Repository::clone(self.root().join("remote.git").to_str().unwrap(), &root).unwrap();
            std::fs::create_dir_all(root.join(".huskies")).unwrap();
            let toml = format!(
                "capacity = 2\nclaim_timeout_ms = 3000\nscan_interval_ms = 200\nretry_backoff_ms = 500\n{top}{agents}"
            );
            std::fs::write(root.join(".huskies/project.toml"), toml).unwrap();
        }
        let port = free_port_on(host);
        let args: Vec<String> = vec![
            "agent".into(),
            "--rendezvous".into(),
            format!("ws://127.0.0.1:{rendezvous_port}/crdt-sync"),
            "--host".into(),
            host.into(),
            "--port".into(),
            port.to_string(),
            "--project-root".into(),
            root.to_string_lossy().into(),
            "--data-dir".into(),
            self.root().join(format!("agent-{i}-data")).to_string_lossy().into(),
            "--join-token".into(),
            self.token(),
            "--node-id".into(),
            format!("agent-{i}"),
        ];
        self.spawn(&format!("agent-{i}"), &args);
        port
    }

    /// A cluster whose server's project.toml (the cluster settings) is `toml`.
    pub fn with_settings(tag: &str, toml: &str) -> Cluster {
        let dir = tempdir::TempDir::new(tag);
        fixture(&dir.0);
        std::fs::create_dir_all(dir.0.join("server/.huskies")).unwrap();
        std::fs::write(dir.0.join("server/.huskies/project.toml"), toml).unwrap();
        let mut c = Cluster::unstarted(dir);
        c.start_server();
        c
    }

    /// A cluster in `dir` whose server is not started yet.
    pub fn unstarted(dir: tempdir::TempDir) -> Cluster {
        Cluster {
            dir,
            port: free_port(),
            procs: Vec::new(),
            key: String::new(),
            env: Vec::new(),
            server_args: Vec::new(),
        }
    }

    /// A cluster whose server is started with `args` besides the usual.
    pub fn with_server_args(tag: &str, args: &[&str]) -> Cluster {
        let dir = tempdir::TempDir::new(tag);
        fixture(&dir.0);
        let server_args = args.iter().map(|a| a.to_string()).collect();
        let mut c = Cluster::unstarted(dir);
        c.server_args = server_args;
        c.start_server();
        c
    }

    pub fn new(tag: &str) -> Cluster {
        let dir = tempdir::TempDir::new(tag);
        fixture(&dir.0);
        let mut c = Cluster::unstarted(dir);
        c.start_server();
        c
    }

    pub fn add_story(&self, id: &str) {
        let mut r = http()
            .post(format!("http://127.0.0.1:{}/api/stories", self.port))
            .header("authorization", &format!("Bearer {}", self.key))
            .send_json(serde_json::json!({ "title": format!("story {id}"), "id": id, "stage": "current" }))
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.body_mut().read_to_string().unwrap_or_default());
    }

    pub fn stages(&self) -> Vec<(String, String, Option<String>)> {
        let s = status(self.port, &self.key).unwrap_or_default();
        s["stories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["id"].as_str().unwrap_or_default().to_owned(),
                            x["stage"].as_str().unwrap_or_default().to_owned(),
                            x["holder"].as_str().map(str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A bare remote with one commit.
pub fn fixture(dir: &Path) -> PathBuf {
    let seed = dir.join("seed");
    let repo = git2::Repository::init(&seed).unwrap();
    std::fs::write(seed.join("README.md"), "e2e\n").unwrap();
    let mut idx = repo.index().unwrap();
    idx.add_path(Path::new("README.md")).unwrap();
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("e2e", "e2e@huskies.invalid").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
    let remote = dir.join("remote.git");
    git2::build::RepoBuilder::new().bare(true).clone(seed.to_str().unwrap(), &remote).unwrap();
    remote
}

/// Runs the CLI; its stdout, or a panic with its stderr.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new(EXE).args(args).output().unwrap();
    assert!(out.status.success(), "huskies {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP proxy on loopback in front of `target`, that can cut every
/// connection through it and refuse new ones (a network partition between
/// whoever dials it and the target) and heal again.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn new(target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let generation = std::sync::Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                let born = g.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let (c, g) = (c.clone(), g.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            if c.load(Ordering::SeqCst) || g.load(Ordering::SeqCst) != born {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Proxy { port, cut, generation }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The resident set of process `pid`, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
