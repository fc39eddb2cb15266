//! Every change is bound to its author (engine/src/signing.rs): a change
//! that is unsigned, signed by someone else than the node its actor names,
//! or signed under a certificate the CA never issued is refused with its
//! sender; signatures survive a restart and travel through relays; a
//! revoked node's changes are no longer applied.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash};
use huskies_engine::identity::{self, Cert};
use huskies_engine::testkit::Disk;
use huskies_engine::wire::{ChangeSigs, Envelope, Signer};
use huskies_engine::{Command, CommandId, Config, ConnId, Credentials, Engine, Input, Millis, NodeId, Output};

mod peer;
use peer::{drain, engine, handshake, reason, rejected};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// One change by `actor` on top of `e`'s document, a ledger line of its
/// own (a key it may write): its bytes and hash.
fn change_by(e: &mut Engine, actor: &str, key: &str) -> (Vec<u8>, ChangeHash) {
    let mut am = AutoCommit::load(&e.save()).unwrap();
    am.set_actor(ActorId::from([actor.as_bytes(), &[0, 1]].concat()));
    am.put(automerge::ROOT, format!("ledger/{actor}/{key}"), "x").unwrap();
    am.commit();
    let change = am.get_last_local_change().unwrap();
    (change.raw_bytes().to_vec(), change.hash())
}

fn envelope(chunk: &[u8], certs: Vec<(NodeId, Cert)>, signer: Signer, sig: [u8; 64]) -> Vec<u8> {
    let message = huskies_engine::hostile::with_change(chunk);
    Envelope::Sync { sigs: ChangeSigs { certs, sigs: vec![(signer, sig)] }, message }.encode()
}

#[test]
fn unsigned_and_misattributed_changes_are_refused() {
    let mut e = engine();
    let mallory = Credentials::dev(&id("mallory"));
    let (chunk, hash) = change_by(&mut e, "mallory", "m");
    let (as_server, server_hash) = change_by(&mut e, "me", "forged");
    let foreign_ca = Credentials::issue(&[7; 32], &id("mallory"), mallory.secret);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no signature entries",
            Envelope::Sync { sigs: ChangeSigs::default(), message: huskies_engine::hostile::with_change(&chunk) }
                .encode(),
            "0 change signatures for 1 changes",
        ),
        ("an unsigned change", envelope(&chunk, vec![], Signer::None, [0; 64]), "is unsigned"),
        (
            "mallory signs a change in the name of `me`",
            envelope(
                &as_server,
                vec![(id("mallory"), mallory.cert)],
                Signer::Cert(0),
                identity::sign_change(&mallory.secret, &server_hash.0),
            ),
            "signed with the certificate of mallory",
        ),
        (
            "a signature over another change",
            envelope(
                &chunk,
                vec![(id("mallory"), mallory.cert)],
                Signer::Cert(0),
                identity::sign_change(&mallory.secret, &server_hash.0),
            ),
            "bad signature",
        ),
        (
            "a certificate from another CA",
            envelope(
                &chunk,
                vec![(id("mallory"), foreign_ca.cert)],
                Signer::Cert(0),
                identity::sign_change(&mallory.secret, &hash.0),
            ),
            "certificate not the CA's",
        ),
        (
            "mallory claims the CA signed",
            envelope(&chunk, vec![], Signer::Ca, identity::sign_change(&mallory.secret, &hash.0)),
            "bad CA signature",
        ),
    ];
    let heads = e.heads();
    for (i, (what, bytes, expect)) in cases.into_iter().enumerate() {
        let conn = ConnId(10 + i as u64);
        handshake(&mut e, conn, "mallory");
        e.handle(Millis(5), Input::PeerMessage { conn, bytes });
        let outs = drain(&mut e);
        assert!(rejected(&outs, conn), "{what}: the sender is rejected");
        assert!(reason(&outs).contains(expect), "{what}: {}", reason(&outs));
        assert_eq!(e.heads(), heads, "{what}: nothing applied");
    }
    // The same change, signed by its author: applied, the peer stays.
    let conn = ConnId(99);
    handshake(&mut e, conn, "mallory");
    let bytes = envelope(
        &chunk,
        vec![(id("mallory"), mallory.cert)],
        Signer::Cert(0),
        identity::sign_change(&mallory.secret, &hash.0),
    );
    e.handle(Millis(6), Input::PeerMessage { conn, bytes });
    let outs = drain(&mut e);
    assert!(!rejected(&outs, conn), "{}", reason(&outs));
    assert!(e.heads().contains(&hash), "the signed change is applied");
}

