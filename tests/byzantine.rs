//! An enrolled node turned hostile, over real processes (issue 21): it
//! writes well-formed Automerge changes into its own replica on disk,
//! restarts, and lets them sync. The honest server and agent must not
//! crash, must not lose a story, must say what they refused and who wrote
//! it, and must finish the work.

mod support;

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

#[test]
fn a_hostile_replica_cannot_crash_wedge_or_hide_stories() {
    let mut c = Cluster::new("byzantine");
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

    // agent-2's replica, written as agent-2 would write it.
    let dir = c.root().join("agent-2-data");
    let (mut storage, bytes) = Storage::open(&dir).unwrap();
    let mut actor = b"agent-2".to_vec();
    actor.push(0);
    actor.extend_from_slice(&[0xee; 8]);
    // Storage interleaves signature blocks with the document's chunks.
    let chunks = huskies_engine::guard::split_stored(&bytes, 1 << 30).chunks;
    let mut am = AutoCommit::load(&chunks).unwrap().with_actor(ActorId::from(actor));
    let Ok(Some((_, stories))) = am.get(automerge::ROOT, "stories") else { panic!("no stories map") };
    let story = |am: &AutoCommit, id: &str| am.get(&stories, id).unwrap().unwrap().1;
    let state = |am: &AutoCommit, id: &str| match am.get(story(am, id), "state").unwrap().unwrap().0 {
        automerge::Value::Scalar(s) => s.as_str().unwrap().to_owned(),
        _ => panic!("a state"),
    };
    // The table's rows: a token of 2^64-1 held by nobody known; a story's
    // map replaced by a list; a state that is a number; a title that is a
    // counter.
    let mut forged: serde_json::Value = serde_json::from_str(&state(&am, "s0")).unwrap();
    forged["token"] = serde_json::json!(u64::MAX);
    forged["holder"] = serde_json::json!("ghost");
    let s0 = story(&am, "s0");
    am.put(&s0, "state", forged.to_string()).unwrap();
    am.put_object(&stories, "s1", ObjType::List).unwrap();
    let s2 = story(&am, "s2");
    am.put(&s2, "state", 42).unwrap();
    let s3 = story(&am, "s3");
    am.put(&s3, "title", ScalarValue::counter(3)).unwrap();
    am.commit();
    storage.persist(PersistKind::Snapshot, &am.save()).unwrap();
    drop(storage);
    c.start_agent(2, 400);

    wait_for("the server to refuse the forged values", Duration::from_secs(30), || {
        let text = ok(&c, &["status"]);
        text.contains("stories/s0/state: token 18446744073709551615 is past any honest claim (written by agent-2)")
            && text.contains("stories/s1: the story is a list (written by agent-2)")
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
