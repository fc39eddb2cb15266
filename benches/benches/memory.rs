//! What one node holds in memory for a pipeline of N live stories and the
//! changes of its epoch, beside a raw Automerge replica of the same
//! document, measured by a counting allocator in the same run.
//!
//! A writer (raw Automerge, writing as a node would: one change a state,
//! labelled with its story) claims every story and then releases it to the
//! next stage: two changes a live story, the floor an epoch holds before
//! the count cuts it (`epoch_changes_per_live_story`). A raw replica and
//! an engine each take them by sync in rounds; each is then dropped, and
//! the bytes its drop gives back are what it held. A third replica, raw
//! Automerge with its patch log dropped after each round, shows what
//! Automerge's own log costs (see `trimmed`).
//!
//! `cargo bench -p huskies-benches --bench memory` (about a minute);
//! `HUSKIES_BENCH_STORIES=1000` for another size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use automerge::sync;
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ReadDoc};
use huskies_benches::*;
use huskies_engine::{Stage, StoryState, Token};

/// Bytes allocated and not yet freed, by anything in the process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the
// counter only adds and subtracts the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The bytes `value` held: what dropping it gives back.
fn held<T>(value: T) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    drop(value);
    before - LIVE.load(Ordering::Relaxed)
}

/// Changes the writer makes between two sync exchanges.
const ROUND: usize = 500;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Change `k` of the writer's `2 * stories`: story `k` claimed by the
/// writer, then (from `k = stories` on) released to `qa` with the next
/// token.
fn write(writer: &mut AutoCommit, objs: &[automerge::ObjId], stories: usize, k: usize) {
    let i = k % stories;
    let mut s = StoryState::new(Stage::Current);
    if k < stories {
        s.token = Token(1);
        s.holder = Some(node("writer"));
    } else {
        s.stage = Stage::Qa;
        s.token = Token(2);
    }
    writer.put(&objs[i], "state", s.encode()).expect("put");
    writer.commit_with(CommitOptions::default().with_time(0).with_message(format!("s:{}", story_id(i))));
}

fn main() {
    let stories = env("HUSKIES_BENCH_STORIES", 10_000);
    let bytes = doc_with_stories(stories);
    let raw_loaded = held(raw_from(&bytes, "reader"));
    let trimmed_loaded = held(trimmed(raw_from(&bytes, "reader")));
    let engine_loaded = held(engine_from(&bytes, "reader", 0));

    let mut writer = raw_from(&bytes, "writer");
    let (_, root) = writer.get(automerge::ROOT, "stories").expect("read").expect("stories");
    let objs: Vec<_> = (0..stories).map(|i| writer.get(&root, story_id(i)).expect("read").expect("story").1).collect();
    let mut raw = raw_from(&bytes, "reader");
    let (mut s_writer_raw, mut s_raw) = (sync::State::new(), sync::State::new());
    let mut trim = trimmed(raw_from(&bytes, "reader"));
    let (mut s_writer_trim, mut s_trim) = (sync::State::new(), sync::State::new());
    let mut engine = engine_from(&bytes, "reader", 0);
    let conn = connect(&mut engine, "writer");
    let mut s_writer_engine = sync::State::new();
    for from in (0..2 * stories).step_by(ROUND) {
        for k in from..(from + ROUND).min(2 * stories) {
            write(&mut writer, &objs, stories, k);
        }
        sync_raw(&mut writer, &mut s_writer_raw, &mut raw, &mut s_raw);
        sync_raw(&mut writer, &mut s_writer_trim, &mut trim, &mut s_trim);
        trim.reset_diff_cursor();
        sync_with_engine(&mut writer, &mut s_writer_engine, &mut engine, conn);
    }
    let changes = 2 * stories;
    assert_eq!(raw.get_heads(), writer.get_heads(), "the raw replica took every change");
    assert_eq!(engine.heads(), writer.get_heads(), "the engine took every change");
    assert_eq!(trim.get_heads(), writer.get_heads(), "the trimmed replica took every change");
    let raw_after = held(raw);
    let trimmed_after = held(trim);
    let engine_after = held(engine);

    let kib = |b: isize| b as f64 / 1024.0;
    let per = |b: isize, n: usize| b as f64 / n as f64;
    let ratio = |e: isize, r: isize| e as f64 / r as f64;
    let (raw_change, trimmed_change, engine_change) =
        (raw_after - raw_loaded, trimmed_after - trimmed_loaded, engine_after - engine_loaded);
    println!("memory held by one replica: {stories} live stories, then {changes} changes (claim, release) by sync");
    println!("| | raw Automerge | raw, patch log dropped | engine | engine / raw | engine / dropped |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| loaded: KiB | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
        kib(raw_loaded),
        kib(trimmed_loaded),
        kib(engine_loaded),
        ratio(engine_loaded, raw_loaded),
        ratio(engine_loaded, trimmed_loaded)
    );
    println!(
        "| loaded: bytes a story | {:.0} | {:.0} | {:.0} | | |",
        per(raw_loaded, stories),
        per(trimmed_loaded, stories),
        per(engine_loaded, stories)
    );
    println!(
        "| after the changes: KiB | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
        kib(raw_after),
        kib(trimmed_after),
        kib(engine_after),
        ratio(engine_after, raw_after),
        ratio(engine_after, trimmed_after)
    );
    println!(
        "| bytes a change | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
        per(raw_change, changes),
        per(trimmed_change, changes),
        per(engine_change, changes),
        ratio(engine_change, raw_change),
        ratio(engine_change, trimmed_change)
    );
}

/// A raw replica whose patch log is dropped after every load and sync
/// round, as the engine drops its own (`doc::forget_patches`): Automerge
/// 0.12 fills it with every map value a remote change puts, even while it
/// is inactive.
fn trimmed(mut doc: AutoCommit) -> AutoCommit {
    doc.reset_diff_cursor();
    doc
}
