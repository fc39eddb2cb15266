//! Offline node, reclaim, reconnect.
//!
//! Goal: an agent that drops off the network while holding work has that
//! work reclaimed by others after the claim timeout, and when it returns,
//! the results it produced while away are fenced by the higher tokens.
//! Method: 4 agents, 24 stories; agent 1 is isolated one second after the
//! stories arrive (mid-run) and stays away for 15 s, long enough to finish
//! its runs alone; then it reconnects.
//! Properties: reclaims happen; after the reconnect all replicas converge;
//! every final result carries the final token, names a node that produced
//! it, and was pushed; no story runs twice at once after the heal.

use huskies_sim::scenario::{Scenario, Scripted};
use huskies_sim::sweep::sweep;

#[test]
fn offline_reclaim() {
    let mut s = Scenario::new("offline_reclaim", 4, 24);
    s.fault_ms = 0;
    s.script = vec![(1_000, Scripted::Isolate(1)), (16_000, Scripted::Reconnect(1))];
    for r in sweep(&s, "offline_reclaim::offline_reclaim", &[], 100) {
        assert!(r.reclaims > 0, "seed {}: the isolated agent's work was reclaimed", r.seed);
        assert_eq!(r.stories_done, 24);
    }
}
