//! The engine contract seen from a driver: bad peers are disconnected,
//! bad commands get clear errors, persistence precedes what it covers.

use huskies_engine::Credentials;
use huskies_engine::identity::PeerHandshake;
use huskies_engine::wire::{Envelope, Heartbeat};
use huskies_engine::{
    Command, CommandError, CommandId, Config, ConnId, Engine, Event, Input, Millis, NodeId, Output, PersistKind, Reply,
    Stage, StoryId, Timer,
};

mod peer;
use peer::{connect, drain, engine, handshake, peer, reason, rejected};

#[test]
fn malformed_peer_bytes_disconnect_only_that_peer() {
    let mut e = engine();
    let (good, bad) = (ConnId(1), ConnId(2));
    connect(&mut e, bad);
    let hello = |n: &str| peer(n).hello();
    handshake(&mut e, good, "good");
    // Sync before hello, garbage, a corrupt sync message, a second hello.
    e.handle(
        Millis(3),
        Input::PeerMessage {
            conn: bad,
            bytes: Envelope::Sync { sigs: Default::default(), message: vec![1, 2] }.encode(),
        },
    );
    assert!(rejected(&drain(&mut e), bad));
    for (i, bytes) in [
        vec![0xff; 10],
        Envelope::Sync { sigs: Default::default(), message: vec![0x42, 0, 1, 2, 3] }.encode(),
        hello("good"),
    ]
    .into_iter()
    .enumerate()
    {
        let conn = ConnId(10 + i as u64);
        if i > 0 {
            handshake(&mut e, conn, &format!("p{i}"));
        } else {
            connect(&mut e, conn);
        }
        e.handle(Millis(5), Input::PeerMessage { conn, bytes });
        assert!(rejected(&drain(&mut e), conn), "case {i}");
    }
    assert_eq!(e.peer_count(), 1, "the good peer is still there");
    // Oversized envelopes are refused before decoding.
    e.handle(Millis(6), Input::PeerMessage { conn: good, bytes: vec![1; Config::default().max_message_bytes + 1] });
    assert!(rejected(&drain(&mut e), good));
}

#[test]
fn commands_give_clear_errors_and_persist_before_reply() {
    let mut e = engine();
    let cmd = |e: &mut Engine, command| {
        e.handle(Millis(10), Input::Command { id: CommandId(1), command });
        drain(e)
    };
    let reply = |outs: &[Output]| {
        outs.iter()
            .find_map(|o| match o {
                Output::Reply { result, .. } => Some(result.clone()),
                _ => None,
            })
            .unwrap()
    };
    let id = StoryId::new("fix-login").unwrap();
    let outs = cmd(
        &mut e,
        Command::AddStory(huskies_engine::NewStory {
            id: Some(id.clone()),
            title: "Fix login".into(),
            stage: Stage::Backlog,
            ..Default::default()
        }),
    );
    let persist = outs.iter().position(|o| matches!(o, Output::Persist { kind: PersistKind::Append, .. }));
    let rep = outs.iter().position(|o| matches!(o, Output::Reply { .. }));
    assert!(persist.unwrap() < rep.unwrap(), "persist before acknowledging");
    assert_eq!(reply(&outs), Ok(Reply::Added { id: id.clone() }));

    let outs = cmd(
        &mut e,
        Command::AddStory(huskies_engine::NewStory {
            id: Some(id.clone()),
            title: "again".into(),
            stage: Stage::Backlog,
            ..Default::default()
        }),
    );
    assert_eq!(reply(&outs), Err(CommandError::StoryExists(id.clone())));
    let outs = cmd(
        &mut e,
        Command::AddStory(huskies_engine::NewStory {
            id: None,
            title: "  ".into(),
            stage: Stage::Backlog,
            ..Default::default()
        }),
    );
    assert_eq!(reply(&outs), Err(CommandError::EmptyTitle));
    let outs = cmd(&mut e, Command::MoveStory { id: StoryId::new("nope").unwrap(), stage: Stage::Qa });
    assert!(reply(&outs).unwrap_err().to_string().contains("no story nope"));
    let outs = cmd(&mut e, Command::MoveStory { id: id.clone(), stage: Stage::Backlog });
    assert!(matches!(reply(&outs), Err(CommandError::IllegalMove { .. })));
    let outs = cmd(
        &mut e,
        Command::AddStory(huskies_engine::NewStory {
            id: None,
            title: "Add OAuth: Google & GitHub!".into(),
            stage: Stage::Qa,
            ..Default::default()
        }),
    );
    match reply(&outs) {
        Ok(Reply::Added { id }) => assert!(id.as_str().starts_with("add-oauth-google-github-"), "{id}"),
        other => panic!("{other:?}"),
    }
    let outs = cmd(&mut e, Command::MoveStory { id: id.clone(), stage: Stage::Done });
    assert!(matches!(reply(&outs), Ok(Reply::Moved { from: Stage::Backlog, to: Stage::Done, .. })));
    assert!("Bad Id".parse::<StoryId>().unwrap_err().to_string().contains("must start"));
}

