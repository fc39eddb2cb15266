//! End-to-end tests: real `huskies` processes on 127.0.0.1, a real bare git
//! remote, the built-in stand-in agent. Ports are picked free, every wait is
//! bounded, and every process is reaped when a test ends, pass or fail.

#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Server + 3 agents + a bare remote: 20 stories all reach qa with one
/// branch each holding the stand-in's commit, through a kill -9 of a busy
/// agent and a restart of the server.
#[test]
fn cluster_finishes_through_agent_kill_and_server_restart() {
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let mut c = Cluster::new("cluster");
    for i in 1..=3 {
        c.start_agent(i, 1_500);
    }
    let ids: Vec<String> = (0..20).map(|k| format!("e2e-{k:02}")).collect();
    for id in &ids {
        c.add_story(id);
    }
    // Kill the agent holding the most claims while it runs them.
    let mut victim = None;
    wait_for("claims", Duration::from_secs(20), || {
        let st = c.stages();
        let mut held = std::collections::BTreeMap::new();
        for (_, _, h) in &st {
            if let Some(h) = h {
                *held.entry(h.clone()).or_insert(0) += 1;
            }
        }
        victim = held.into_iter().max_by_key(|(_, n)| *n).filter(|(_, n)| *n >= 2).map(|(h, _)| h);
        victim.is_some()
    });
    let victim = victim.unwrap();
    c.kill(&victim, libc::SIGKILL);
    // Restart the server mid-run: nothing it acknowledged may be lost.
    std::thread::sleep(Duration::from_millis(500));
    c.kill("server", libc::SIGTERM);
    c.start_server();
    wait_for("all 20 stories in qa", Duration::from_secs(120), || {
        let st = c.stages();
        st.len() == 20 && st.iter().all(|(_, stage, _)| stage == "qa")
    });
    let remote = git2::Repository::open_bare(c.root().join("remote.git")).unwrap();
    for id in &ids {
        let r = remote.find_reference(&format!("refs/heads/huskies/{id}")).expect("one branch per story");
        let tree = r.peel_to_commit().unwrap().tree().unwrap();
        let entry = tree.get_path(Path::new(&format!("stories/{id}.md"))).expect("the stand-in's file");
        let blob = remote.find_blob(entry.id()).unwrap();
        let text = String::from_utf8_lossy(blob.content());
        assert!(text.contains("current: done by agent-"), "{id}: {text}");
    }
    let branches = remote.references_glob("refs/heads/huskies/*").unwrap().count();
    assert_eq!(branches, 20);
    println!(
        "e2e cluster: 20 stories through kill -9 of {victim} and a server restart in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Unauthenticated sockets, reused join tokens and malformed frames are
/// refused, and a bad peer is disconnected without hurting the others.
#[test]
fn refuses_strangers_reused_tokens_and_garbage() {
    let mut c = Cluster::new("auth");
    c.start_agent(1, 200);
    let port = c.port;
    let key = c.key.clone();
    wait_for("the agent to connect", Duration::from_secs(20), || {
        status(port, &key).is_some_and(|s| s["peers"].as_u64() == Some(1))
    });

    // No node credentials, or the admin key instead: 401 before any sync byte.
    let admin = format!("Bearer {key}");
    for auth in [None, Some(admin.as_str())] {
        let mut req = http().get(format!("http://127.0.0.1:{port}/crdt-sync"));
        req = req.header("connection", "upgrade").header("upgrade", "websocket").header("sec-websocket-version", "13");
        req = req.header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.call().unwrap().status().as_u16(), 401);
    }
    assert_eq!(http().get(format!("http://127.0.0.1:{port}/api/status")).call().unwrap().status().as_u16(), 401);

    // A join token works once.
    let token = c.token();
    let join = |t: &str| {
        http()
            .post(format!("http://127.0.0.1:{port}/api/join"))
            .header("authorization", &format!("Bearer {t}"))
            .send_json(serde_json::json!({ "node": "joiner", "key": "00".repeat(32) }))
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(join(&token), 200);
    assert_eq!(join(&token), 403, "a reused join token is refused");
    assert_eq!(join("hj_made_up"), 401);

    // A malformed frame from an authenticated peer: that peer is dropped.
    let peer = hostile::Peer::join(port, &c.token(), "mallory");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut ws = peer.connect(port).await.expect("an enrolled node may connect");
        ws.send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into())).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                    return true;
                }
            }
            true
        })
        .await;
        assert_eq!(closed, Ok(true), "the bad peer was disconnected");
    });
    let s = status(port, &key).unwrap();
    assert_eq!(s["peers"].as_u64(), Some(1), "the good agent is still connected");
    assert!(s["counters"]["peers_rejected"].as_u64().unwrap_or(0) >= 1);
}

