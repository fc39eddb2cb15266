//! Slow disks and lossy crashes.
//!
//! Goal: the engine's persistence gate holds on the path production takes.
//! Its writer thread confirms a write long after the engine issued it, and
//! the engine keeps handling inputs meanwhile; what they reveal must wait
//! behind the write. A crash must lose nothing the node revealed: no reply,
//! claim, run or push whose state its disk does not hold.
//! Method: every node's disk takes 5–45 ms a write and one write in ten
//! stalls 400 ms more; writes queued behind a flush go down with the next
//! one (group commit, as `net` does; `sim/src/disk.rs`). Crashes drop every write not
//! confirmed; the one in flight is lost, lands half done (a snapshot over
//! the old log, an epoch archived but not moved) or lands whole with its
//! confirmation lost. Three scenarios: crashes and restarts; the merge
//! queue under crashes and partitions; and epochs cut and archived under
//! crashes.
//! Properties: at every restart the node reads back every story it
//! revealed, at the token it revealed or later (the oracle's
//! `check_restart`); plus every property of every scenario.

use huskies_sim::disk::Latency;
use huskies_sim::node::AgentProfile;
use huskies_sim::scenario::{Profile, ProfileChoice, Scenario, Scripted};
use huskies_sim::sweep::sweep;

const SLOW: Latency = Latency { min_ms: 5, spread_ms: 40, stall_every: 10, stall_ms: 400 };

fn check(reports: &[huskies_sim::scenario::Report]) {
    let writes: u64 = reports.iter().map(|r| r.disk_writes).sum();
    let restarts: u64 = reports.iter().map(|r| r.restarts_checked).sum();
    let d = |r: &huskies_sim::scenario::Report| r.disk_losses.lost + r.disk_losses.torn + r.disk_losses.unconfirmed;
    let caught: u64 = reports.iter().map(d).sum();
    assert!(writes > 0, "the disks were slow");
    assert!(restarts > 0, "restarts were checked against what their nodes revealed");
    // Whether a crash finds a write in flight depends on the seed; across
    // the sweep, some must.
    assert!(caught > 0 || reports.len() < 2, "no crash caught a write in flight");
}

pub fn crashes() -> Scenario {
    let mut s = Scenario::new("slow_disk_crashes", 5, 40);
    s.disk = Some(SLOW);
    // Snapshots often, so crashes find them in flight too.
    s.config.snapshot_every = 8;
    s.profile = ProfileChoice::Fixed(Profile { crashes: true, fault_every_ms: 800, ..Profile::calm() });
    s.fault_ms = 20_000;
    s.script = vec![(600, Scripted::Crash(1)), (3_000, Scripted::Restart(1)), (5_000, Scripted::Crash(0))];
    s
}

/// Sweeps `s`; every story ends done.
fn sweep_all_done(s: &Scenario, test: &str, seeds: u64) {
    let reports = sweep(s, test, &[], seeds);
    for r in &reports {
        assert_eq!(r.stories_done, s.stories, "seed {}", r.seed);
    }
    check(&reports);
}

#[test]
fn slow_disk_crashes() {
    sweep_all_done(&crashes(), "slow_disk::slow_disk_crashes", 9);
}

pub fn merge_queue() -> Scenario {
    let mut s = crate::merge_queue::scenario();
    s.name = "slow_disk_merge_queue";
    s.disk = Some(SLOW);
    s
}

#[test]
fn slow_disk_merge_queue() {
    sweep_all_done(&merge_queue(), "slow_disk::slow_disk_merge_queue", 2);
}

pub fn epochs() -> Scenario {
    let mut s = Scenario::new("slow_disk_epochs", 5, 120);
    s.disk = Some(SLOW);
    s.config.epoch_after_changes = 100;
    s.config.epoch_changes_per_live_story = 0;
    s.config.snapshot_every = 8;
    s.config.claim_settle_ms = 150;
    s.archive_every_ms = 1_500;
    s.heal_budget_ms = 180_000;
    let agent = AgentProfile { run_min_ms: 100, run_max_ms: 400, fail_pct: 2, hang_pct: 0, push_fail_pct: 2 };
    s.profile = ProfileChoice::Fixed(Profile { agent, crashes: true, fault_every_ms: 1_500, ..Profile::calm() });
    s.script = vec![(4_000, Scripted::Crash(0)), (6_000, Scripted::Restart(0))];
    s.fault_ms = 20_000;
    s
}

#[test]
fn slow_disk_epochs() {
    let reports = sweep(&epochs(), "slow_disk::slow_disk_epochs", &[], 1);
    for r in &reports {
        assert!(r.epoch >= 2, "seed {}: epochs were cut ({})", r.seed, r.epoch);
    }
    check(&reports);
}
