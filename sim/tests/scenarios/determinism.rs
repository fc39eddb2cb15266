//! Determinism.
//!
//! Goal: a seed is a complete description of a run, so a failure can always
//! be replayed. Method: run one swarm seed twice, each on a fresh thread,
//! and compare the hash of every output every engine produced, with its
//! time. Properties: identical hashes; a different seed differs.

use huskies_sim::scenario::{ProfileChoice, Scenario, run_seed};

#[test]
fn same_seed_same_trace() {
    let mut s = Scenario::new("determinism", 5, 30);
    s.profile = ProfileChoice::Random;
    s.fault_ms = 10_000;
    let a = run_seed(&s, 77);
    let b = run_seed(&s, 77);
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(a.trace_hash, b.trace_hash, "seed 77 ran differently twice");
    assert_eq!(a.sim_ms, b.sim_ms);
    let c = run_seed(&s, 78);
    assert_ne!(a.trace_hash, c.trace_hash);
}
