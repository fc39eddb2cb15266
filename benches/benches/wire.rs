//! Counts, not times: bytes on the wire per claim and sync round trips to
//! converge, engine beside raw Automerge. `cargo bench --bench wire`.

use automerge::sync;
use huskies_benches::*;
use huskies_engine::{Input, Millis, Output};

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // a test run must not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("## wire cost per claim (batch of 100 claims synced to one peer)");
    let base = doc_with_stories(1_000);
    let mut e = engine_from(&base, "claimer", 100);
    let conn = connect(&mut e, "peer");
    let mut peer = raw_from(&base, "peer");
    let mut st = sync::State::new();
    // Settle the connection first, so only the claims are counted.
    sync_with_engine(&mut peer, &mut st, &mut e, conn);
    e.handle(Millis(2), Input::Timeout);
    let mut sent = 0;
    for out in drain(&mut e) {
        if let Output::Send { bytes, .. } = out {
            sent += bytes.len();
        }
    }
    let x = sync_with_engine(&mut peer, &mut st, &mut e, conn);
    let engine_bytes = sent + x.bytes_from_engine;
    let mut raw = raw_from(&base, "claimer");
    let heads = raw.get_heads();
    write_claims(&mut raw, "claimer", 0, 100);
    let change_bytes = raw.save_after(&heads).len();
    let logical = 100 * ("s000000".len() + "claimer".len() + 8);
    println!("| engine bytes sent | raw change bytes | logical payload | engine / raw |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.2} |",
        engine_bytes as f64 / 100.0,
        change_bytes as f64 / 100.0,
        logical as f64 / 100.0,
        engine_bytes as f64 / change_bytes as f64
    );

    println!("\n## round trips to converge two replicas diverged by N changes (N/2 each side)");
    println!("| N | engine round trips | raw round trips |");
    println!("|---:|---:|---:|");
    for n in [10usize, 1_000, 10_000] {
        let base = doc_with_stories(n);
        let mut left = raw_from(&base, "receiver");
        write_claims(&mut left, "receiver", n / 2, n - n / 2);
        let left = left.save();
        let mut right = raw_from(&base, "peer");
        write_claims(&mut right, "peer", 0, n / 2);
        let right = right.save();
        let mut e = engine_from(&left, "receiver", 0);
        let conn = connect(&mut e, "peer");
        let (mut p, mut sp) = (raw_from(&right, "peer"), sync::State::new());
        let ex = sync_with_engine(&mut p, &mut sp, &mut e, conn);
        let (mut a, mut sa, mut b, mut sb) =
            (raw_from(&right, "peer"), sync::State::new(), raw_from(&left, "r"), sync::State::new());
        let rx = sync_raw(&mut a, &mut sa, &mut b, &mut sb);
        assert_eq!(p.get_heads().len(), a.get_heads().len());
        println!("| {n} | {} | {} |", ex.round_trips, rx.round_trips);
    }
}
