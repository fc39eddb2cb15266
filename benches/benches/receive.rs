//! What one sync message costs the side that receives it, as the epoch's
//! history grows: raw Automerge, one writer and one reader in step, then
//! one new change at a time. A message that carries one change should cost
//! the same whatever the history; what grows with it is Automerge walking
//! that history (`receive_sync_message` -> `filter_changes` ->
//! `remove_ancestors`, a depth-first walk over every ancestor of the
//! peer's heads).
//!
//! Beside it, in the same run, a second reader receives the same changes
//! with `huskies_engine::receive_sync_message`, which answers that step
//! from Automerge's cached clocks (`engine/src/peers/receive.rs`).
//!
//! `cargo bench -p huskies-benches --bench receive` (about a minute);
//! `HUSKIES_BENCH_HISTORY=20000 HUSKIES_BENCH_SAMPLES=3000` measures one
//! size, long enough for a profiler (`perf record` on
//! `target/release/deps/receive-*`, then `perf report --no-children`).

// A bench measures wall time; the engine's own time stays injected.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ReadDoc};
use huskies_benches::*;
use huskies_engine::{Stage, StoryState, Token};

/// Live stories the changes write to.
const LIVE: usize = 500;
/// Single-change exchanges timed per size (`HUSKIES_BENCH_SAMPLES`: more,
/// so that a profile is mostly them and not the fixture).
fn samples() -> usize {
    std::env::var("HUSKIES_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Point {
    history: usize,
    generate: Duration,
    receive: Duration,
    /// The same message received by `huskies_engine::receive_sync_message`.
    receive_ours: Duration,
    /// The rest of the exchange: the reader's answer and the writer taking
    /// it.
    rest: Duration,
    bytes: usize,
}

/// `history` changes by one writer, a reader in step, then `samples()` more
/// single changes, each synced by itself.
fn point(history: usize) -> Point {
    let mut a = raw_from(&doc_with_stories(LIVE), "writer");
    let (_, root) = a.get(automerge::ROOT, "stories").expect("read").expect("stories");
    let objs: Vec<_> = (0..LIVE).map(|i| a.get(&root, story_id(i)).expect("read").expect("story").1).collect();
    let mut token = 1u64;
    let mut put = |a: &mut AutoCommit, k: usize| {
        let mut s = StoryState::new(Stage::Current);
        token += 1;
        s.token = Token(token);
        a.put(&objs[k % LIVE], "state", s.encode()).expect("put");
        a.commit_with(CommitOptions::default().with_time(0));
    };
    for k in 0..history {
        put(&mut a, k);
    }
    let mut b = raw_from(&a.save(), "reader");
    let mut c = raw_from(&a.save(), "ours");
    let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
    let (mut sa_c, mut sc) = (sync::State::new(), sync::State::new());
    sync_raw(&mut a, &mut sa, &mut b, &mut sb);
    sync_ours(&mut a, &mut sa_c, &mut c, &mut sc);
    let (mut generate, mut receive, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    let mut receive_ours = Vec::new();
    let mut bytes = 0;
    let samples = samples();
    for k in 0..samples {
        put(&mut a, k);
        let t = Instant::now();
        let m = a.sync().generate_sync_message(&mut sa).expect("a new change to send");
        generate.push(t.elapsed());
        let encoded = m.encode();
        bytes += encoded.len();
        let m = sync::Message::decode(&encoded).expect("valid");
        let t = Instant::now();
        b.sync().receive_sync_message(&mut sb, m).expect("applies");
        receive.push(t.elapsed());
        let t = Instant::now();
        sync_raw(&mut a, &mut sa, &mut b, &mut sb);
        rest.push(t.elapsed());
        assert_eq!(a.get_heads(), b.get_heads(), "the reader kept up");
        let mut m = a.sync().generate_sync_message(&mut sa_c).expect("the same change, to our reader");
        m.flags = None;
        let t = Instant::now();
        huskies_engine::receive_sync_message(&mut c, &mut sc, m).expect("applies");
        receive_ours.push(t.elapsed());
        sync_ours(&mut a, &mut sa_c, &mut c, &mut sc);
        assert_eq!(a.get_heads(), c.get_heads(), "our reader kept up");
    }
    Point {
        history: a.get_changes_meta(&[]).len(),
        generate: median(generate),
        receive: median(receive),
        receive_ours: median(receive_ours),
        rest: median(rest),
        bytes: bytes / samples,
    }
}

/// `sync_raw`, with the reader `c` receiving through the engine's
/// `receive_sync_message` (flags dropped, as the engine does).
fn sync_ours(a: &mut AutoCommit, sa: &mut sync::State, c: &mut AutoCommit, sc: &mut sync::State) {
    loop {
        let mut progressed = false;
        if let Some(mut m) = a.sync().generate_sync_message(sa) {
            m.flags = None;
            huskies_engine::receive_sync_message(c, sc, m).expect("applies");
            progressed = true;
        }
        if let Some(m) = c.sync().generate_sync_message(sc) {
            a.sync().receive_sync_message(sa, m).expect("applies");
            progressed = true;
        }
        if !progressed {
            return;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let sizes: Vec<usize> = match std::env::var("HUSKIES_BENCH_HISTORY").ok().and_then(|v| v.parse().ok()) {
        Some(n) => vec![n],
        None => vec![200, 2_000, 20_000],
    };
    println!(
        "| changes in the epoch | generate (ms) | receive, Automerge (ms) | receive, huskies (ms) | Automerge / huskies | rest of the exchange (ms) | message bytes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut first: Option<Point> = None;
    for n in sizes {
        let p = point(n);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.1}x | {:.3} | {} |",
            p.history,
            ms(p.generate),
            ms(p.receive),
            ms(p.receive_ours),
            p.receive.as_secs_f64() / p.receive_ours.as_secs_f64(),
            ms(p.rest),
            p.bytes
        );
        if let Some(f) = &first {
            println!(
                "receive at {} changes / at {}: {:.1}x",
                p.history,
                f.history,
                p.receive.as_secs_f64() / f.receive.as_secs_f64()
            );
        } else {
            first = Some(p);
        }
    }
}
