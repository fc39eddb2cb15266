//! Mesh cap under churn.
//!
//! Goal: with nodes crashing, restarting and being partitioned, no node
//! ever holds more than `max_mesh_peers` supplementary connections, and the
//! mesh re-forms afterwards.
//! Method: 12 agents, 24 stories, crashes and partitions for 20 s.
//! Properties: the oracle checks the cap after every engine step; the mesh
//! is actually used (some node reaches the cap); convergence and liveness.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn mesh_churn() {
    let mut s = Scenario::new("mesh_churn", 12, 24);
    s.profile =
        ProfileChoice::Fixed(Profile { crashes: true, partitions: true, fault_every_ms: 1_000, ..Profile::calm() });
    s.fault_ms = 20_000;
    for r in sweep(&s, "mesh_churn::mesh_churn", &[], 3) {
        assert_eq!(r.max_mesh_peers, 3, "seed {}: the mesh formed up to its cap", r.seed);
    }
}
