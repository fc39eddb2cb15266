//! Fixtures shared by the benches: documents of N stories, claim-shaped
//! changes, and a fake peer that speaks the engine's wire protocol, so that
//! the engine and raw Automerge can be driven through the same sync path.
//!
//! Everything here runs outside the timed closures.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc};
use huskies_engine::Credentials;
use huskies_engine::identity::PeerHandshake;
use huskies_engine::wire::Envelope;
use huskies_engine::{Config, ConnId, Engine, Input, Millis, NodeId, Output, Stage, StoryState, Token};

/// The bench engine's config: a hub (every link at full pace) with sync
/// pacing off, so the benches measure CPU, not waiting.
pub fn config(capacity: u32) -> Config {
    Config { capacity, sync_interval_ms: 0, mesh_sync_interval_ms: 0, claim_settle_ms: 0, ..Config::default() }
}

pub fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid bench node id")
}

/// Drains an engine's outputs.
pub fn drain(e: &mut Engine) -> Vec<Output> {
    e.drain_sync_persist()
}

/// The bytes of a document holding `stories` stories in `current`, built in
/// one change (fast even for 100,000) on top of the shared genesis.
pub fn doc_with_stories(stories: usize) -> Vec<u8> {
    let mut e = Engine::new(config(0), node("fixture-origin"), 1, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    let mut doc = AutoCommit::load(&e.save()).expect("engine saves load");
    // A `huskies-*` actor stands for the server's writes (an epoch's base
    // is one): stories another node made are refused (schema.rs).
    doc.set_actor(ActorId::from(b"huskies-fixture".as_slice()));
    let (_, root) = doc.get(automerge::ROOT, "stories").expect("read").expect("genesis has stories");
    let state = StoryState::new(Stage::Current).encode();
    for i in 0..stories {
        let obj = doc.put_object(&root, story_id(i), ObjType::Map).expect("put");
        doc.put(&obj, "title", format!("story {i}")).expect("put");
        doc.put(&obj, "state", state.as_str()).expect("put");
    }
    doc.commit_with(CommitOptions::default().with_time(0));
    doc.save()
}

pub fn story_id(i: usize) -> String {
    format!("s{i:06}")
}

/// An engine loaded from `bytes`.
pub fn engine_from(bytes: &[u8], name: &str, capacity: u32) -> Engine {
    let mut e = Engine::new(config(capacity), node(name), 7, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: bytes.to_vec() });
    drain(&mut e);
    e
}

/// A raw Automerge replica loaded from `bytes`, writing as node `actor`
/// (its actor is the name and a zero byte, as an engine's, so an engine
/// believes the changes it signs: see [`sync_with_engine`]).
pub fn raw_from(bytes: &[u8], actor: &str) -> AutoCommit {
    let mut d = AutoCommit::load(bytes).expect("fixture loads");
    d.set_actor(ActorId::from([actor.as_bytes(), &[0]].concat()));
    d
}

/// Writes `n` claims on stories `from..from + n` into `doc`, one change
/// each, exactly as the engine writes them (the state value as JSON, the
/// commit labelled with the story).
pub fn write_claims(doc: &mut AutoCommit, holder: &str, from: usize, n: usize) {
    let (_, root) = doc.get(automerge::ROOT, "stories").expect("read").expect("stories");
    for i in from..from + n {
        let (_, obj) = doc.get(&root, story_id(i)).expect("read").expect("story exists");
        let mut s = StoryState::new(Stage::Current);
        s.token = Token(1);
        s.holder = Some(node(holder));
        doc.put(&obj, "state", s.encode()).expect("put");
        doc.commit_with(CommitOptions::default().with_time(0).with_message(format!("s:{}", story_id(i))));
    }
}

/// The engine's conn to the fake peer.
pub const PEER: ConnId = ConnId(1);

/// Connects a fake peer called `name` to the engine (hello exchanged).
pub fn connect(e: &mut Engine, name: &str) -> ConnId {
    connect_as(e, name, PEER)
}