#[test]
fn commands_before_storage_is_loaded_are_refused() {
    let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(
        Millis(0),
        Input::Command {
            id: CommandId(7),
            command: Command::MoveStory { id: StoryId::new("x").unwrap(), stage: Stage::Qa },
        },
    );
    let outs = drain(&mut e);
    assert_eq!(outs, vec![Output::Reply { id: CommandId(7), result: Err(CommandError::NotReady) }]);
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(e.timers().count(), 0, "no timer before storage loads");
}

#[test]
fn every_deadline_is_a_timer_that_says_why() {
    let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(5), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    let armed: Vec<Timer> = e.timers().map(|(t, _)| t).collect();
    assert!(armed.contains(&Timer::Heartbeat) && armed.contains(&Timer::Scan), "{armed:?}");
    // A beat was sent at the start: the scan (due now) comes first.
    let (first, at) = e.poll_timer().expect("armed");
    assert_eq!(Some(at), e.poll_timeout());
    assert!(e.timers().all(|(_, t)| t >= at), "the earliest of {first:?}");
    e.handle(at, Input::Timeout);
    drain(&mut e);
    assert!(e.poll_timeout().is_some_and(|t| t > at), "a timeout handled moves the earliest deadline on");
}

#[test]
fn restart_from_persisted_bytes_keeps_acknowledged_stories() {
    let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    let mut storage: Vec<Vec<u8>> = Vec::new();
    let first = drain(&mut e);
    assert!(matches!(&first[0], Output::Persist { kind: PersistKind::Snapshot, .. }), "a start compacts storage");
    if let Output::Persist { bytes, .. } = &first[0] {
        storage.push(bytes.clone());
    }
    for k in 0..5 {
        let id = StoryId::new(format!("s{k}")).unwrap();
        e.handle(
            Millis(1),
            Input::Command {
                id: CommandId(k),
                command: Command::AddStory(huskies_engine::NewStory {
                    id: Some(id),
                    title: "t".into(),
                    stage: Stage::Backlog,
                    ..Default::default()
                }),
            },
        );
        for o in drain(&mut e) {
            if let Output::Persist { kind, bytes, .. } = o {
                if kind == PersistKind::Snapshot {
                    storage.clear();
                }
                storage.push(bytes);
            }
        }
    }
    let mut again = Engine::new(Config::default(), NodeId::new("me").unwrap(), 2, Millis(0));
    again.handle(Millis(0), Input::StorageLoaded { bytes: storage.concat() });
    assert_eq!(again.stories().count(), 5);
    // Corrupt storage is reported, not fatal.
    let mut broken = Engine::new(Config::default(), NodeId::new("me").unwrap(), 3, Millis(0));
    broken.handle(Millis(0), Input::StorageLoaded { bytes: b"not an automerge document".to_vec() });
    assert!(drain(&mut broken).iter().any(|o| matches!(o, Output::Event(Event::StorageCorrupt { .. }))));
    assert!(broken.is_ready());
}

