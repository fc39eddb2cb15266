//! The engine contract seen from a driver: bad peers are disconnected,
//! bad commands get clear errors, persistence precedes what it covers.

use huskies_engine::wire::Envelope;
use huskies_engine::{
    Command, CommandError, CommandId, Config, ConnId, Engine, Event, Input, Millis, NodeId, Output, PersistKind, Reply,
    Stage, StoryId,
};

fn engine() -> Engine {
    let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    e
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn rejected(outs: &[Output], conn: ConnId) -> bool {
    outs.iter().any(|o| matches!(o, Output::HangUp { conn: c } if *c == conn))
        && outs.iter().any(|o| matches!(o, Output::Event(Event::PeerRejected { conn: c, .. }) if *c == conn))
}

#[test]
fn malformed_peer_bytes_disconnect_only_that_peer() {
    let mut e = engine();
    let (good, bad) = (ConnId(1), ConnId(2));
    for conn in [good, bad] {
        e.handle(Millis(1), Input::PeerConnected { conn });
    }
    let hello = |n: &str| Envelope::Hello { node: NodeId::new(n).unwrap() }.encode();
    e.handle(Millis(2), Input::PeerMessage { conn: good, bytes: hello("good") });
    drain(&mut e);
    // Sync before hello, garbage, a corrupt sync message, a second hello.
    e.handle(Millis(3), Input::PeerMessage { conn: bad, bytes: Envelope::Sync(vec![1, 2]).encode() });
    assert!(rejected(&drain(&mut e), bad));
    for (i, bytes) in
        [vec![0xff; 10], Envelope::Sync(vec![0x42, 0, 1, 2, 3]).encode(), hello("good")].into_iter().enumerate()
    {
        let conn = ConnId(10 + i as u64);
        e.handle(Millis(4), Input::PeerConnected { conn });
        if i > 0 {
            e.handle(Millis(4), Input::PeerMessage { conn, bytes: hello(&format!("p{i}")) });
        }
        drain(&mut e);
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
    let outs =
        cmd(&mut e, Command::AddStory { id: Some(id.clone()), title: "Fix login".into(), stage: Stage::Backlog });
    let persist = outs.iter().position(|o| matches!(o, Output::Persist { kind: PersistKind::Append, .. }));
    let rep = outs.iter().position(|o| matches!(o, Output::Reply { .. }));
    assert!(persist.unwrap() < rep.unwrap(), "persist before acknowledging");
    assert_eq!(reply(&outs), Ok(Reply::Added { id: id.clone() }));

    let outs = cmd(&mut e, Command::AddStory { id: Some(id.clone()), title: "again".into(), stage: Stage::Backlog });
    assert_eq!(reply(&outs), Err(CommandError::StoryExists(id.clone())));
    let outs = cmd(&mut e, Command::AddStory { id: None, title: "  ".into(), stage: Stage::Backlog });
    assert_eq!(reply(&outs), Err(CommandError::EmptyTitle));
    let outs = cmd(&mut e, Command::MoveStory { id: StoryId::new("nope").unwrap(), stage: Stage::Qa });
    assert!(reply(&outs).unwrap_err().to_string().contains("no story nope"));
    let outs = cmd(&mut e, Command::MoveStory { id: id.clone(), stage: Stage::Backlog });
    assert!(matches!(reply(&outs), Err(CommandError::IllegalMove { .. })));
    let outs =
        cmd(&mut e, Command::AddStory { id: None, title: "Add OAuth: Google & GitHub!".into(), stage: Stage::Qa });
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
                command: Command::AddStory { id: Some(id), title: "t".into(), stage: Stage::Backlog },
            },
        );
        for o in drain(&mut e) {
            if let Output::Persist { kind, bytes } = o {
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
