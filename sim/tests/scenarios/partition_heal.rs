//! Partition and heal.
//!
//! Goal: replicas split by symmetric and asymmetric partitions and
//! swizzle-clogs converge once the network heals, and work claimed on the
//! losing side of a partition is fenced, not double-accepted.
//! Method: 6 agents, 60 stories, 20 s of random partitions; heal; wait.
//! Properties: identical heads and stories; every story done; each final
//! result carries the final token, was pushed, and was accepted once; no
//! story runs twice at once after the heal.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn partition_heal() {
    let mut s = Scenario::new("partition_heal", 6, 60);
    s.profile = ProfileChoice::Fixed(Profile {
        partitions: true,
        asymmetric: true,
        swizzle: true,
        fault_every_ms: 1_500,
        ..Profile::calm()
    });
    s.fault_ms = 20_000;
    sweep(&s, "partition_heal::partition_heal", &[], 20);
}
