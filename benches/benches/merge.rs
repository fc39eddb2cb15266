//! Merge throughput and convergence: the engine receiving a peer's claims
//! through its sync path (envelopes, Automerge sync, conflict re-reads,
//! index updates, incremental persistence, replies) beside raw Automerge
//! replicas syncing the very same changes.

use automerge::sync;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use huskies_benches::*;

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    g.sample_size(10);
    for n in [1usize, 100, 10_000] {
        for concurrent in [false, true] {
            // The receiver's own history: nothing, or n concurrent claims.
            let base = doc_with_stories(2 * n);
            let mut receiver = raw_from(&base, "receiver");
            if concurrent {
                write_claims(&mut receiver, "receiver", n, n);
            }
            let receiver = receiver.save();
            let history = if concurrent { "concurrent" } else { "sequential" };
            g.throughput(Throughput::Elements(n as u64));
            // Steady state: the peer has synced with the receiver once, then
            // writes its n claims; the timed part is the exchange that
            // carries them.
            g.bench_function(BenchmarkId::new(format!("engine/{history}"), n), |b| {
                b.iter_batched(
                    || {
                        let mut e = engine_from(&receiver, "receiver", 0);
                        let conn = connect(&mut e, "peer");
                        let (mut p, mut st) = (raw_from(&base, "peer"), sync::State::new());
                        sync_with_engine(&mut p, &mut st, &mut e, conn);
                        write_claims(&mut p, "peer", 0, n);
                        (e, conn, p, st)
                    },
                    |(mut e, conn, mut p, mut st)| sync_with_engine(&mut p, &mut st, &mut e, conn),
                    BatchSize::PerIteration,
                )
            });
            g.bench_function(BenchmarkId::new(format!("raw/{history}"), n), |b| {
                b.iter_batched(
                    || {
                        let (mut p, mut sp) = (raw_from(&base, "peer"), sync::State::new());
                        let (mut r, mut sr) = (raw_from(&receiver, "receiver"), sync::State::new());
                        sync_raw(&mut p, &mut sp, &mut r, &mut sr);
                        write_claims(&mut p, "peer", 0, n);
                        (p, sp, r, sr)
                    },
                    |(mut p, mut sp, mut r, mut sr)| sync_raw(&mut p, &mut sp, &mut r, &mut sr),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
