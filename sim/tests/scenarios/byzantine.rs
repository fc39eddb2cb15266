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
//! no member; and every invariant of the other scenarios.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario};
use huskies_sim::sweep::sweep;

#[test]
#[ignore = "issue 21, open: about 7 seeds in 24 fail (a view goes back after an epoch cut over a story map a peer replaced; a landed result fenced by a later claim); HUSKIES_SEEDS=24 cargo test -p huskies-sim --test scenarios byzantine -- --ignored"]
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
    for r in sweep(&s, "byzantine::byzantine", &[], 4) {
        assert_eq!(r.stories_done, 30, "every story done once the hostile node is revoked");
    }
}
