//! Fuzzing on stable Rust: a seeded mutator (bit flips, interesting bytes,
//! inserts, deletes, duplicated ranges, splices across the corpus,
//! truncation) over corpora of real bytes, against four targets: the
//! envelope decoder, an engine fed sync messages after a valid handshake,
//! storage load, and id validation. A panic escaping a target fails.
//!
//! `cargo test` runs a short smoke pass. The long run:
//! `HUSKIES_FUZZ_EXECS=1000000 cargo test --test fuzz -- --nocapture`
//! (`HUSKIES_FUZZ_SEED` picks another seed).

use huskies_engine::identity::PeerHandshake;
use huskies_engine::wire::Envelope;
use huskies_engine::{
    Command, CommandId, Config, ConnId, Credentials, Engine, Input, Millis, NodeId, Output, Stage, StoryId,
};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

fn execs() -> u64 {
    std::env::var("HUSKIES_FUZZ_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

fn seed() -> u64 {
    std::env::var("HUSKIES_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut b = corpus[self.below(corpus.len())].clone();
        for _ in 0..1 + self.below(4) {
            let len = b.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    b[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    b[i] = [0, 1, 0x7f, 0x80, 0xff, 0x42, 0x43, 7][self.below(8)];
                }
                2 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                    b.splice(i..i, bytes);
                }
                3 if len > 0 => {
                    let i = self.below(len);
                    let n = 1 + self.below((len - i).min(64));
                    b.drain(i..i + n);
                }
                4 if len > 0 => {
                    let i = self.below(len);
                    let n = 1 + self.below((len - i).min(64));
                    let part = b[i..i + n].to_vec();
                    let at = self.below(len + 1);
                    b.splice(at..at, part);
                }
                5 => {
                    let other = &corpus[self.below(corpus.len())];
                    if !other.is_empty() {
                        let i = self.below(other.len());
                        let at = self.below(len + 1);
                        b.truncate(at);
                        b.extend_from_slice(&other[i..]);
                    }
                }
                6 if len > 0 => b.truncate(self.below(len)),
                _ if len > 0 => {
                    // A LEB128 varint of a huge value at a random place.
                    let i = self.below(len);
                    b.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
                }
                _ => b.push(self.rng.next_u64() as u8),
            }
        }
        b
    }
}

fn drain(e: &mut Engine) -> Vec<Output> {
    e.drain_sync_persist()
}

fn engine(name: &str, seed: u64) -> Engine {
    let mut e = Engine::new(Config::default(), NodeId::new(name).unwrap(), seed, Millis(0));
    e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
    drain(&mut e);
    e
}