/// Sync messages that crashed or bloated Automerge 0.12 before they were
/// validated; each is refused, only its sender is disconnected, and the
/// node keeps syncing with a good peer.
#[test]
fn hostile_sync_messages_are_refused_before_automerge() {
    let mut e = engine();
    handshake(&mut e, ConnId(1), "good");
    for (i, attack) in huskies_engine::hostile::sync_attacks(256 << 20, 4 << 20).into_iter().enumerate() {
        let (name, msg, expect) = (attack.name, attack.message, attack.refusal);
        let conn = ConnId(10 + i as u64);
        handshake(&mut e, conn, &format!("bad{i}"));
        e.handle(
            Millis(3),
            Input::PeerMessage { conn, bytes: Envelope::Sync { sigs: Default::default(), message: msg }.encode() },
        );
        let outs = drain(&mut e);
        assert!(rejected(&outs, conn), "{name}");
        let reason = outs.iter().find_map(|o| match o {
            Output::Event(Event::PeerRejected { reason, .. }) => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.as_deref().is_some_and(|r| r.contains(expect)), "{name}: {reason:?}");
        // A later timeout would have probed a stored bloom filter.
        e.handle(Millis(4), Input::Timeout);
        drain(&mut e);
    }
    assert_eq!(e.peer_count(), 1, "only the good peer is left");
}

/// A peer that floods is cut off by its budget, others are not.
#[test]
fn a_flooding_peer_runs_out_of_budget() {
    let mut e = engine();
    handshake(&mut e, ConnId(1), "good");
    handshake(&mut e, ConnId(2), "flood");
    let beat = peer("flood").heartbeat(1, 1, 0);
    let bytes = Envelope::Heartbeats(vec![beat]).encode();
    let mut refused_after = None;
    for i in 0..10_000 {
        e.handle(Millis(10), Input::PeerMessage { conn: ConnId(2), bytes: bytes.clone() });
        if rejected(&drain(&mut e), ConnId(2)) {
            refused_after = Some(i);
            break;
        }
    }
    let n = refused_after.expect("the flood is cut off");
    assert!((3_000..=4_100).contains(&n), "the burst allowance is twice the per-second budget: {n}");
    assert_eq!(e.peer_count(), 1);
}

/// Hellos that name another node, carry a foreign CA's certificate or fail
/// the key proof are refused; so are forged heartbeats.
#[test]
fn impersonation_and_forged_heartbeats_are_refused() {
    let mut e = engine();
    handshake(&mut e, ConnId(1), "good");
    // 1. A hello naming "victim" with the attacker's own (valid) cert.
    let theirs = connect(&mut e, ConnId(2));
    let attacker = peer("attacker");
    let victim = NodeId::new("victim").unwrap();
    let fake = Envelope::Hello { node: victim.clone(), nonce: [1; 32], cert: attacker.creds.cert, epoch: 0 }.encode();
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(2), bytes: fake });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(2)) && reason(&outs).contains("certificate"), "{outs:?}");
    // 2. The victim's real cert (public, it is in the document) without
    // its key: the proof fails.
    let _ = theirs;
    let theirs = connect(&mut e, ConnId(3));
    let stolen = PeerHandshake {
        node: victim.clone(),
        creds: Credentials { secret: [42; 32], ..Credentials::dev(&victim) },
        nonce: [2; 32],
    };
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(3), bytes: stolen.hello() });
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(3), bytes: stolen.answer(&theirs).unwrap() });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(3)) && reason(&outs).contains("failed to prove"), "{outs:?}");
    // 3. A cert from another CA.
    let theirs = connect(&mut e, ConnId(4));
    let rogue_node = NodeId::new("rogue").unwrap();
    let rogue =
        PeerHandshake { creds: Credentials::issue(&[9; 32], &rogue_node, [8; 32]), node: rogue_node, nonce: [3; 32] };
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(4), bytes: rogue.hello() });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(4)), "{outs:?}");
    let _ = theirs;
    // 4. "good" forwards a beat of "victim" it signed itself: refused.
    let victim_key_known = peer("victim");
    handshake(&mut e, ConnId(5), "victim");
    let mut forged = peer("good").heartbeat(1, 1, 3);
    forged.node = victim.clone();
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(1), bytes: Envelope::Heartbeats(vec![forged]).encode() });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(1)) && reason(&outs).contains("bad signature"), "{outs:?}");
    // 5. The victim's own signed beat keeps it alive; silence kills it.
    let real: Heartbeat = victim_key_known.heartbeat(1, 1, 3);
    e.handle(Millis(3), Input::PeerMessage { conn: ConnId(5), bytes: Envelope::Heartbeats(vec![real]).encode() });
    drain(&mut e);
    assert!(e.alive_nodes().contains(&victim));
    let late = Millis(3 + Config::default().claim_timeout_ms);
    e.handle(late, Input::Timeout);
    drain(&mut e);
    assert!(!e.alive_nodes().contains(&victim), "only the victim's own beats extend its life");
}

