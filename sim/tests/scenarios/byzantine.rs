//! A Byzantine node.
//!
//! Goal: an enrolled agent turned hostile (issue 21) cannot crash, wedge or
//! wipe the pipeline. Through the fault phase it writes random well-formed
//! changes into its own replica, signed as its own: forged removals and
//! claims in another's name, absurd tokens and counts, wrong types,
//! deletions of stories and of the root maps, others' run records, ledger
//! lines and node records, floods of stories; while partitions, crashes and
//! pauses hit the others. At the heal the operator revokes it and it stays
//! down.
//! Method: 5 agents (agent 2 hostile), 30 stories, 15 s of faults.
//! Properties: the honest nodes never panic (every engine assertion is on),
//! converge, and finish every story; no honest view ever shows a story the
//! server never added, a removal no admin asked for, or a holder that is
//! no member; and every invariant of the other scenarios (a story branch
//! the hostile node pushed last is exempt: it holds push credentials, and
//! the default branch is checked all the same).
//! Long sweep: `HUSKIES_KEEP_GOING=1 HUSKIES_SEEDS=200 HUSKIES_SEED_BASE=1000
//! cargo test -p huskies-sim --test scenarios byzantine -- --nocapture`.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
fn byzantine() {
    let mut s = Scenario::new("byzantine", 5, 30);
    s.profile = ProfileChoice::Fixed(Profile {
        partitions: true,
        crashes: true,
        pauses: true,
        fault_every_ms: 2_000,
        ..Profile::calm()
    });
    s.fault_ms = 15_000;
    s.byzantine = Some(2);
    // Regression seeds: views that went back after an epoch cut, reads
    // that differed on equal heads, results fenced by a later claim
    // (before validity became a function of the history).
    for r in sweep(&s, "byzantine::byzantine", &[2, 12, 13, 18, 23, 27], 40) {
        assert_eq!(r.stories_done, 30, "every story done once the hostile node is revoked");
    }
}