/// An engine and its disk.
struct Node {
    e: Engine,
    disk: Disk,
}

impl Node {
    /// A node; `alice` is a server (signs with the CA key, adds stories),
    /// the others agents.
    fn start(name: &str, seed: u64, bytes: Vec<u8>, now: Millis) -> Node {
        let rendezvous = if name == "alice" { None } else { Some("hub".into()) };
        let config = Config { rendezvous, ..Config::default() };
        let mut n = Node { e: Engine::new(config, id(name), seed, now), disk: Disk::default() };
        n.e.handle(now, Input::StorageLoaded { bytes });
        n.sends();
        n
    }

    /// Carries out the outputs: persists to the disk, returns the sends.
    fn sends(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for o in self.e.drain_sync_persist() {
            match o {
                Output::Persist { kind, bytes, .. } => self.disk.apply(kind, bytes),
                Output::Send { conn: ConnId(500), bytes } => out.push(bytes),
                Output::Event(huskies_engine::Event::PeerRejected { reason, .. }) => {
                    panic!("a peer was rejected: {reason}")
                }
                _ => {}
            }
        }
        out
    }
}

/// Links two nodes directly and lets them talk for `rounds` steps.
fn link(a: &mut Node, b: &mut Node, rounds: u64, start_ms: u64) {
    let conn = ConnId(500);
    a.e.handle(Millis(start_ms), Input::PeerConnected { conn });
    b.e.handle(Millis(start_ms), Input::PeerConnected { conn });
    for t in 0..rounds {
        let now = Millis(start_ms + t * 50);
        let (to_b, to_a) = (a.sends(), b.sends());
        for bytes in to_b {
            b.e.handle(now, Input::PeerMessage { conn, bytes });
        }
        for bytes in to_a {
            a.e.handle(now, Input::PeerMessage { conn, bytes });
        }
        a.e.handle(now, Input::Timeout);
        b.e.handle(now, Input::Timeout);
    }
}

#[test]
fn signatures_survive_a_restart_and_travel_through_relays() {
    // alice writes a story and syncs it to the relay, which persists it.
    let mut alice = Node::start("alice", 1, Vec::new(), Millis(0));
    let add = huskies_engine::NewStory { title: "by alice".into(), ..Default::default() };
    alice.e.handle(Millis(1), Input::Command { id: CommandId(1), command: Command::AddStory(add) });
    let mut relay = Node::start("relay", 2, Vec::new(), Millis(0));
    link(&mut alice, &mut relay, 20, 10);
    assert_eq!(alice.e.heads(), relay.e.heads());
    assert!(relay.e.signed_changes() >= 2, "alice's changes and the relay's own are signed");
    // The relay restarts from its disk, then serves bob, who never met
    // alice: bob checks alice's signatures on what the relay relays.
    let disk = relay.disk.load();
    let mut relay = Node::start("relay", 3, disk, Millis(5_000));
    for h in alice.e.heads() {
        assert!(relay.e.has_change(&h), "the relay kept alice's changes");
    }
    let mut bob = Node::start("bob", 4, Vec::new(), Millis(5_000));
    link(&mut relay, &mut bob, 20, 5_000);
    assert_eq!(relay.e.heads(), bob.e.heads(), "bob accepted everything the relay relayed");
    assert_eq!(bob.e.stories().count(), 1, "alice's story reached bob");
}

