//! Claim storm.
//!
//! Goal: 500 stories appearing at once on 20 agents are each worked once per
//! stage, without a pile-up of duplicate starts.
//! Method: a calm network (1–10 ms latency), all stories added in one burst
//! through the rendezvous; agents of capacity 2, runs of 1–4 s.
//! Properties: every story done; convergence; duplicate starts (starts
//! beyond one per story and stage) stay under 2%.

use huskies_sim::node::AgentProfile;
use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn claim_storm() {
    let mut s = Scenario::new("claim_storm", 20, 500);
    // Real agent runs take minutes, far longer than a claim takes to be
    // seen; runs of 1–4 s keep that ratio while the sim stays short.
    s.profile = ProfileChoice::Fixed(Profile {
        agent: AgentProfile { run_min_ms: 1_000, run_max_ms: 4_000, ..Profile::CALM_AGENT },
        ..Profile::calm()
    });
    s.config.run_timeout_ms = 60_000;
    s.fault_ms = 0;
    s.heal_budget_ms = 300_000;
    s.publish_every_ms = 1_000;
    for r in sweep(&s, "claim_storm::claim_storm", &[], 1) {
        let stages = 3 * 500;
        let dups = r.starts.saturating_sub(stages);
        println!("claim storm seed {}: {} starts for {stages} story-stages, {dups} duplicates", r.seed, r.starts);
        assert_eq!(r.stories_done, 500);
        assert!(dups * 50 <= stages, "{dups} duplicate starts exceed 2%");
        // No fault drops a datagram here: a link that saw a hole lost
        // nothing, and must not have reset (madsim's mailbox once starved
        // old datagrams behind new ones, and 2,500 links reset).
        assert_eq!(r.link_resets.gap, 0, "links reset on holes in a network that loses nothing");
        // Only a change that comes back after a rebuilt document dropped
        // it applies unnoted; nothing here rebuilds.
        assert_eq!(r.full_reads, 0, "merges read whole: a change applied without a note of where it writes");
    }
}