/// Chain beats (liveness/chain.rs): one signature check per chain, then a
/// hash per beat; a relay can neither extend a chain nor change its free
/// slots.
#[test]
fn chain_beats_cost_one_signature_and_cannot_be_forged() {
    let mut e = engine();
    handshake(&mut e, ConnId(1), "good");
    handshake(&mut e, ConnId(5), "victim");
    let victim = NodeId::new("victim").unwrap();
    let beats = peer("victim").chain_heartbeats(1, 0, 3, 1..=40);
    let before = e.beat_checks();
    for (i, hb) in beats[..30].iter().enumerate() {
        let now = Millis(10 + i as u64);
        e.handle(now, Input::PeerMessage { conn: ConnId(5), bytes: Envelope::Heartbeats(vec![hb.clone()]).encode() });
        let outs = drain(&mut e);
        assert!(!rejected(&outs, ConnId(5)), "{outs:?}");
    }
    let after = e.beat_checks();
    assert_eq!(after.beats - before.beats, 30);
    assert_eq!(after.signatures - before.signatures, 1, "one signature for the chain");
    assert_eq!(after.hashes - before.hashes, 30, "then one hash a beat");
    assert!(e.alive_nodes().contains(&victim));
    // "good" replays the newest link as the next beat: it has no preimage.
    let mut replay = beats[29].clone();
    replay.seq += 1;
    e.handle(Millis(50), Input::PeerMessage { conn: ConnId(1), bytes: Envelope::Heartbeats(vec![replay]).encode() });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(1)) && reason(&outs).contains("not of its chain"), "{outs:?}");
    // A relay that changes the free slots: the chain's signature fails.
    handshake(&mut e, ConnId(6), "good");
    let mut busy = beats[30].clone();
    busy.free_slots = 0;
    e.handle(Millis(51), Input::PeerMessage { conn: ConnId(6), bytes: Envelope::Heartbeats(vec![busy]).encode() });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(6)) && reason(&outs).contains("bad signature"), "{outs:?}");
    // The victim's own next beat still counts, at one hash.
    let before = e.beat_checks();
    let next = Envelope::Heartbeats(vec![beats[30].clone()]).encode();
    e.handle(Millis(52), Input::PeerMessage { conn: ConnId(5), bytes: next });
    assert!(!rejected(&drain(&mut e), ConnId(5)));
    let after = e.beat_checks();
    assert_eq!((after.signatures, after.hashes), (before.signatures, before.hashes + 1));
}

/// A node "me" whose document holds `agent`'s own record (its certificate
/// on record, as after a merge): what revoking it needs.
fn knowing_the_record_of(agent: &NodeId) -> Engine {
    let mut a = Engine::new(Config::default(), agent.clone(), 2, Millis(0));
    a.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut a);
    let mut me = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    me.handle(Millis(0), Input::StorageLoaded { bytes: a.save() });
    drain(&mut me);
    me
}

/// A revocation that arrives between a node's hello and its proof: the
/// proof is refused, and the revoked key is never believed again.
#[test]
fn a_revocation_between_hello_and_proof_refuses_the_proof() {
    let agent = NodeId::new("agent-1").unwrap();
    let mut server = knowing_the_record_of(&agent);
    let theirs = connect(&mut server, ConnId(1));
    let p = peer("agent-1");
    server.handle(Millis(2), Input::PeerMessage { conn: ConnId(1), bytes: p.hello() });
    drain(&mut server);
    let revoke = Command::RevokeNode { node: agent.clone() };
    server.handle(Millis(3), Input::Command { id: CommandId(1), command: revoke });
    let outs = drain(&mut server);
    assert!(outs.iter().any(|o| matches!(o, Output::Reply { result: Ok(Reply::Revoked { .. }), .. })), "{outs:?}");
    server.handle(Millis(4), Input::PeerMessage { conn: ConnId(1), bytes: p.answer(&theirs).unwrap() });
    let outs = drain(&mut server);
    assert!(rejected(&outs, ConnId(1)) && reason(&outs).contains("revoked"), "{outs:?}");
    assert!(!server.node_keys().contains_key(&agent), "the revoked key is not believed");
}

