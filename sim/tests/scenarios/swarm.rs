//! Swarm: a random fault profile per seed.
//!
//! Goal: find the combinations nobody thought of. Each seed switches a
//! random subset of faults on (partitions, one-way cuts, swizzle-clogs,
//! crashes, pauses, clock skew and jumps), with random latency, agent
//! failure, hang and push-failure rates; the profile is printed with any
//! failure.
//! Method: 8 agents, 80 stories, 20 s of faults, then heal.
//! Properties: every invariant the oracle knows, plus the idle document
//! not growing from heartbeats.

use huskies_sim::scenario::{ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn swarm() {
    let mut s = Scenario::new("swarm", 8, 80);
    s.profile = ProfileChoice::Random;
    s.fault_ms = 20_000;
    s.check_idle_growth = true;
    for r in sweep(&s, "swarm::swarm", &[2, 111, 196], 8) {
        if let Some((before, after)) = r.idle_save_len {
            assert_eq!(before, after);
        }
    }
}
