//! Claim throughput: the engine deciding, writing and committing claims and
//! producing the sync message for a peer, beside raw Automerge put+commit of
//! the same claim values plus one sync message. And peer fan-out: the CPU of
//! one local change with 1 vs 8 connected peers.

use automerge::sync::{self, SyncDoc};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use huskies_benches::*;
use huskies_engine::{Command, CommandId, ConnId, Input, Millis, Stage, StoryId};

/// Claims made per measured scan.
const BATCH: usize = 100;

fn claims(c: &mut Criterion) {
    let mut g = c.benchmark_group("claims");
    g.sample_size(10);
    for stories in [100usize, 10_000, 100_000] {
        let base = doc_with_stories(stories);
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::new("engine", stories), |b| {
            b.iter_batched(
                || {
                    let mut e = engine_from(&base, "claimer", BATCH as u32);
                    connect(&mut e, "peer");
                    e
                },
                |mut e| {
                    e.handle(Millis(1), Input::Timeout);
                    let outs = drain(&mut e);
                    debug_assert_eq!(e.runs().count(), BATCH);
                    outs
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(BenchmarkId::new("raw", stories), |b| {
            b.iter_batched(
                || (raw_from(&base, "claimer"), sync::State::new()),
                |(mut d, mut st)| {
                    write_claims(&mut d, "claimer", 0, BATCH);
                    d.sync().generate_sync_message(&mut st)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20);
    let base = doc_with_stories(1_000);
    for peers in [1u64, 8] {
        g.bench_function(BenchmarkId::new("engine-change", peers), |b| {
            b.iter_batched(
                || {
                    let mut e = engine_from(&base, "hub", 0);
                    for p in 0..peers {
                        connect_as(&mut e, &format!("peer-{p}"), ConnId(p + 1));
                    }
                    e
                },
                |mut e| {
                    let id = StoryId::new(story_id(0)).expect("valid");
                    let cmd = Command::MoveStory { id, stage: Stage::Backlog };
                    e.handle(Millis(1), Input::Command { id: CommandId(1), command: cmd });
                    drain(&mut e)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, claims, fanout);
criterion_main!(benches);