/// A revoked node is refused by a node that reads the revocation, and
/// counts as dead at once.
#[test]
fn revoked_nodes_are_refused_everywhere() {
    let mut server = engine();
    handshake(&mut server, ConnId(1), "agent-1");
    let p = peer("agent-1");
    server.handle(
        Millis(3),
        Input::PeerMessage { conn: ConnId(1), bytes: Envelope::Heartbeats(vec![p.heartbeat(1, 1, 2)]).encode() },
    );
    drain(&mut server);
    let agent = NodeId::new("agent-1").unwrap();
    assert!(server.alive_nodes().contains(&agent));
    // Revoking needs a certificate on record: the agent's own record.
    let r = |e: &mut Engine, node: &str| {
        e.handle(
            Millis(4),
            Input::Command { id: CommandId(9), command: Command::RevokeNode { node: NodeId::new(node).unwrap() } },
        );
        drain(e)
    };
    let outs = r(&mut server, "nobody");
    assert!(
        outs.iter().any(|o| matches!(o, Output::Reply { result: Err(CommandError::UnknownNode(_)), .. })),
        "{outs:?}"
    );
    // Bring the agent's record in, as a merge would.
    let mut server = knowing_the_record_of(&agent);
    handshake(&mut server, ConnId(1), "agent-1");
    let outs = r(&mut server, "agent-1");
    assert!(outs.iter().any(|o| matches!(o, Output::Reply { result: Ok(Reply::Revoked { .. }), .. })), "{outs:?}");
    assert!(rejected(&outs, ConnId(1)), "its live connection is cut: {outs:?}");
    assert!(outs.iter().any(|o| matches!(o, Output::Event(Event::NodeRevoked { .. }))));
    // It cannot come back, and a fresh node learns the revocation from the
    // document alone.
    let theirs = connect(&mut server, ConnId(2));
    server.handle(Millis(5), Input::PeerMessage { conn: ConnId(2), bytes: p.hello() });
    let outs = drain(&mut server);
    assert!(rejected(&outs, ConnId(2)) && reason(&outs).contains("revoked"), "{outs:?}");
    let _ = theirs;
    let mut fresh = Engine::new(Config::default(), NodeId::new("fresh").unwrap(), 3, Millis(0));
    fresh.handle(Millis(0), Input::StorageLoaded { bytes: server.save() });
    drain(&mut fresh);
    let theirs = connect(&mut fresh, ConnId(1));
    fresh.handle(Millis(5), Input::PeerMessage { conn: ConnId(1), bytes: p.hello() });
    let outs = drain(&mut fresh);
    assert!(rejected(&outs, ConnId(1)), "{outs:?}");
    let _ = theirs;
    // A node without the CA secret cannot revoke.
    let creds = Credentials::issue(&[5; 32], &NodeId::new("x").unwrap(), [6; 32]);
    let mut plain =
        Engine::new(Config { credentials: Some(creds), ..Config::default() }, NodeId::new("x").unwrap(), 4, Millis(0));
    plain.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut plain);
    let outs = r(&mut plain, "agent-1");
    assert!(
        outs.iter().any(|o| matches!(o, Output::Reply { result: Err(CommandError::NotAuthority), .. })),
        "{outs:?}"
    );
}