/// Connects a fake peer on `conn` and completes the handshake.
fn handshake(e: &mut Engine, conn: ConnId, now: Millis) {
    e.handle(now, Input::PeerConnected { conn });
    let theirs = drain(e)
        .into_iter()
        .find_map(|o| match o {
            Output::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .unwrap();
    let node = NodeId::new("fuzzer").unwrap();
    let p = PeerHandshake { creds: Credentials::dev(&node), node, nonce: [5; 32] };
    e.handle(now, Input::PeerMessage { conn, bytes: p.hello() });
    e.handle(now, Input::PeerMessage { conn, bytes: p.answer(&theirs).unwrap() });
    drain(e);
}

/// Real sync messages, envelopes and saved documents from two engines
/// that sync a few stories.
/// Sync messages, envelopes, saved documents.
type Corpora = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn corpus() -> Corpora {
    let (mut a, mut b) = (engine("alpha", 1), engine("beta", 2));
    for i in 0..12 {
        let id = StoryId::new(format!("s{i}")).unwrap();
        let command = Command::AddStory(huskies_engine::NewStory {
            id: Some(id),
            title: format!("story {i}"),
            stage: Stage::Current,
            ..Default::default()
        });
        a.handle(Millis(1), Input::Command { id: CommandId(i), command });
        drain(&mut a);
    }
    let (ca, cb) = (ConnId(1), ConnId(1));
    a.handle(Millis(1), Input::PeerConnected { conn: ca });
    b.handle(Millis(1), Input::PeerConnected { conn: cb });
    let (mut syncs, mut envelopes) = (Vec::new(), Vec::new());
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    for t in 0..200u64 {
        for o in drain(&mut a) {
            if let Output::Send { bytes, .. } = o {
                to_b.push(bytes);
            }
        }
        for o in drain(&mut b) {
            if let Output::Send { bytes, .. } = o {
                to_a.push(bytes);
            }
        }
        for bytes in to_b.drain(..) {
            if let Ok(Envelope::Sync { message: raw, .. }) = Envelope::decode(&bytes, 1 << 24) {
                syncs.push(raw);
            }
            envelopes.push(bytes.clone());
            b.handle(Millis(t * 10), Input::PeerMessage { conn: cb, bytes });
        }
        for bytes in to_a.drain(..) {
            envelopes.push(bytes.clone());
            a.handle(Millis(t * 10), Input::PeerMessage { conn: ca, bytes });
        }
        a.handle(Millis(t * 10), Input::Timeout);
        b.handle(Millis(t * 10), Input::Timeout);
    }
    assert_eq!(a.heads(), b.heads(), "the corpus run converged");
    // The known attacks seed the corpus too (small sizes: mutations of a
    // big bomb would only cost time).
    syncs.extend(huskies_engine::hostile::sync_attacks(1 << 20, 256).into_iter().map(|a| a.message));
    assert!(syncs.len() >= 4, "captured {} sync messages", syncs.len());
    (syncs, envelopes, vec![a.save(), b.save()])
}

fn report(target: &str, n: u64, start: std::time::Instant) {
    let secs = start.elapsed().as_secs_f64();
    eprintln!("fuzz {target}: {n} execs in {secs:.1} s ({:.0}/s)", n as f64 / secs.max(1e-9));
}

#[allow(clippy::disallowed_methods)] // wall time only for the report
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[test]
fn fuzz_envelope_decoder() {
    let (_, envelopes, _) = corpus();
    let mut m = Mutator { rng: ChaCha8Rng::seed_from_u64(seed()) };
    let start = now();
    for _ in 0..execs() * 10 {
        let bytes = m.mutate(&envelopes);
        if let Ok(env) = Envelope::decode(&bytes, 1 << 24) {
            // What decodes re-encodes to the same bytes.
            assert_eq!(env.encode(), bytes);
        }
    }
    report("envelope", execs() * 10, start);
}

#[test]
fn fuzz_engine_sync_messages() {
    let (syncs, _, _) = corpus();
    let mut m = Mutator { rng: ChaCha8Rng::seed_from_u64(seed()) };
    let mut e = engine("target", 3);
    let mut conn = ConnId(1);
    handshake(&mut e, conn, Millis(1));
    let start = now();
    for i in 0..execs() {
        let t = Millis(10 + i * 10);
        // Signed by whoever each mutated change names, so the mutations
        // reach Automerge rather than stopping at the signature check.
        let raw = m.mutate(&syncs);
        let bytes = match automerge::sync::Message::decode(&raw) {
            Ok(msg) => huskies_engine::testkit::dev_signed_sync(msg),
            Err(_) => Envelope::Sync { sigs: Default::default(), message: raw }.encode(),
        };
        e.handle(t, Input::PeerMessage { conn, bytes });
        e.handle(t, Input::Timeout);
        let outs = drain(&mut e);
        if outs.iter().any(|o| matches!(o, Output::HangUp { conn: c } if *c == conn)) {
            conn = ConnId(conn.0 + 1);
            handshake(&mut e, conn, t);
        }
    }
    assert!(e.index_drift().is_empty(), "the index matches the document");
    report("engine sync", execs(), start);
}

#[test]
fn fuzz_storage_load() {
    let (_, _, saves) = corpus();
    let mut m = Mutator { rng: ChaCha8Rng::seed_from_u64(seed()) };
    let start = now();
    let n = (execs() / 4).max(50);
    for i in 0..n {
        let bytes = m.mutate(&saves);
        let mut e = Engine::new(Config::default(), NodeId::new("load").unwrap(), i, Millis(0));
        e.handle(Millis(0), Input::StorageLoaded { bytes });
        drain(&mut e);
        assert!(e.is_ready(), "a node starts whatever its storage holds");
    }
    report("storage", n, start);
}

#[test]
fn fuzz_ids() {
    let corpus: Vec<Vec<u8>> = ["agent-1", "s00043", "fix-the-login-form-1a2b", "a", &"x".repeat(64)]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let mut m = Mutator { rng: ChaCha8Rng::seed_from_u64(seed()) };
    let start = now();
    for _ in 0..execs() * 10 {
        let bytes = m.mutate(&corpus);
        let s = String::from_utf8_lossy(&bytes);
        for ok in [NodeId::new(s.as_ref()).is_ok(), StoryId::new(s.as_ref()).is_ok()] {
            // What passes is safe in a branch name, a path and a doc key.
            if ok {
                assert!(!s.is_empty() && s.len() <= 64);
                assert!(s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'));
                assert!(!s.starts_with('-') && !s.starts_with('_') && !s.contains(".."));
            }
        }
    }
    report("ids", execs() * 10, start);
}
