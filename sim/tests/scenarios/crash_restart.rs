//! Crash and restart.
//!
//! Goal: agents killed mid-run restart from what they persisted, lose no
//! acknowledged story, and reconcile the claims they held (push committed
//! work, release the rest), while others reclaim what the dead left.
//! Method: 5 agents, 40 stories, random crashes and restarts for 20 s, plus
//! a scripted crash of agent 1 right after the stories arrive.
//! Properties: no acknowledged story lost; convergence; every story done;
//! results fenced as in every scenario.

use huskies_sim::scenario::{Profile, ProfileChoice, Scenario, Scripted};
use huskies_sim::sweep::sweep;

#[test]
fn crash_restart() {
    let mut s = Scenario::new("crash_restart", 5, 40);
    s.profile = ProfileChoice::Fixed(Profile { crashes: true, fault_every_ms: 1_500, ..Profile::calm() });
    s.fault_ms = 20_000;
    s.script = vec![(600, Scripted::Crash(1)), (4_000, Scripted::Restart(1))];
    for r in sweep(&s, "crash_restart::crash_restart", &[], 50) {
        assert_eq!(r.stories_done, 40);
    }
}