/// The server records each join: a node that never connected can be
/// revoked, a fresh node learns enrolled keys from the document, and a node
/// that joins again with a new key after a revocation lives again.
#[test]
fn enrollments_make_keys_known_and_revocable() {
    let mut server = engine();
    let eve = NodeId::new("eve").unwrap();
    let old = Credentials::dev(&eve);
    let cmd = |e: &mut Engine, command| {
        e.handle(Millis(3), Input::Command { id: CommandId(1), command });
        drain(e)
            .into_iter()
            .find_map(|o| match o {
                Output::Reply { result, .. } => Some(result),
                _ => None,
            })
            .unwrap()
    };
    let forged = huskies_engine::Cert { key: old.cert.key, sig: [0; 64] };
    assert!(matches!(
        cmd(&mut server, Command::EnrollNode { node: eve.clone(), cert: forged }),
        Err(CommandError::BadCertificate(_))
    ));
    assert!(cmd(&mut server, Command::EnrollNode { node: eve.clone(), cert: old.cert }).is_ok());
    // A fresh node knows eve's key from the document alone: it credits a
    // beat of eve relayed by someone else.
    let mut fresh = Engine::new(Config::default(), NodeId::new("fresh").unwrap(), 3, Millis(0));
    fresh.handle(Millis(0), Input::StorageLoaded { bytes: server.save() });
    drain(&mut fresh);
    handshake(&mut fresh, ConnId(1), "relay");
    let p = PeerHandshake { node: eve.clone(), creds: old.clone(), nonce: [1; 32] };
    let beat = Envelope::Heartbeats(vec![p.heartbeat(1, 1, 1)]).encode();
    fresh.handle(Millis(4), Input::PeerMessage { conn: ConnId(1), bytes: beat });
    drain(&mut fresh);
    assert!(fresh.alive_nodes().contains(&eve));
    // Eve never connected to the server, yet can be revoked.
    assert!(matches!(cmd(&mut server, Command::RevokeNode { node: eve.clone() }), Ok(Reply::Revoked { .. })));
    let theirs = connect(&mut server, ConnId(2));
    server.handle(Millis(5), Input::PeerMessage { conn: ConnId(2), bytes: p.hello() });
    assert!(rejected(&drain(&mut server), ConnId(2)));
    let _ = theirs;
    // Re-enrolled with a new key, eve is admitted again; the old key stays out.
    let new = Credentials::issue(&old.ca_secret.unwrap(), &eve, [77; 32]);
    assert!(cmd(&mut server, Command::EnrollNode { node: eve.clone(), cert: new.cert }).is_ok());
    let q = PeerHandshake { node: eve.clone(), creds: new, nonce: [2; 32] };
    let theirs = connect(&mut server, ConnId(3));
    server.handle(Millis(6), Input::PeerMessage { conn: ConnId(3), bytes: q.hello() });
    server.handle(Millis(6), Input::PeerMessage { conn: ConnId(3), bytes: q.answer(&theirs).unwrap() });
    let outs = drain(&mut server);
    assert!(outs.iter().any(|o| matches!(o, Output::Event(Event::PeerUp { .. }))), "{outs:?}");
    let theirs = connect(&mut server, ConnId(4));
    server.handle(Millis(6), Input::PeerMessage { conn: ConnId(4), bytes: p.hello() });
    assert!(rejected(&drain(&mut server), ConnId(4)), "the old key is still revoked");
    let _ = theirs;
}

/// Cluster settings count only when this cluster's CA signed them: a node
/// of another CA (or one that edits the value) cannot set them, and a node
/// without the CA secret cannot write them at all.
#[test]
fn cluster_settings_need_the_ca() {
    use huskies_engine::ClusterSettings;
    let settings = ClusterSettings { claim_timeout_ms: 30_000, ..ClusterSettings::of(&Config::default()) };
    let set = |e: &mut Engine| {
        e.handle(
            Millis(1),
            Input::Command { id: CommandId(1), command: Command::SetClusterSettings { settings: settings.clone() } },
        );
        drain(e)
    };
    // Another cluster's CA signs settings into its document...
    let id = NodeId::new("elsewhere").unwrap();
    let creds = Credentials { ca_secret: Some([5; 32]), ..Credentials::issue(&[5; 32], &id, [6; 32]) };
    let mut foreign = Engine::new(Config { credentials: Some(creds), ..Config::default() }, id, 1, Millis(0));
    foreign.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut foreign);
    let outs = set(&mut foreign);
    assert!(outs.iter().any(|o| matches!(o, Output::Reply { result: Ok(Reply::Settings { revision: 1 }), .. })));
    assert_eq!(foreign.cluster_settings().map(|s| s.claim_timeout_ms), Some(30_000));
    // ...which a node of ours ignores.
    let mut ours = Engine::new(Config::default(), NodeId::new("ours").unwrap(), 2, Millis(0));
    ours.handle(Millis(0), Input::StorageLoaded { bytes: foreign.save() });
    drain(&mut ours);
    assert_eq!(ours.cluster_settings(), None, "settings signed by another CA are ignored");
    // A node holding no CA secret cannot write them.
    let id = NodeId::new("x").unwrap();
    let creds = Credentials::issue(&[5; 32], &id, [6; 32]);
    let mut plain = Engine::new(Config { credentials: Some(creds), ..Config::default() }, id, 4, Millis(0));
    plain.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut plain);
    let outs = set(&mut plain);
    assert!(outs.iter().any(|o| matches!(o, Output::Reply { result: Err(CommandError::NotAuthority), .. })));
}