#[path = "hostile.rs"]
mod hostile;

/// The slowest `/healthz` answer over `n` tries.
fn healthz_worst(port: u16, n: usize) -> Duration {
    (0..n)
        .map(|_| {
            #[allow(clippy::disallowed_methods)] // real processes, real time
            let t = Instant::now();
            let ok = http().get(format!("http://127.0.0.1:{port}/healthz")).call().is_ok_and(|r| r.status() == 200);
            assert!(ok, "/healthz answers");
            t.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// A running server meets an enrolled but hostile node: crafted sync
/// messages, a flood of maximum-size frames, an impersonated hello, a
/// forged heartbeat, and finally revocation. Throughout, `/healthz` answers
/// within 100 ms, RSS stays under 256 MiB, and a good agent keeps finishing
/// stories.
#[test]
fn hostile_peer_cannot_stop_the_node() {
    use futures_util::SinkExt;
    use huskies_engine::NodeId;
    use huskies_engine::wire::Envelope;
    use tokio_tungstenite::tungstenite::Message;
    let mut c = Cluster::new("hostile");
    c.start_agent(1, 300);
    let port = c.port;
    let server_pid = c.procs.iter().find(|p| p.name == "server").unwrap().child.id();
    for i in 0..6 {
        c.add_story(&format!("h{i}"));
    }
    let mallory = hostile::Peer::join(port, &c.token(), "mallory");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut worst = Duration::ZERO;
    for (what, msg) in hostile::attacks() {
        let frame = Envelope::Sync { sigs: Default::default(), message: msg }.encode();
        rt.block_on(async {
            let mut ws = mallory.connect(port).await.unwrap();
            ws.send(Message::Binary(frame.into())).await.unwrap();
            assert!(hostile::closed(&mut ws).await, "{what}: the sender is disconnected");
        });
        worst = worst.max(healthz_worst(port, 5));
        let rss = rss_kib(server_pid);
        eprintln!("attack: {what}: disconnected; healthz worst {worst:?}; server RSS {} MiB", rss / 1024);
        assert!(rss < 256 * 1024, "{what}: RSS {rss} KiB");
    }
    // A flood: four connections each sending 30 MiB frames as fast as the
    // socket takes them, while /healthz is timed.
    let flood = rt.spawn({
        let frames: Vec<Vec<u8>> = hostile::attacks()
            .into_iter()
            .map(|(_, m)| Envelope::Sync { sigs: Default::default(), message: m }.encode())
            .collect();
        let peer = hostile::Peer { hs: mallory.hs_clone() };
        async move {
            let mut sent = 0usize;
            for _ in 0..4 {
                let Ok(mut ws) = peer.connect(port).await else { continue };
                for f in frames.iter().cycle().take(8) {
                    if ws.send(Message::Binary(f.clone().into())).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
            }
            sent
        }
    });
    worst = worst.max(healthz_worst(port, 40));
    let sent = rt.block_on(flood).unwrap();
    eprintln!("flood: {sent} frames sent; healthz worst {worst:?}; RSS {} MiB", rss_kib(server_pid) / 1024);
    assert!(worst < Duration::from_millis(100), "healthz worst {worst:?}");
    assert!(rss_kib(server_pid) < 256 * 1024);
    rt.block_on(async {
        // An impersonated hello: our own certificate headers, another id.
        let mut ws = mallory.open(port).await.unwrap();
        let fake = Envelope::Hello {
            node: NodeId::new("agent-1").unwrap(),
            nonce: [1; 32],
            cert: mallory.hs.creds.cert,
            epoch: 0,
        };
        let _ = mallory.handshake(&mut ws, &fake.encode()).await;
        assert!(hostile::closed(&mut ws).await, "an impersonated hello is refused");
        // A heartbeat of agent-1 signed by mallory.
        let mut ws = mallory.connect(port).await.unwrap();
        let mut forged = mallory.hs.heartbeat(1, 1 << 40, 9);
        forged.node = NodeId::new("agent-1").unwrap();
        ws.send(Message::Binary(Envelope::Heartbeats(vec![forged]).encode().into())).await.unwrap();
        assert!(hostile::closed(&mut ws).await, "a forged heartbeat is refused");
    });
    // Revoke mallory with the CLI, as an admin would.
    let out = Command::new(EXE)
        .args(["node", "revoke", "mallory", "--server", &format!("http://127.0.0.1:{port}"), "--key", &c.key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(EXE)
        .args(["node", "list", "--server", &format!("http://127.0.0.1:{port}"), "--key", &c.key])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.lines().any(|l| l.starts_with("mallory") && l.contains("revoked")), "{list}");
    // A node that joined but never connected can be revoked too.
    let eve = hostile::Peer::join(port, &c.token(), "eve");
    let out = Command::new(EXE)
        .args(["node", "revoke", "eve", "--server", &format!("http://127.0.0.1:{port}"), "--key", &c.key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rt.block_on(eve.open(port)).is_err_and(|e| e.contains("403")), "eve is refused at the upgrade");
    let refused = rt.block_on(mallory.open(port));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "a revoked node is refused at the upgrade: {refused:?}"
    );
    // Through all of it the good agent kept working.
    wait_for("the good agent to finish every story", Duration::from_secs(60), || {
        let s = c.stages();
        s.len() == 6 && s.iter().all(|(_, stage, _)| stage == "qa")
    });
    let s = status(port, &c.key).unwrap();
    assert!(s["counters"]["peers_rejected"].as_u64().unwrap_or(0) >= 7, "{}", s["counters"]);
}

/// Agents on distinct loopback addresses, as if on distinct machines:
/// mesh links form between them from the addresses they advertise, and
/// the stories they hold finish while the rendezvous is down. Stories are
/// the server's to add (issue 21): an agent refuses, and says so.
#[test]
fn mesh_across_addresses_survives_the_rendezvous() {
    let mut c = Cluster::new("mesh");
    let agents: Vec<(String, u16)> = (1..=3)
        .map(|i| {
            let host = format!("127.0.0.{}", i + 1);
            let port = c.start_agent_at(i, 300, &host);
            (host, port)
        })
        .collect();
    let key = c.key.clone();
    let connected = |host: &str, port: u16| -> Vec<String> {
        status_at(host, port, &key)
            .and_then(|s| serde_json::from_value(s["connected"].clone()).ok())
            .unwrap_or_default()
    };
    wait_for("every agent linked to the rendezvous and both other agents", Duration::from_secs(30), || {
        agents.iter().all(|(h, p)| connected(h, *p).len() == 3)
    });
    for (i, (h, p)) in agents.iter().enumerate() {
        let peers = connected(h, *p);
        let others: Vec<String> = (1..=3).filter(|j| *j != i + 1).map(|j| format!("agent-{j}")).collect();
        assert!(others.iter().all(|o| peers.contains(o)), "agent-{} on {h}: {peers:?}", i + 1);
        let s = status_at(h, *p, &key).unwrap();
        let me =
            s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == format!("agent-{}", i + 1)).cloned().unwrap();
        assert_eq!(me["address"], format!("ws://{h}:{p}/crdt-sync"), "it advertises its own address");
    }
    // The server adds the stories and dies as soon as they reach the
    // agents: their claims and results travel over the mesh alone.
    for k in 0..6 {
        c.add_story(&format!("m{k}"));
    }
    let (h3, p3) = &agents[2];
    wait_for("the stories reach the agents", Duration::from_secs(30), || {
        status_at(h3, *p3, &key).is_some_and(|s| s["stories"].as_array().is_some_and(|a| a.len() == 6))
    });
    c.kill("server", libc::SIGKILL);
    let (h, p) = &agents[0];
    let mut r = http()
        .post(format!("http://{h}:{p}/api/stories"))
        .header("authorization", &format!("Bearer {key}"))
        .send_json(serde_json::json!({ "title": "late", "id": "late", "stage": "current" }))
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(r.status().as_u16(), 403, "an agent refuses to add a story: {body}");
    assert!(body.contains("story commands run on the server"), "{body}");
    wait_for("6 stories in qa with the rendezvous down", Duration::from_secs(60), || {
        status_at(h3, *p3, &key).is_some_and(|s| {
            let st = s["stories"].as_array().cloned().unwrap_or_default();
            st.len() == 6 && st.iter().all(|x| x["stage"] == "qa")
        })
    });
}

/// A CA and certificates made in the test, as a cluster with its own CA
/// would have them.
mod certs {
    use std::path::{Path, PathBuf};

    pub struct Ca {
        params: rcgen::CertificateParams,
        key: rcgen::KeyPair,
        pub pem: PathBuf,
    }

    impl Ca {
        pub fn new(dir: &Path) -> Ca {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "huskies e2e CA");
            let cert = params.self_signed(&key).unwrap();
            let pem = dir.join("ca.pem");
            std::fs::write(&pem, cert.pem()).unwrap();
            Ca { params, key, pem }
        }

        /// A leaf for `names` (DNS names or IP addresses); its PEM files.
        pub fn issue(&self, dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params =
                rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (c, k) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        }
    }
}

/// The whole flow over TLS with the cluster's own CA: the server serves
/// https and wss, agents on 127.0.0.2-4 join over https, dial wss (the
/// rendezvous and each other, from the wss addresses they advertise) and
/// serve wss themselves; the CLI adds stories and reads status over https.
/// Plain http to a TLS port, and a client that does not trust the CA, get
/// nothing.
#[test]
fn whole_flow_over_tls() {
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let dir = tempdir::TempDir::new("tls");
    let root = dir.0.clone();
    fixture(&root);
    let ca = certs::Ca::new(&root);
    let (server_cert, server_key) = ca.issue(&root, "server", &["localhost", "127.0.0.1"]);
    let mut c = Cluster::unstarted(dir);
    std::fs::create_dir_all(root.join("server/.huskies")).unwrap();
    std::fs::write(root.join("server/.huskies/project.toml"), "claim_timeout_ms = 3000\nscan_interval_ms = 200\n")
        .unwrap();
    let server_data = root.join("server-data");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    c.spawn(
        "server",
        &[
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", c.port),
            "--data-dir".into(),
            s(&server_data),
            "--project-root".into(),
            s(&root.join("server")),
            "--tls-cert".into(),
            s(&server_cert),
            "--tls-key".into(),
            s(&server_key),
        ],
    );
    let api = format!("https://127.0.0.1:{}", c.port);
    let (ca_pem, data) = (s(&ca.pem), s(&server_data));
    let status = || -> Option<serde_json::Value> {
        let out = Command::new(EXE)
            .args(["status", "--json", "--server", &api, "--ca-cert", &ca_pem, "--data-dir", &data])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    wait_for("the server over https", Duration::from_secs(10), || status().is_some());

    // Nothing in clear: plain http to the TLS port gets no answer, and a
    // client without the cluster's CA refuses the server.
    assert!(http().get(format!("http://127.0.0.1:{}/healthz", c.port)).call().is_err(), "plain http refused");
    let out = Command::new(EXE).args(["status", "--server", &api, "--data-dir", &data]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains("certificate"), "untrusted server: {err}");

    let mut agents = Vec::new();
    for i in 1..=3 {
        let host = format!("127.0.0.{}", i + 1);
        let (cert, key) = ca.issue(&root, &format!("agent-{i}"), &[host.as_str()]);
        let work = root.join(format!("agent-{i}"));
        git2::Repository::clone(root.join("remote.git").to_str().unwrap(), &work).unwrap();
        std::fs::create_dir_all(work.join(".huskies")).unwrap();
        let toml = format!(
            "capacity = 2\nclaim_timeout_ms = 3000\nscan_interval_ms = 200\n[agents.current]\ncommand = {EXE:?}\nargs = [\"stand-in\", \"--duration-ms\", \"300\", \"--jitter-ms\", \"100\"]\n"
        );
        std::fs::write(work.join(".huskies/project.toml"), toml).unwrap();
        let token = cli(&["token", "create", "--ttl", "10m", "--data-dir", &data]).trim().to_owned();
        let port = free_port_on(&host);
        c.spawn(
            &format!("agent-{i}"),
            &[
                "agent".into(),
                "--rendezvous".into(),
                format!("wss://127.0.0.1:{}/crdt-sync", c.port),
                "--host".into(),
                host.clone(),
                "--port".into(),
                port.to_string(),
                "--project-root".into(),
                s(&work),
                "--data-dir".into(),
                s(&root.join(format!("agent-{i}-data"))),
                "--join-token".into(),
                token,
                "--node-id".into(),
                format!("agent-{i}"),
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&key),
                "--ca-cert".into(),
                ca_pem.clone(),
            ],
        );
        agents.push((host, port));
    }
    // Each agent links to the rendezvous and both others, over wss.
    let connected = |host: &str, port: u16| -> Vec<String> {
        let out = Command::new(EXE)
            .args(["status", "--json", "--server", &format!("https://{host}:{port}"), "--ca-cert", &ca_pem])
            .args(["--data-dir", &data])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|s| serde_json::from_value(s["connected"].clone()).ok())
            .unwrap_or_default()
    };
    wait_for("every agent linked to 3 peers over wss", Duration::from_secs(30), || {
        agents.iter().all(|(h, p)| connected(h, *p).len() == 3)
    });
    let nodes = status().unwrap()["nodes"].clone();
    for (i, (h, p)) in agents.iter().enumerate() {
        let me = nodes.as_array().unwrap().iter().find(|n| n["id"] == format!("agent-{}", i + 1)).cloned().unwrap();
        assert_eq!(me["address"], format!("wss://{h}:{p}/crdt-sync"));
    }
    // Stories go in with the CLI, flags after the subcommand as the README writes them.
    for k in 0..6 {
        let title = format!("tls {k}");
        let id = cli(&[
            "story",
            "add",
            &title,
            "--stage",
            "current",
            "--server",
            &api,
            "--ca-cert",
            &ca_pem,
            "--data-dir",
            &data,
        ]);
        assert!(id.starts_with("tls-"), "story add prints the new id: {id:?}");
    }
    wait_for("6 stories in qa over TLS", Duration::from_secs(60), || {
        status().is_some_and(|s| {
            let st = s["stories"].as_array().cloned().unwrap_or_default();
            st.len() == 6 && st.iter().all(|x| x["stage"] == "qa")
        })
    });
    let remote = git2::Repository::open_bare(root.join("remote.git")).unwrap();
    assert_eq!(remote.references_glob("refs/heads/huskies/*").unwrap().count(), 6);
    println!("e2e tls: 3 agents over wss, 6 stories to qa in {:.1} s", started.elapsed().as_secs_f64());
}

/// The settings that must agree come from the server's project.toml: an
/// agent whose own file says otherwise warns and uses the cluster's, and an
/// edit of the server's file reaches the agent without a restart, as does
/// an edit of the agent's stages.
#[test]
fn cluster_settings_come_from_the_server_and_reload() {
    let mut c = Cluster::new("settings");
    let port = c.start_agent_at(1, 200, "127.0.0.1");
    let agent_toml = c.root().join("agent-1/.huskies/project.toml");
    // The agent's own file asks for a 30 s claim timeout; the server's for 3 s.
    let text =
        std::fs::read_to_string(&agent_toml).unwrap().replace("claim_timeout_ms = 3000", "claim_timeout_ms = 30000");
    std::fs::write(&agent_toml, text).unwrap();
    let key = c.key.clone();
    let setting = |p: u16| {
        status_at("127.0.0.1", p, &key).and_then(|s| {
            let st = s["settings"].clone();
            Some((st["revision"].as_u64()?, st["claim_timeout_ms"].as_u64()?, s["stages"].clone()))
        })
    };
    wait_for("the agent to adopt the server's settings", Duration::from_secs(20), || {
        setting(port).is_some_and(|(_, t, _)| t == 3_000)
    });
    wait_for("a warning in the agent's log", Duration::from_secs(10), || {
        std::fs::read_to_string(c.root().join("agent-1.log")).is_ok_and(|l| {
            l.contains("disagrees with the cluster settings") && l.contains("claim_timeout_ms: 30000 vs 3000")
        })
    });
    let (rev, _, _) = setting(port).unwrap();
    // Edit the server's file: the agent follows, no restart.
    let server_toml = c.root().join("server/.huskies/project.toml");
    let text =
        std::fs::read_to_string(&server_toml).unwrap().replace("claim_timeout_ms = 3000", "claim_timeout_ms = 4500");
    std::fs::write(&server_toml, text).unwrap();
    wait_for("the new timeout at the agent", Duration::from_secs(10), || {
        setting(port).is_some_and(|(r, t, _)| t == 4_500 && r == rev + 1)
    });
    // Edit the agent's stages: it now works qa too.
    let text = std::fs::read_to_string(&agent_toml).unwrap();
    std::fs::write(&agent_toml, format!("{text}[agents.qa]\ncommand = {EXE:?}\nargs = [\"stand-in\"]\n")).unwrap();
    wait_for("the agent to work current and qa", Duration::from_secs(10), || {
        setting(port).is_some_and(|(_, _, st)| st == serde_json::json!(["current", "qa"]))
    });
    c.add_story("set-1");
    wait_for("the story through current and qa", Duration::from_secs(30), || {
        c.stages().iter().any(|(id, stage, _)| id == "set-1" && stage == "merge")
    });
}

/// The fenced blocks of one README section, as (language, text).
fn readme_blocks(from: &str, to: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find(from).unwrap_or_else(|| panic!("README has no {from:?}"));
    let end = start + readme[start..].find(to).unwrap_or_else(|| panic!("README has no {to:?} after {from:?}"));
    let mut blocks = Vec::new();
    let mut lines = readme[start..end].lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push((lang.to_owned(), body.join("\n")));
        }
    }
    blocks
}

