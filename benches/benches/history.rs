//! Cost of a change as history grows: the engine (epochs on) beside raw
//! Automerge (one document forever), and claims on pipelines whose stories
//! are mostly archived. Timed by hand: each point needs a fixture of up to
//! 300,000 changes, built once, then many single-change measurements.
//!
//! `cargo bench -p huskies-benches --bench history` (about 10 minutes on 2
//! cores); `HUSKIES_BENCH_MAX_HISTORY=100000` stops earlier.

// A bench measures wall time; the engine's own time stays injected.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use automerge::ReadDoc;
use automerge::sync;
use automerge::transaction::{CommitOptions, Transactable};
use huskies_benches::*;
use huskies_engine::{Input, Millis, Stage, StoryState, Token};

/// Live stories: about 10,000 live keys (title, state, created each, and
/// a priority once edited).
const LIVE: usize = 3_000;
const EPOCH_AFTER: u64 = 2_000;
const SAMPLES: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Raw: one change of `holder`'s claim on story `i` at `token`, synced.
fn raw_point(history: usize, base: &[u8]) -> (Duration, usize) {
    let mut a = raw_from(base, "writer");
    let (_, root) = a.get(automerge::ROOT, "stories").expect("read").expect("stories");
    let objs: Vec<_> = (0..LIVE).map(|i| a.get(&root, story_id(i)).expect("read").expect("story").1).collect();
    let mut token = 1u64;
    let put = |a: &mut automerge::AutoCommit, k: usize, token: &mut u64| {
        let mut s = StoryState::new(Stage::Current);
        *token += 1;
        s.token = Token(*token);
        a.put(&objs[k % LIVE], "state", s.encode()).expect("put");
        a.commit_with(CommitOptions::default().with_time(0));
    };
    for k in 0..history {
        put(&mut a, k, &mut token);
    }
    let mut b = raw_from(&a.save(), "reader");
    let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
    sync_raw(&mut a, &mut sa, &mut b, &mut sb);
    let mut times = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES {
        let t = Instant::now();
        put(&mut a, k, &mut token);
        sync_raw(&mut a, &mut sa, &mut b, &mut sb);
        times.push(t.elapsed());
    }
    let changes = a.get_changes_meta(&[]).len();
    (median(times), changes)
}

/// Engine: a server and an agent; `history` changes made and synced one
/// by one, the server scanning (and cutting epochs) every 500.
fn engine_point(history: usize, base: &[u8], epoch_after: u64) -> (Duration, usize, u64, Duration) {
    let mut p = Pair::new(base, epoch_after);
    let mut cut_time = Duration::ZERO;
    let mut cuts = 0u32;
    for k in 0..history {
        p.change(k % LIVE, k as i64);
        if k % 500 == 499 {
            let before = p.server.epoch();
            let t = Instant::now();
            p.tick(600);
            if p.server.epoch() > before {
                cut_time += t.elapsed();
                cuts += 1;
            }
        }
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES {
        let t = Instant::now();
        p.change(k % LIVE, -(k as i64));
        times.push(t.elapsed());
    }
    assert_eq!(
        p.agent.story(&huskies_engine::StoryId::new(story_id(0)).expect("id")).map(|v| v.priority),
        p.server.story(&huskies_engine::StoryId::new(story_id(0)).expect("id")).map(|v| v.priority),
        "the agent kept up"
    );
    let per_cut = if cuts > 0 { cut_time / cuts } else { Duration::ZERO };
    (median(times), p.server.change_count(), p.server.epoch(), per_cut)
}

fn claims_point(stories: usize, live: usize) -> Duration {
    // `stories` stories of which all but `live` are archived; the server
    // cuts once, so they leave the live document, then claims 100.
    let bytes = doc_with_archived(stories, live);
    let mut best = Duration::MAX;
    for _ in 0..10 {
        let mut e = engine_from(&bytes, "claimer", 100);
        connect(&mut e, "peer");
        let t = Instant::now();
        e.handle(Millis(1), Input::Timeout);
        drain(&mut e);
        let took = t.elapsed();
        assert_eq!(e.runs().count(), 100.min(live));
        best = best.min(took);
    }
    best
}

/// Diagnostic (`HUSKIES_BENCH_EPOCH_GROWTH=1`): per-change cost every 20
/// epochs on a small pipeline, to see whether anything grows with the
/// number of epochs rather than with history.
fn epoch_growth(live: usize) {
    let base = doc_with_stories(live);
    let mut p = Pair::new(&base, 200);
    let mut k = 0usize;
    for round in 0..=10 {
        while p.server.epoch() < round * 20 {
            p.change(k % live, k as i64);
            k += 1;
            if k.is_multiple_of(100) {
                p.tick(600);
            }
        }
        let mut times = Vec::with_capacity(SAMPLES);
        for j in 0..SAMPLES {
            let t = Instant::now();
            p.change(j % live, -(j as i64));
            times.push(t.elapsed());
        }
        println!(
            "epoch {:>4}: {:.3} ms per change, {} changes held",
            p.server.epoch(),
            median(times).as_secs_f64() * 1e3,
            p.server.change_count()
        );
    }
}

fn main() {
    if std::env::var("HUSKIES_BENCH_EPOCH_GROWTH").is_ok() {
        return epoch_growth(300);
    }
    let max: usize = std::env::var("HUSKIES_BENCH_MAX_HISTORY").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let base = doc_with_stories(LIVE);
    println!("per-change sync cost, {LIVE} live stories, median of {SAMPLES} changes");
    println!(
        "| history (changes made) | raw automerge | raw changes held | engine (epochs every {EPOCH_AFTER}) | engine changes held | epoch | cut (each) | engine / raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut first_engine = None;
    for history in [1_000usize, 10_000, 100_000, 300_000] {
        if history > max {
            break;
        }
        // The engine first: a raw document of 300,000 changes leaves a
        // fragmented heap behind that slowed the engine measured after it
        // by a third.
        let (eng, eng_changes, epoch, per_cut) = engine_point(history, &base, EPOCH_AFTER);
        let (raw, raw_changes) = raw_point(history, &base);
        first_engine.get_or_insert(eng);
        println!(
            "| {history} | {:.3} ms | {raw_changes} | {:.3} ms | {eng_changes} | {epoch} | {:.1} ms | {:.2} |",
            raw.as_secs_f64() * 1e3,
            eng.as_secs_f64() * 1e3,
            per_cut.as_secs_f64() * 1e3,
            eng.as_secs_f64() / raw.as_secs_f64()
        );
        if let Some(f) = first_engine {
            println!("  engine at {history} / engine at 1,000: {:.2}", eng.as_secs_f64() / f.as_secs_f64());
        }
    }
    println!();
    println!("claims: one scan claiming 100 stories, best of 10");
    let small = claims_point(100, 100);
    for (stories, live) in [(100usize, 100usize), (10_000, 100), (100_000, 100)] {
        let t = if stories == 100 { small } else { claims_point(stories, live) };
        println!(
            "| {stories} stories, {live} live | {:.2} ms / 100 | {:.0} claims/s | {:.2}x the 100-story rate |",
            t.as_secs_f64() * 1e3,
            100.0 / t.as_secs_f64(),
            small.as_secs_f64() / t.as_secs_f64()
        );
    }
}