/// What a persist covers is not handed over until the driver confirms it:
/// a driver that writes slowly (on another thread) keeps feeding inputs,
/// and nothing revealing unsaved state can go out by mistake.
#[test]
fn outputs_wait_for_their_persist_to_be_confirmed() {
    let mut e = engine();
    handshake(&mut e, ConnId(7), "peer-a");
    let add = |title: &str| {
        Command::AddStory(huskies_engine::NewStory {
            id: None,
            title: title.into(),
            stage: Stage::Backlog,
            body: String::new(),
            priority: 0,
            created: huskies_engine::UnixMs(0),
        })
    };
    e.handle(Millis(10), Input::Command { id: CommandId(1), command: add("first") });
    let first: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let [Output::Persist { seq: s1, .. }] = first.as_slice() else { panic!("only the persist comes out: {first:?}") };
    let s1 = *s1;
    // A second command while the first write is in flight: its persist
    // comes out at once, its reply waits behind the first's.
    e.handle(Millis(11), Input::Command { id: CommandId(2), command: add("second") });
    let second: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let [Output::Persist { seq: s2, .. }] = second.as_slice() else { panic!("only the persist: {second:?}") };
    let s2 = *s2;
    assert!(s2 > s1);
    assert!(e.awaiting_persist());
    e.handle(Millis(12), Input::Persisted { seq: s1 });
    let released: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert!(released.iter().any(|o| matches!(o, Output::Reply { id: CommandId(1), .. })), "{released:?}");
    assert!(!released.iter().any(|o| matches!(o, Output::Reply { id: CommandId(2), .. })), "reply 2 waits");
    assert!(e.awaiting_persist());
    e.handle(Millis(13), Input::Persisted { seq: s2 });
    let rest: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert!(rest.iter().any(|o| matches!(o, Output::Reply { id: CommandId(2), .. })), "{rest:?}");
    assert!(!e.awaiting_persist());
}