/// The shell commands of a block: continuation lines joined.
fn shell_lines(block: &str) -> Vec<String> {
    block.replace("\\\n", " ").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// The README's "Run a real cluster" commands, as written, on loopback:
/// only `SERVER`, `THIS-MACHINE`, the ports, the data dir, the join token
/// and the example ids are filled in, and `claude` on the PATH is a
/// stand-in that commits a file.
#[test]
fn readme_cluster_commands_work_as_written() {
    let blocks = readme_blocks("## Run a real cluster", "### Stories and runs");
    let sh: Vec<&String> = blocks.iter().filter(|(l, _)| l == "sh").map(|(_, b)| b).collect();
    let toml = &blocks.iter().find(|(l, _)| l == "toml").expect("a project.toml block").1;
    assert_eq!(sh.len(), 3, "server, agent and admin blocks: {blocks:?}");

    let dir = tempdir::TempDir::new("readme");
    let root = dir.0.clone();
    fixture(&root);
    let (server_port, agent_port) = (free_port(), free_port());
    let data = root.join("var-lib-huskies");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(EXE, bin.join("huskies")).unwrap();
    let claude = bin.join("claude");
    std::fs::write(&claude, format!("#!/bin/sh\nexec {EXE:?} stand-in --duration-ms 200 --jitter-ms 100\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut env: Vec<(String, String)> =
        vec![("PATH".into(), path), ("XDG_STATE_HOME".into(), root.join("state").to_string_lossy().into())];
    let mut fill = vec![
        ("://SERVER:".to_owned(), "://127.0.0.1:".to_owned()),
        ("THIS-MACHINE".into(), "127.0.0.2".into()),
        (":3001".into(), format!(":{server_port}")),
        ("3101".into(), agent_port.to_string()),
        ("/var/lib/huskies".into(), data.to_string_lossy().into()),
    ];
    let filled = |line: &str, fill: &[(String, String)]| {
        fill.iter().fold(line.to_owned(), |l, (from, to)| l.replace(from.as_str(), to))
    };
    let sh_command = |line: &str, cwd: &Path, env: &[(String, String)]| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(line).current_dir(cwd).envs(env.iter().map(|(k, v)| (k, v)));
        c
    };
    let mut c = Cluster::unstarted(dir);
    c.port = server_port;
    let spawn = |c: &mut Cluster, name: &str, mut cmd: Command| {
        let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        c.procs.push(Proc { name: name.to_owned(), child });
    };
    let run = |line: &str, env: &[(String, String)]| {
        let out = sh_command(line, &root, env).output().unwrap();
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // The server machine: its directory holds the README's project.toml.
    let server_dir = root.join("server");
    std::fs::create_dir_all(server_dir.join(".huskies")).unwrap();
    std::fs::write(server_dir.join(".huskies/project.toml"), toml).unwrap();
    let server_block = shell_lines(sh[0]);
    assert!(server_block[0].starts_with("huskies server ") && server_block[1].starts_with("huskies token create "));
    spawn(&mut c, "server", sh_command(&format!("exec {}", filled(&server_block[0], &fill)), &server_dir, &env));
    wait_for("the server", Duration::from_secs(10), || {
        http().get(format!("http://127.0.0.1:{server_port}/healthz")).call().is_ok()
    });
    let token = run(&filled(&server_block[1], &fill), &env).trim().to_owned();
    assert!(token.starts_with("hj_"), "{token}");
    fill.push(("hj_...".into(), token));

    // The agent machine: a clone whose origin is the shared remote.
    let work = root.join("agent");
    git2::Repository::clone(root.join("remote.git").to_str().unwrap(), &work).unwrap();
    std::fs::create_dir_all(work.join(".huskies")).unwrap();
    std::fs::write(work.join(".huskies/project.toml"), toml).unwrap();
    let agent_block = shell_lines(sh[1]);
    assert_eq!(agent_block.len(), 1);
    spawn(&mut c, "agent", sh_command(&format!("exec {}", filled(&agent_block[0], &fill)), &work, &env));

    // Anywhere with the admin key.
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let mut story = String::new();
    for line in shell_lines(sh[2]) {
        let line = filled(&line, &fill);
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|kv| kv.split_once('=')) {
            env.push((k.to_owned(), v.to_owned()));
            continue;
        }
        let out = run(&line, &env);
        if line.starts_with("huskies story add ") {
            story = out.trim().to_owned();
            fill.push(("fix-the-login-form-1a2b".into(), story.clone()));
            // Let the agent do the work before the block moves it back.
            wait_for("the README's story in qa", Duration::from_secs(60), || {
                status(server_port, &key).is_some_and(|s| {
                    s["stories"].as_array().is_some_and(|a| a.iter().any(|x| x["id"] == story && x["stage"] == "qa"))
                })
            });
            let agent = status(server_port, &key).unwrap()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|n| n["id"].as_str().filter(|id| id.starts_with("agent-")).map(str::to_owned))
                .expect("the agent's record");
            fill.push(("agent-7".into(), agent));
        }
        if line.starts_with("huskies story list") {
            assert!(out.contains(&story) && out.contains("qa"), "{out}");
        }
        if line.starts_with("huskies status") {
            assert!(out.contains("cluster settings (revision 1): claim timeout 30000 ms"), "{out}");
        }
        if line.starts_with("huskies node revoke") {
            assert!(out.contains("revoked"), "{out}");
        }
    }
    let remote = git2::Repository::open_bare(root.join("remote.git")).unwrap();
    assert!(remote.find_reference(&format!("refs/heads/huskies/{story}")).is_ok(), "the agent pushed its branch");
    let s = status(server_port, &key).unwrap();
    let st = s["stories"].as_array().unwrap().iter().find(|x| x["id"] == story).cloned().unwrap();
    assert_eq!(st["stage"], "backlog", "moved back by the README's command");
}

/// A write the server cannot make stops it with the reason, and loses
/// nothing it acknowledged: a directory where the next snapshot's temp file
/// goes makes the 512th write fail.
#[test]
fn storage_failure_stops_the_node_and_loses_no_acknowledged_story() {
    let mut c = Cluster::new("storage-failure");
    let blocker = c.root().join("server-data/doc.snapshot.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let mut acked = Vec::new();
    for i in 0..600 {
        let id = format!("s{i:03}");
        let r = http()
            .post(format!("http://127.0.0.1:{}/api/stories", c.port))
            .header("authorization", &format!("Bearer {}", c.key))
            .send_json(serde_json::json!({ "title": format!("story {id}"), "id": id, "stage": "backlog" }));
        match r {
            Ok(r) if r.status().as_u16() == 201 => acked.push(id),
            _ => break,
        }
    }
    assert!((100..600).contains(&acked.len()), "the write that snapshots fails: {} acknowledged", acked.len());
    let server = c.procs.iter_mut().find(|p| p.name == "server").unwrap();
    let mut exit = None;
    wait_for("the server to stop", Duration::from_secs(10), || {
        exit = server.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(!exit.unwrap().success(), "a storage failure is an error exit");
    let log = std::fs::read_to_string(c.root().join("server.log")).unwrap();
    assert!(log.contains("node stopped: cannot persist the document in"), "{log}");

    // Restarted with room to write, it has every acknowledged story.
    std::fs::remove_dir(&blocker).unwrap();
    c.procs.retain(|p| p.name != "server");
    c.start_server();
    let st = status(c.port, &c.key).unwrap();
    let ids: std::collections::BTreeSet<&str> =
        st["stories"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    for id in &acked {
        assert!(ids.contains(id.as_str()), "acknowledged story {id} lost");
    }
}
