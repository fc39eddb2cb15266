//! Seed sweeps and replay.
//!
//! `HUSKIES_SEED=n` runs exactly seed n; `HUSKIES_SEEDS=k` runs k seeds
//! from the scenario's base (default: the scenario's own count). A failure
//! panics with the replay command; with `HUSKIES_KEEP_GOING=1` the sweep
//! runs every seed first and then panics listing all the failed ones.
//! `HUSKIES_JOBS=n` runs n seeds at once, one per thread; the reports
//! still print in seed order. The default is one per core: `cargo test`
//! runs tests two at a time too, and with one job each the sweep that
//! started last ran alone on one core for its last 30–40 s while the other
//! core idled. Seeds do not share state, so oversubscribing costs nothing
//! but a little memory.

use crate::scenario::{Report, Scenario, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `scenario` for the regression seeds plus `default_seeds` more, or
/// as the environment says. `test` is the test's path for the replay line.
pub fn sweep(scenario: &Scenario, test: &str, regression: &[u64], default_seeds: u64) -> Vec<Report> {
    let seeds: Vec<u64> = match (env_u64("HUSKIES_SEED"), env_u64("HUSKIES_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, count) => {
            let base = env_u64("HUSKIES_SEED_BASE").unwrap_or(1);
            let mut seeds: Vec<u64> = regression.to_vec();
            seeds.extend((base..base + count.unwrap_or(default_seeds)).filter(|s| !regression.contains(s)));
            seeds
        }
    };
    let keep_going = std::env::var_os("HUSKIES_KEEP_GOING").is_some();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = env_u64("HUSKIES_JOBS").map_or(cores, |n| n as usize).max(1);
    let mut failed: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for (seed, outcome) in run_seeds(scenario, &seeds, jobs) {
        // An engine assertion inside the simulation panics: the replay line
        // goes with it.
        let r = match outcome {
            Ok(r) => r,
            Err(e) => panic!(
                "{} seed {seed} panicked: {e}\nreplay: HUSKIES_SEED={seed} cargo test --test scenarios -- {test} --exact --nocapture",
                scenario.name,
            ),
        };
        let phases: Vec<String> = r.phases.iter().map(|(name, ms)| format!("{name} {ms} ms")).collect();
        println!("{} seed {seed}: {}; phases: {}", r.scenario, r.profile, phases.join(", "));
        println!(
            "{} seed {seed}: sim {} ms, wall {} ms, heal {:?} ms, {} starts (current/qa/merge {}/{}/{}), {} reclaims, {} claim losses, {} fenced pushes, {} landings and {} queued timed out, {} given up, {} done, mesh max {}",
            r.scenario,
            r.sim_ms,
            r.wall_ms,
            r.heal_ms,
            r.starts,
            r.starts_by_stage[0],
            r.starts_by_stage[1],
            r.starts_by_stage[2],
            r.reclaims,
            r.claim_losses,
            r.fenced,
            r.landing_timeouts[0],
            r.landing_timeouts[1],
            r.given_up,
            r.stories_done,
            r.max_mesh_peers
        );
        println!("{} seed {seed}: trace {:016x}", r.scenario, r.trace_hash.0);
        let lr = r.link_resets;
        println!(
            "{} seed {seed}: link resets: {} holes, {} silent, {} dials unanswered",
            r.scenario, lr.gap, lr.idle, lr.dial
        );
        let node_s = (r.nodes as f64 * r.sim_ms as f64 / 1e3).max(1e-9);
        println!(
            "{} seed {seed}: per node per second, {:.1} heartbeats checked with {:.2} signatures (one each before chains) and {:.1} hashes",
            r.scenario,
            r.beats_checked as f64 / node_s,
            r.beat_signatures as f64 / node_s,
            r.beat_hashes as f64 / node_s
        );
        if r.disk_writes > 0 {
            let d = r.disk_losses;
            println!(
                "{} seed {seed}: {} slow disk writes in {} flushes; crashes lost {}, tore {}, left {} landed unconfirmed; {} starts read back all they revealed",
                r.scenario, r.disk_writes, r.disk_flushes, d.lost, d.torn, d.unconfirmed, r.restarts_checked
            );
        }
        let s = r.sync_sent;
        let per_story = (r.stories_done + r.stories_archived).max(1) as f64;
        println!(
            "{} seed {seed}: sync sent per story finished: main {:.1} messages / {:.0} bytes, mesh {:.1} / {:.0}, mesh heads {:.1} / {:.0}; {} merges read whole",
            r.scenario,
            s.main_messages as f64 / per_story,
            s.main_bytes as f64 / per_story,
            s.mesh_messages as f64 / per_story,
            s.mesh_bytes as f64 / per_story,
            s.heads_messages as f64 / per_story,
            s.heads_bytes as f64 / per_story,
            r.full_reads
        );
        let l = &r.landing;
        if l.landed > 0 {
            println!(
                "{} seed {seed}: landed {} in {} batches ({} stories, {} retried, {} split), {} sent back, {} gate runs ({} failed), merge->landed p50 {} ms p95 {} ms, {:.1} landed/h",
                r.scenario,
                l.landed,
                l.batches,
                l.batch_stories,
                l.retries,
                l.splits,
                l.sent_back,
                l.gate_runs,
                l.gate_failures,
                l.p50_ms,
                l.p95_ms,
                l.per_hour()
            );
            let c = &l.call_offs;
            println!(
                "{} seed {seed}: {} batches stacked on another node's, {} called off ({} a story ahead gone, {} its holder dead, {} the chain stalled, {} a batch ahead withdrawn, {} a sibling ranked first)",
                r.scenario, l.speculative, l.cancelled, c.ahead_gone, c.holder_dead, c.stalled, c.withdrawn, c.sibling
            );
        }
        if !r.violations.is_empty() {
            let failure = format!(
                "{} seed {seed} failed\nprofile: {}\n{}\nfaults injected: {:?}\nreplay: HUSKIES_SEED={seed} cargo test --test scenarios -- {test} --exact --nocapture",
                r.scenario,
                r.profile,
                r.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n"),
                r.faults,
            );
            if !keep_going {
                panic!("{failure}");
            }
            println!("{failure}");
            failed.push(seed.to_string());
        }
        reports.push(r);
    }
    if !failed.is_empty() {
        panic!("{} of {} seeds failed: {}", failed.len(), reports.len(), failed.join(" "));
    }
    reports
}

/// Runs `seeds` on `jobs` threads and yields each outcome in seed order as
/// soon as it and every seed before it are done.
fn run_seeds(scenario: &Scenario, seeds: &[u64], jobs: usize) -> impl Iterator<Item = (u64, Result<Report, String>)> {
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Report, String>)>();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..jobs.min(seeds.len()) {
        let (tx, next, seeds, scenario) = (tx.clone(), next.clone(), seeds.to_vec(), scenario.clone());
        std::thread::spawn(move || {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let outcome = std::panic::catch_unwind(|| run_seed(&scenario, seed))
                    .map_err(|e| crate::scenario::panic_text(e.as_ref()));
                if tx.send((i, outcome)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let seeds = seeds.to_vec();
    let mut done: std::collections::BTreeMap<usize, Result<Report, String>> = Default::default();
    let mut at = 0;
    std::iter::from_fn(move || {
        while !done.contains_key(&at) {
            let (i, outcome) = rx.recv().ok()?;
            done.insert(i, outcome);
        }
        let outcome = done.remove(&at)?;
        at += 1;
        Some((seeds[at - 1], outcome))
    })
}