/// Epoch messages from peers: a base without the CA's signature is
/// refused; a peer that keeps saying it is behind gets our (large) base
/// once, not once per message; a second, different base of our own epoch
/// is refused.
#[test]
fn epoch_messages_are_checked_and_never_amplified() {
    let cfg =
        Config { epoch_after_changes: 5, epoch_changes_per_live_story: 0, scan_interval_ms: 100, ..Config::default() };
    let mut e = Engine::new(cfg, NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    let base = |outs: &[Output]| -> Vec<(u64, [u8; 64], Vec<u8>)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send { bytes, .. } => match Envelope::decode(bytes, usize::MAX) {
                    Ok(Envelope::Epoch { epoch, sig, base }) => Some((epoch, sig, base)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    // A peer linked (the server cuts only with a peer to compare with) and
    // left behind by the cut (its hello said epoch 0) is sent our base
    // once; asking again gets nothing more.
    let theirs = connect(&mut e, ConnId(2));
    let p = peer("behind");
    e.handle(Millis(2), Input::PeerMessage { conn: ConnId(2), bytes: p.hello() });
    e.handle(Millis(2), Input::PeerMessage { conn: ConnId(2), bytes: p.answer(&theirs).unwrap() });
    drain(&mut e);
    for k in 0..12 {
        let cmd = Command::AddStory(huskies_engine::NewStory { title: format!("s{k}"), ..Default::default() });
        e.handle(Millis(3), Input::Command { id: CommandId(k), command: cmd });
    }
    e.handle(Millis(1_000), Input::Timeout);
    let sent = base(&drain(&mut e));
    assert_eq!(e.epoch(), 1, "the server cut an epoch");
    assert_eq!(sent.len(), 1, "the base goes to a peer behind");
    assert_eq!(sent[0].0, 1);
    let stale = Envelope::Epoch { epoch: 0, sig: [0; 64], base: vec![1, 2, 3] }.encode();
    let mut resent = 0;
    for _ in 0..50 {
        e.handle(Millis(1_001), Input::PeerMessage { conn: ConnId(2), bytes: stale.clone() });
        resent += base(&drain(&mut e)).len();
    }
    assert_eq!(resent, 0, "the base goes once per conn");
    // A newer epoch signed by someone else.
    handshake(&mut e, ConnId(3), "forger");
    let forged = Envelope::Epoch { epoch: 9, sig: [7; 64], base: vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0] }.encode();
    e.handle(Millis(1_002), Input::PeerMessage { conn: ConnId(3), bytes: forged });
    let outs = drain(&mut e);
    assert!(rejected(&outs, ConnId(3)), "{outs:?}");
    assert_eq!(e.epoch(), 1, "a forged base moves nothing");
    // A second base of our own epoch.
    handshake(&mut e, ConnId(4), "twin");
    let other = Envelope::Epoch { epoch: 1, sig: [7; 64], base: vec![9; 40] }.encode();
    e.handle(Millis(1_003), Input::PeerMessage { conn: ConnId(4), bytes: other });
    assert!(rejected(&drain(&mut e), ConnId(4)));
    assert_eq!(e.stories().count(), 12, "every story is still there");
}

/// The issue-21 flood: changes whose first ancestor never comes wait in
/// Automerge's queue for ever. Past `max_held_bytes` the peer is refused
/// and the queue dropped; the good peer stays and nothing of ours is lost.
#[test]
fn changes_whose_ancestor_never_comes_are_bounded() {
    use automerge::transaction::Transactable;
    let config = Config { max_held_bytes: 1 << 20, ..Config::default() };
    let mut e = Engine::new(config, NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    let add = huskies_engine::NewStory {
        id: Some(StoryId::new("kept").unwrap()),
        title: "kept".into(),
        stage: Stage::Backlog,
        body: String::new(),
        priority: 0,
        created: huskies_engine::UnixMs(0),
    };
    e.handle(Millis(1), Input::Command { id: CommandId(1), command: Command::AddStory(add) });
    drain(&mut e);
    handshake(&mut e, ConnId(1), "good");
    handshake(&mut e, ConnId(2), "mallory");
    // A chain whose first change we never send.
    #[allow(clippy::disallowed_methods)] // a test's own document
    let mut am = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(b"mallory\0\x01".to_vec()));
    // Keys of mallory's own (its ledger lines): well-formed, so the changes
    // pass the door and wait for their ancestor.
    am.put(automerge::ROOT, "ledger/mallory/all", 1).unwrap();
    am.commit();
    let mut sent = 0;
    let mut refused_at = None;
    for i in 0..64 {
        // A new value each time: a put of the value a key holds makes no op.
        am.put(automerge::ROOT, "ledger/mallory/d1", format!("{i:02}{}", "x".repeat(64 << 10))).unwrap();
        am.commit();
        let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
        let msg = huskies_engine::hostile::with_change(&change);
        sent += msg.len();
        let mallory = NodeId::new("mallory").unwrap();
        let m = automerge::sync::Message::decode(&msg).unwrap();
        let bytes = huskies_engine::testkit::signed_sync(&mallory, &huskies_engine::Credentials::dev(&mallory), m);
        e.handle(Millis(10 + i), Input::PeerMessage { conn: ConnId(2), bytes });
        let outs = drain(&mut e);
        if rejected(&outs, ConnId(2)) {
            assert!(reason(&outs).contains("whose dependencies never came"), "{}", reason(&outs));
            refused_at = Some(sent);
            break;
        }
    }
    let at = refused_at.expect("the held changes are bounded");
    assert!(((1 << 20)..(1 << 20) + (128 << 10)).contains(&at), "refused past 1 MiB: {at}");
    assert_eq!(e.peer_count(), 1, "the good peer stays");
    assert!(e.story(&StoryId::new("kept").unwrap()).is_some(), "nothing of ours was lost");
    assert!(e.missing_deps_held() == 0, "the queue was dropped");
}
