//! Scale: 200 nodes × 10,000 stories (ignored by default; run with
//! `cargo test --release --test scenarios -- scale --ignored --nocapture`;
//! `HUSKIES_SCALE_NODES` and `HUSKIES_SCALE_STORIES` pick another size,
//! `HUSKIES_SCALE_EPOCH` the changes between epoch cuts).
//!
//! Goal: the engine and the mesh hold up at fleet size. Method: a calm
//! network, all stories added at once; the server archives finished work
//! every 5 s, so epochs shed it as a long-running pipeline would.
//! Properties: everything done (or archived) and converged within the
//! budget, no story given up; prints wall time, convergence time and the final epoch.

use huskies_sim::scenario::Scenario;
use huskies_sim::sweep::sweep;

#[test]
#[ignore = "minutes of wall time; run explicitly"]
fn scale() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut s = Scenario::new("scale", env("HUSKIES_SCALE_NODES", 200), env("HUSKIES_SCALE_STORIES", 10_000));
    s.fault_ms = 0;
    s.heal_budget_ms = 3_600_000;
    s.publish_every_ms = 10_000;
    s.config.capacity = 4;
    s.archive_every_ms = 5_000;
    // `HUSKIES_SCALE_EPOCH`: changes between epoch cuts (to measure longer epochs).
    s.config.epoch_after_changes = env("HUSKIES_SCALE_EPOCH", s.config.epoch_after_changes as usize) as _;
    // `HUSKIES_SCALE_PER_STORY`: the epoch's floor in changes per live
    // story (memory held against cuts made).
    s.config.epoch_changes_per_live_story =
        env("HUSKIES_SCALE_PER_STORY", s.config.epoch_changes_per_live_story as usize) as _;
    for r in sweep(&s, "scale::scale", &[], 1) {
        println!(
            "scale seed {}: epoch {}, {} archived, {} done, heal {:?} ms, sim {} ms, wall {} ms",
            r.seed, r.epoch, r.stories_archived, r.stories_done, r.heal_ms, r.sim_ms, r.wall_ms
        );
        // No fault and no failing run: a story given up is work lost to the
        // fleet's own coordination (at 50 agents, landings that timed out
        // waiting in a long train gave up 22 of 300).
        assert_eq!(r.given_up, 0, "seed {}: stories given up in a run without faults", r.seed);
        assert_eq!(r.full_reads, 0, "seed {}: a change applied without a note of where it writes", r.seed);
    }
}