#[test]
fn a_revoked_nodes_changes_are_no_longer_applied() {
    let mut e = engine();
    let mallory = Credentials::dev(&id("mallory"));
    let signed = |chunk: &[u8], hash: ChangeHash| {
        envelope(
            chunk,
            vec![(id("mallory"), mallory.cert)],
            Signer::Cert(0),
            identity::sign_change(&mallory.secret, &hash.0),
        )
    };
    handshake(&mut e, ConnId(1), "bob");
    handshake(&mut e, ConnId(2), "mallory");
    let (first, first_hash) = change_by(&mut e, "mallory", "before");
    e.handle(Millis(5), Input::PeerMessage { conn: ConnId(2), bytes: signed(&first, first_hash) });
    drain(&mut e);
    assert!(e.heads().contains(&first_hash), "before its revocation, mallory's change is applied");
    e.handle(Millis(6), Input::Command { id: CommandId(1), command: Command::RevokeNode { node: id("mallory") } });
    drain(&mut e);
    // bob relays a later change of mallory's: not applied, and bob (who
    // may hold it from before the revocation) keeps its link.
    let (later, later_hash) = change_by(&mut e, "mallory", "after");
    e.handle(Millis(7), Input::PeerMessage { conn: ConnId(1), bytes: signed(&later, later_hash) });
    let outs = drain(&mut e);
    assert!(!rejected(&outs, ConnId(1)), "{}", reason(&outs));
    assert!(!e.heads().contains(&later_hash) && !e.has_change(&later_hash), "the revoked node's change is dropped");
}

/// Each author but the server may add only so many bytes of changes a
/// minute: past the burst its own link is refused, and a relay that
/// forwards its flood keeps its link while the flood waits.
#[test]
fn an_authors_flood_is_held_to_its_quota() {
    let config = Config { author_bytes_burst: 64 << 10, author_bytes_per_min: 60 << 10, ..Config::default() };
    let mut e = Engine::new(config, id("me"), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    let mallory = Credentials::dev(&id("mallory"));
    handshake(&mut e, ConnId(1), "bob");
    handshake(&mut e, ConnId(2), "mallory");
    let mut am = AutoCommit::load(&e.save()).unwrap();
    am.set_actor(ActorId::from(b"mallory\0\x01".to_vec()));
    let send = |e: &mut Engine, am: &mut AutoCommit, conn: ConnId, t: u64| {
        am.put(automerge::ROOT, format!("ledger/mallory/flood-{t}"), "x".repeat(8 << 10)).unwrap();
        am.commit();
        let change = am.get_last_local_change().unwrap();
        let bytes = envelope(
            change.raw_bytes(),
            vec![(id("mallory"), mallory.cert)],
            Signer::Cert(0),
            identity::sign_change(&mallory.secret, &change.hash().0),
        );
        e.handle(Millis(t), Input::PeerMessage { conn, bytes });
        (drain(e), change.hash())
    };
    // Through bob: applied while the quota lasts, then held back; bob stays.
    let mut relayed = 0;
    for t in 10..30 {
        let (outs, hash) = send(&mut e, &mut am, ConnId(1), t);
        assert!(!rejected(&outs, ConnId(1)), "{}", reason(&outs));
        if !e.has_change(&hash) {
            break;
        }
        relayed += 1;
    }
    assert!((4..=8).contains(&relayed), "about 64 KiB of 8 KiB changes pass: {relayed}");
    // From mallory itself: refused with its link.
    let (outs, _) = send(&mut e, &mut am, ConnId(2), 31);
    assert!(rejected(&outs, ConnId(2)));
    assert!(reason(&outs).contains("mallory is over its quota"), "{}", reason(&outs));
    // A minute later the quota has refilled: bob's next offer of the
    // held-back change goes in.
    let held = am.get_changes(&[]).into_iter().find(|c| !e.has_change(&c.hash())).unwrap();
    let bytes = envelope(
        held.raw_bytes(),
        vec![(id("mallory"), mallory.cert)],
        Signer::Cert(0),
        identity::sign_change(&mallory.secret, &held.hash().0),
    );
    e.handle(Millis(61_000), Input::PeerMessage { conn: ConnId(1), bytes });
    drain(&mut e);
    assert!(e.has_change(&held.hash()), "applied once the quota refilled");
}