pub fn connect_as(e: &mut Engine, name: &str, conn: ConnId) -> ConnId {
    e.handle(Millis(0), Input::PeerConnected { conn });
    let theirs = drain(e)
        .into_iter()
        .find_map(|o| match o {
            Output::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .expect("the engine greets a new peer");
    let peer = PeerHandshake { node: node(name), creds: Credentials::dev(&node(name)), nonce: [7; 32] };
    e.handle(Millis(0), Input::PeerMessage { conn, bytes: peer.hello() });
    e.handle(Millis(0), Input::PeerMessage { conn, bytes: peer.answer(&theirs).expect("a hello") });
    drain(e);
    conn
}

/// What a sync exchange cost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exchange {
    pub round_trips: u32,
    pub bytes_to_engine: usize,
    pub bytes_from_engine: usize,
}

/// Syncs a raw peer with the engine over the wire protocol until neither
/// has anything to say.
pub fn sync_with_engine(peer: &mut AutoCommit, state: &mut sync::State, e: &mut Engine, conn: ConnId) -> Exchange {
    let mut x = Exchange::default();
    loop {
        // Only peer messages go in: no timeouts, so no claims or beats
        // interleave with the exchange being measured.
        let msg = peer.sync().generate_sync_message(state);
        let sent = msg.is_some();
        if let Some(m) = msg {
            // Signed as an honest peer signs: by the node its actor names.
            let actor = peer.get_actor().to_bytes().to_vec();
            let name = node(std::str::from_utf8(actor.split(|b| *b == 0).next().unwrap_or(&[])).expect("utf-8"));
            let bytes = huskies_engine::testkit::signed_sync(&name, &Credentials::dev(&name), m);
            x.bytes_to_engine += bytes.len();
            e.handle(Millis(0), Input::PeerMessage { conn, bytes });
            x.round_trips += 1;
        }
        let mut replied = false;
        for out in drain(e) {
            if let Output::Send { conn: c, bytes } = out
                && c == conn
                && let Ok(Envelope::Sync { message: raw, .. }) = Envelope::decode(&bytes, usize::MAX)
            {
                x.bytes_from_engine += bytes.len();
                let m = sync::Message::decode(&raw).expect("engine sends valid sync messages");
                peer.sync().receive_sync_message(state, m).expect("engine changes apply");
                replied = true;
            }
        }
        if !sent && !replied {
            return x;
        }
    }
}

/// The same exchange between two raw replicas.
pub fn sync_raw(a: &mut AutoCommit, sa: &mut sync::State, b: &mut AutoCommit, sb: &mut sync::State) -> Exchange {
    let mut x = Exchange::default();
    loop {
        let mut progressed = false;
        if let Some(m) = a.sync().generate_sync_message(sa) {
            let bytes = m.encode();
            x.bytes_to_engine += bytes.len();
            b.sync().receive_sync_message(sb, sync::Message::decode(&bytes).expect("valid")).expect("applies");
            x.round_trips += 1;
            progressed = true;
        }
        if let Some(m) = b.sync().generate_sync_message(sb) {
            let bytes = m.encode();
            x.bytes_from_engine += bytes.len();
            a.sync().receive_sync_message(sa, sync::Message::decode(&bytes).expect("valid")).expect("applies");
            progressed = true;
        }
        if !progressed {
            return x;
        }
    }
}

/// A server and one agent engine wired to each other in process: every
/// `Send` of one is the other's `PeerMessage`, persists confirmed at once.
pub struct Pair {
    pub server: Engine,
    pub agent: Engine,
    pub now_ms: u64,
    server_conn: ConnId,
    agent_conn: ConnId,
}

impl Pair {
    /// Both load `bytes`; the server cuts epochs after `epoch_after_changes`
    /// (0: never), the agent dials it.
    pub fn new(bytes: &[u8], epoch_after_changes: u64) -> Pair {
        let server_cfg = Config { epoch_after_changes, ..config(0) };
        let mut server = Engine::new(server_cfg, node("server"), 3, Millis(0));
        server.handle(Millis(0), Input::StorageLoaded { bytes: bytes.to_vec() });
        drain(&mut server);
        let agent_cfg = Config { rendezvous: Some("bench://server".into()), ..config(0) };
        let mut agent = Engine::new(agent_cfg, node("agent"), 4, Millis(0));
        agent.handle(Millis(0), Input::StorageLoaded { bytes: bytes.to_vec() });
        let agent_conn = drain(&mut agent)
            .into_iter()
            .find_map(|o| match o {
                Output::Dial { conn, .. } => Some(conn),
                _ => None,
            })
            .expect("the agent dials the server");
        let server_conn = ConnId(1);
        let mut pair = Pair { server, agent, now_ms: 0, server_conn, agent_conn };
        pair.server.handle(Millis(0), Input::PeerConnected { conn: server_conn });
        pair.agent.handle(Millis(0), Input::PeerConnected { conn: agent_conn });
        pair.pump(Vec::new());
        pair
    }

    /// Carries messages both ways until neither side sends; `first` are
    /// outputs of the server not yet carried.
    pub fn pump(&mut self, first: Vec<Output>) {
        let now = Millis(self.now_ms);
        let mut to_agent: Vec<Vec<u8>> = Vec::new();
        let mut to_server: Vec<Vec<u8>> = Vec::new();
        let collect = |outs: Vec<Output>, into: &mut Vec<Vec<u8>>| {
            for o in outs {
                if let Output::Send { bytes, .. } = o {
                    into.push(bytes);
                }
            }
        };
        collect(first, &mut to_agent);
        collect(drain(&mut self.server), &mut to_agent);
        collect(drain(&mut self.agent), &mut to_server);
        while !to_agent.is_empty() || !to_server.is_empty() {
            for bytes in std::mem::take(&mut to_agent) {
                self.agent.handle(now, Input::PeerMessage { conn: self.agent_conn, bytes });
            }
            collect(drain(&mut self.agent), &mut to_server);
            for bytes in std::mem::take(&mut to_server) {
                self.server.handle(now, Input::PeerMessage { conn: self.server_conn, bytes });
            }
            collect(drain(&mut self.server), &mut to_agent);
        }
    }

    /// One change at the server (a priority edit of story `i`), synced to
    /// the agent.
    pub fn change(&mut self, i: usize, priority: i64) {
        let id = huskies_engine::StoryId::new(story_id(i)).expect("valid");
        let command = huskies_engine::Command::EditStory { id, title: None, body: None, priority: Some(priority) };
        self.server.handle(Millis(self.now_ms), Input::Command { id: huskies_engine::CommandId(1), command });
        self.pump(Vec::new());
    }

    /// Lets `ms` pass: both scan (the server may cut an epoch), then sync.
    pub fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        self.server.handle(Millis(self.now_ms), Input::Timeout);
        self.agent.handle(Millis(self.now_ms), Input::Timeout);
        self.pump(Vec::new());
    }
}

/// A server's stored document of `stories` stories of which all but `live`
/// are archived, as it is after the server's first cut moved the archived
/// ones to cold storage (what a pipeline that kept finishing work holds).
pub fn doc_with_archived(stories: usize, live: usize) -> Vec<u8> {
    let mut doc = raw_from(&doc_with_stories(stories), "fixture-archiver");
    let (_, root) = doc.get(automerge::ROOT, "stories").expect("read").expect("stories");
    let mut archived = StoryState::new(Stage::Archived);
    archived.token = Token(1);
    for i in live..stories {
        let (_, obj) = doc.get(&root, story_id(i)).expect("read").expect("story");
        doc.put(&obj, "state", archived.encode()).expect("put");
    }
    doc.commit_with(CommitOptions::default().with_time(0));
    let cfg = Config { epoch_after_changes: 1, ..config(0) };
    let mut server = Engine::new(cfg, node("server"), 5, Millis(0));
    server.handle(Millis(0), Input::StorageLoaded { bytes: doc.save() });
    drain(&mut server);
    server.handle(Millis(10_000), Input::Timeout);
    drain(&mut server);
    assert_eq!(server.epoch(), 1, "the fixture server cut its first epoch");
    assert_eq!(server.stories().count(), live);
    server.save()
}
