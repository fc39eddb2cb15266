//! Clock skew, jumps and pauses.
//!
//! Goal: liveness is judged on each node's own clock, so skewed clocks
//! (±5% rate), forward jumps and process pauses longer than the claim
//! timeout can cause reclaims but never an accepted stale result.
//! Method: 5 agents, 40 stories, per-node skew, random clock jumps and
//! pauses for 20 s.
//! Properties: fencing (final result carries the final token, was pushed
//! and produced by its node), no token or stage regression on any replica,
//! convergence, liveness.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn clock_skew() {
    let mut s = Scenario::new("clock_skew", 5, 40);
    s.profile =
        ProfileChoice::Fixed(Profile { clock_skew: true, pauses: true, fault_every_ms: 1_500, ..Profile::calm() });
    s.fault_ms = 20_000;
    sweep(&s, "clock_skew::clock_skew", &[], 48);
}
