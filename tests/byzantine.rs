//! An enrolled node turned hostile, over real processes (issue 21): it
//! writes well-formed Automerge changes into its own replica on disk,
//! restarts, and lets them sync. The honest server and agent must not
//! crash, must not lose a story, must say what they refused and who wrote
//! it, and must finish the work.

mod support;

#[path = "hostile.rs"]
mod hostile;

use std::process::Command;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ScalarValue};
use huskies_engine::PersistKind;
use huskies_net::storage::Storage;
use support::*;

fn ok(c: &Cluster, args: &[&str]) -> String {
    let server = format!("http://127.0.0.1:{}", c.port);
    let out = Command::new(EXE).args(args).args(["--server", &server, "--key", &c.key]).output().unwrap();
    assert!(out.status.success(), "huskies {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cluster of a server and agents 1 and 2 with six stories in
/// `current`, stopped once agent 2 holds a claim: agent 2 is the node
/// turned hostile.
fn cluster_with_a_stopped_agent(tag: &str) -> (Cluster, Vec<String>) {
    let mut c = Cluster::new(tag);
    c.start_agent(1, 400);
    c.start_agent(2, 400);
    let ids: Vec<String> = (0..6).map(|k| format!("s{k}")).collect();
    for id in &ids {
        ok(&c, &["story", "add", &format!("Story {id}"), "--id", id, "--stage", "current"]);
    }
    wait_for("agent-2 to hold a claim", Duration::from_secs(30), || {
        c.stages().iter().any(|(_, _, h)| h.as_deref() == Some("agent-2"))
    });
    c.kill("agent-2", libc::SIGTERM);
    (c, ids)
}

/// Agent 2's replica on disk, opened to be written as agent 2 would write
/// it (a new incarnation `salt`), and its `stories` map.
fn open_replica(c: &Cluster, salt: u8) -> (Storage, AutoCommit, automerge::ObjId) {
    let (storage, bytes) = Storage::open(&c.root().join("agent-2-data")).unwrap();
    let mut actor = b"agent-2".to_vec();
    actor.push(0);
    actor.extend_from_slice(&[salt; 8]);
    // Storage interleaves signature blocks with the document's chunks.
    let chunks = huskies_engine::guard::split_stored(&bytes, 1 << 30).chunks;
    let am = AutoCommit::load(&chunks).unwrap().with_actor(ActorId::from(actor));
    let Ok(Some((_, stories))) = am.get(automerge::ROOT, "stories") else { panic!("no stories map") };
    (storage, am, stories)
}

#[test]
fn a_hostile_replica_cannot_crash_wedge_or_hide_stories() {
    let (mut c, ids) = cluster_with_a_stopped_agent("byzantine");
    let (mut storage, mut am, stories) = open_replica(&c, 0xee);
    let story = |am: &AutoCommit, id: &str| am.get(&stories, id).unwrap().unwrap().1;
    let state = |am: &AutoCommit, id: &str| match am.get(story(am, id), "state").unwrap().unwrap().0 {
        automerge::Value::Scalar(s) => s.as_str().unwrap().to_owned(),
        _ => panic!("a state"),
    };
    // The table's rows: a token of 2^64-1 held by nobody known; a state
    // that is a number; a title that is a counter; then the root maps
    // deleted and a story's map replaced by a list.
    let mut forged: serde_json::Value = serde_json::from_str(&state(&am, "s0")).unwrap();
    forged["token"] = serde_json::json!(u64::MAX);
    forged["holder"] = serde_json::json!("ghost");
    let s0 = story(&am, "s0");
    am.put(&s0, "state", forged.to_string()).unwrap();
    let s2 = story(&am, "s2");
    am.put(&s2, "state", 42).unwrap();
    let s3 = story(&am, "s3");
    am.put(&s3, "title", ScalarValue::counter(3)).unwrap();
    am.commit();
    // Deleting the root's maps and replacing a story's map, in a change of
    // their own: refused whole at the door (with every later change of its
    // writer, which depends on it).
    am.delete(automerge::ROOT, "nodes").unwrap();
    am.put_object(&stories, "s1", ObjType::List).unwrap();
    am.delete(automerge::ROOT, "stories").unwrap();
    am.commit();
    storage.persist(PersistKind::Snapshot, &am.save()).unwrap();
    drop(storage);
    c.start_agent(2, 400);

    wait_for("the server to refuse the forged values", Duration::from_secs(30), || {
        let text = ok(&c, &["status"]);
        text.contains("stories/s0/state: token 18446744073709551615 is past any honest claim (written by agent-2)")
            && text.contains("a write to the root's `nodes` map, which only an epoch's base makes (written by agent-2)")
    });
    // The admin's move of the forged story works (it crashed the server).
    ok(&c, &["story", "move", "s0", "backlog"]);
    ok(&c, &["story", "move", "s0", "current"]);
    // The admin revokes the hostile node: the claims it still holds free,
    // and the honest agent does the rest (agents here work `current`).
    ok(&c, &["node", "revoke", "agent-2"]);
    let all_done = || {
        let st = c.stages();
        ids.iter().all(|id| st.iter().any(|(s, stage, _)| s == id && stage == "qa"))
    };
    for _ in 0..600 {
        if all_done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !all_done() {
        let logs: String = ["server", "agent-1", "agent-2"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(c.root().join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- {n}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect();
        panic!("not every story left current: {:?}\n{}\n{logs}", c.stages(), ok(&c, &["status"]));
    }
    let status = status(c.port, &c.key).unwrap();
    assert!(status["refused"]["total"].as_u64() >= Some(4), "{}", status["refused"]);
    assert_eq!(status["stories"].as_array().unwrap().len(), 6, "no story vanished");
}

/// The rest of the table over real processes: the hostile agent forges
/// the admin's removals and a claim in the honest agent's name, and
/// floods the document with 175,000 stories (about the issue's 12 MB).
/// The removals and the claim are refused, no flooded story reaches a
/// board, the server's RSS stays bounded, `status` keeps answering, the
/// honest agent keeps its link, and the work finishes.
#[test]
fn forged_commands_and_a_story_flood_cost_the_cluster_nothing() {
    let (mut c, ids) = cluster_with_a_stopped_agent("byzantine-flood");
    let server_pid = c.procs.iter().find(|p| p.name == "server").unwrap().child.id();
    let rss_before = rss_kib(server_pid);

    let (mut storage, mut am, stories) = open_replica(&c, 0xef);
    let story = |am: &AutoCommit, id: &str| am.get(&stories, id).unwrap().unwrap().1;
    let state = |am: &AutoCommit, id: &str| match am.get(story(am, id), "state").unwrap().unwrap().0 {
        automerge::Value::Scalar(s) => serde_json::from_str::<serde_json::Value>(s.as_str().unwrap()).unwrap(),
        _ => panic!("a state"),
    };
    for (k, id) in ids.iter().enumerate().take(4) {
        let mut forged = state(&am, id);
        forged["token"] = serde_json::json!(forged["token"].as_u64().unwrap() + 1);
        if k < 3 {
            forged["removed"] = serde_json::json!(true);
            forged.as_object_mut().unwrap().remove("holder");
        } else {
            forged["holder"] = serde_json::json!("agent-1");
        }
        let obj = story(&am, id);
        am.put(&obj, "state", forged.to_string()).unwrap();
    }
    am.commit();
    storage.persist(PersistKind::Snapshot, &am.save()).unwrap();
    drop(storage);
    c.start_agent(2, 400);
    wait_for("the server to refuse the forged commands", Duration::from_secs(30), || {
        let text = ok(&c, &["status"]);
        text.contains("stories/s0/state: a removal, which only the server may write (written by agent-2)")
            && text.contains("stories/s3/state: a claim in the name of agent-1 (written by agent-2)")
    });

    // Then the flood, written the same way.
    c.kill("agent-2", libc::SIGTERM);
    let (mut storage, mut am, stories) = open_replica(&c, 0xf0);
    for batch in 0..35 {
        for k in 0..5_000 {
            let o = am.put_object(&stories, format!("flood-{batch:02}-{k:04}").as_str(), ObjType::Map).unwrap();
            am.put(&o, "title", "flood").unwrap();
            am.put(&o, "state", r#"{"stage":"current","token":0}"#).unwrap();
        }
        am.commit();
    }
    let saved = am.save();
    eprintln!("hostile replica: {} bytes", saved.len());
    storage.persist(PersistKind::Snapshot, &saved).unwrap();
    drop(storage);
    c.start_agent(2, 400);

    // 30 s of the flood: the server's RSS and how long `status` takes.
    let (mut worst, mut rss_max) = (Duration::ZERO, 0u64);
    for _ in 0..60 {
        #[allow(clippy::disallowed_methods)] // wall time is what is measured
        let t = std::time::Instant::now();
        let s = status(c.port, &c.key);
        worst = worst.max(t.elapsed());
        assert!(s.is_some(), "status answers during the flood");
        rss_max = rss_max.max(rss_kib(server_pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = status(c.port, &c.key).unwrap();
    eprintln!(
        "flood: server RSS {} MiB before, {} MiB at most; status worst {worst:?}; refused {}",
        rss_before / 1024,
        rss_max / 1024,
        s["refused"]
    );
    assert!(rss_max < rss_before + 128 * 1024, "server RSS {rss_max} KiB (was {rss_before} KiB)");
    assert!(worst < Duration::from_secs(2), "status took {worst:?}");
    let connected: Vec<String> = s["connected"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert!(connected.iter().any(|n| n == "agent-1"), "the honest agent keeps its link: {connected:?}");
    assert_eq!(s["stories"].as_array().unwrap().len(), 6, "no flooded story on the board");

    // The removals and the claim were refused: every story still goes on.
    wait_for("every story to leave current", Duration::from_secs(60), || {
        let st = c.stages();
        ids.iter().all(|id| st.iter().any(|(s, stage, _)| s == id && stage == "qa"))
    });
    // `huskies doctor` names the writer and what revoking it would do.
    let text = ok(&c, &["doctor"]);
    assert!(text.contains("written by agent-2"), "{text}");
    assert!(text.contains("huskies node revoke agent-2"), "{text}");
}

/// The table's row of changes whose first ancestor never comes, over a
/// real websocket: an enrolled node sends signed changes (64 KiB each,
/// about 2 MB/s) chained on one it never sends. Nothing of them can apply;
/// the author's quota refuses its link after a few MiB, the server's RSS
/// stays bounded, `status` keeps answering and the honest agent keeps its
/// link and its work.
#[test]
fn changes_whose_ancestor_never_comes_cost_the_server_little() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut c = Cluster::new("byzantine-ancestor");
    c.start_agent(1, 400);
    for k in 0..4 {
        c.add_story(&format!("a{k}"));
    }
    let server_pid = c.procs.iter().find(|p| p.name == "server").unwrap().child.id();
    let rss_before = rss_kib(server_pid);
    let mallory = hostile::Peer::join(c.port, &c.token(), "mallory");
    let node = mallory.hs.node.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = c.port;
    // A hello in the server's epoch (its messages of another epoch would be
    // dropped unread, as in flight across a cut).
    let epoch = status(c.port, &c.key).unwrap()["epoch"].as_u64().unwrap();
    let hello = huskies_engine::wire::Envelope::Hello {
        node: node.clone(),
        nonce: mallory.hs.nonce,
        cert: mallory.hs.creds.cert,
        epoch,
    }
    .encode();
    let (sent, refused) = rt.block_on(async {
        let mut ws = mallory.open(port).await.unwrap();
        mallory.handshake(&mut ws, &hello).await.unwrap();
        #[allow(clippy::disallowed_methods)] // the hostile node's own document
        let mut am = AutoCommit::new().with_actor(ActorId::from(b"mallory\0\x01".to_vec()));
        // Keys mallory may write (its ledger lines): the changes pass the
        // door and wait for the ancestor that never comes.
        am.put(automerge::ROOT, "ledger/mallory/all", 1).unwrap();
        am.commit();
        let mut sent = 0usize;
        for i in 0..400 {
            // A new value each time: Automerge makes no change of a put of
            // the value a key holds.
            am.put(automerge::ROOT, "ledger/mallory/d1", format!("{i:04}{}", "x".repeat(64 << 10))).unwrap();
            am.commit();
            let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
            let msg = automerge::sync::Message::decode(&huskies_engine::hostile::with_change(&change)).unwrap();
            let bytes = huskies_engine::testkit::signed_sync(&node, &mallory.hs.creds, msg);
            sent += bytes.len();
            if ws.send(Message::Binary(bytes.into())).await.is_err() {
                return (sent, true);
            }
            // About 2 MB/s; whatever the server says meanwhile is read.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
            while let Ok(m) = tokio::time::timeout_at(deadline, ws.next()).await {
                if matches!(m, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return (sent, true);
                }
            }
        }
        (sent, false)
    });
    let rss_after = rss_kib(server_pid);
    eprintln!(
        "ancestor flood: {} KiB sent before the link was refused; server RSS {} -> {} MiB",
        sent / 1024,
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(refused, "the link of an author past its quota is refused ({sent} bytes sent)");
    assert!(sent < 8 << 20, "refused within its quota's burst: {sent} bytes");
    assert!(rss_after < rss_before + 64 * 1024, "server RSS {rss_after} KiB (was {rss_before} KiB)");
    let s = status(c.port, &c.key).expect("status answers");
    let connected: Vec<&str> =
        s["connected"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    assert!(connected.contains(&"agent-1"), "the honest agent keeps its link: {connected:?}");
    wait_for("the honest agent's work", Duration::from_secs(60), || {
        let st = c.stages();
        st.len() == 4 && st.iter().all(|(_, stage, _)| stage != "current")
    });
}

/// Node ids that would pass for huskies' own writers are refused at
/// enrollment, before a token is spent.
#[test]
fn huskies_own_names_cannot_enroll() {
    let c = Cluster::new("reserved");
    for name in ["huskies-epoch-1", "huskies-genesis"] {
        let r = http()
            .post(format!("http://127.0.0.1:{}/api/join", c.port))
            .header("authorization", &format!("Bearer {}", c.token()))
            .send_json(serde_json::json!({ "node": name, "key": "00".repeat(32) }));
        let mut r = match r {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(code)) => panic!("{name}: status {code} without a body"),
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(r.status().as_u16(), 400, "{name}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("is reserved"), "{name}: {body}");
    }
}
