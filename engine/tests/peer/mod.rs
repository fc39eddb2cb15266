//! A fake peer of one engine over the wire protocol, for the tests that
//! speak to an engine directly.
#![allow(dead_code)] // each test binary uses its own part

use huskies_engine::Credentials;
use huskies_engine::identity::PeerHandshake;
use huskies_engine::{Config, ConnId, Engine, Event, Input, Millis, NodeId, Output};

pub fn engine() -> Engine {
    let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    e
}

pub fn drain(e: &mut Engine) -> Vec<Output> {
    e.drain_sync_persist()
}

pub fn peer(name: &str) -> PeerHandshake {
    let node = NodeId::new(name).unwrap();
    PeerHandshake { creds: Credentials::dev(&node), node, nonce: [9; 32] }
}

/// Connects `conn` and returns the engine's hello to it.
pub fn connect(e: &mut Engine, conn: ConnId) -> Vec<u8> {
    e.handle(Millis(1), Input::PeerConnected { conn });
    drain(e)
        .into_iter()
        .find_map(|o| match o {
            Output::Send { conn: c, bytes } if c == conn => Some(bytes),
            _ => None,
        })
        .expect("the engine greets a new peer")
}

/// Connects `conn` and completes the handshake as the fake peer `name`.
pub fn handshake(e: &mut Engine, conn: ConnId, name: &str) {
    let theirs = connect(e, conn);
    let p = peer(name);
    e.handle(Millis(2), Input::PeerMessage { conn, bytes: p.hello() });
    e.handle(Millis(2), Input::PeerMessage { conn, bytes: p.answer(&theirs).unwrap() });
    let outs = drain(e);
    assert!(
        outs.iter().any(|o| matches!(o, Output::Event(Event::PeerUp { conn: c, .. }) if *c == conn)),
        "handshake of {name} completes: {outs:?}"
    );
}

pub fn rejected(outs: &[Output], conn: ConnId) -> bool {
    outs.iter().any(|o| matches!(o, Output::HangUp { conn: c } if *c == conn))
        && outs.iter().any(|o| matches!(o, Output::Event(Event::PeerRejected { conn: c, .. }) if *c == conn))
}

pub fn reason(outs: &[Output]) -> String {
    outs.iter()
        .find_map(|o| match o {
            Output::Event(Event::PeerRejected { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
