//! Long history: a pipeline that keeps finishing and archiving work, cut
//! into many epochs, with nodes offline across cuts and deaths in the
//! middle of a move to a new epoch.
//!
//! Goal: bounded history changes nothing the other scenarios check.
//! Method: 6 agents, 1,000 stories with quick runs; the server archives
//! done stories every 2 s and cuts an epoch every 300 changes. Agent 1 is
//! offline from 2 s to 20 s (across several cuts, holding work); agent 2
//! from 6 s to 9 s; agent 3 (from 3 s) and the server (from 10 s) die in
//! the middle of their next move (old document archived, new one not
//! stored) and restart at the heal (40 s).
//! Properties: every acknowledged story is live or in the server's cold
//! storage, archived; every live one finishes; replicas converge in one
//! epoch; results are fenced and pushed as everywhere else; moves were torn
//! and survived.

use huskies_sim::node::AgentProfile;
use huskies_sim::scenario::{Profile, ProfileChoice, Scenario, Scripted};
use huskies_sim::sweep::sweep;

pub fn scenario(stories: usize) -> Scenario {
    let mut s = Scenario::new("long_history", 6, stories);
    s.config.epoch_after_changes = 300;
    // Many cuts is the point here, whatever the backlog.
    s.config.epoch_changes_per_live_story = 0;
    s.config.claim_settle_ms = 150;
    s.archive_every_ms = 2_000;
    s.heal_budget_ms = 240_000;
    let agent = AgentProfile { run_min_ms: 100, run_max_ms: 400, fail_pct: 2, hang_pct: 0, push_fail_pct: 2 };
    s.profile = ProfileChoice::Fixed(Profile { agent, ..Profile::calm() });
    // A tear waits for the node's next move to a new epoch; the heal
    // restarts torn nodes (and disarms a tear that never came).
    s.script = vec![
        (2_000, Scripted::Isolate(1)),
        (3_000, Scripted::TearEpoch(3)),
        (6_000, Scripted::Isolate(2)),
        (9_000, Scripted::Reconnect(2)),
        (10_000, Scripted::TearEpoch(0)),
        (20_000, Scripted::Reconnect(1)),
    ];
    s.fault_ms = 40_000;
    s
}

#[test]
fn long_history() {
    let s = scenario(1_000);
    let reports = sweep(&s, "long_history::long_history", &[], 1);
    for r in &reports {
        println!(
            "long history seed {}: epoch {}, {} archived, {} done, {} torn moves",
            r.seed, r.epoch, r.stories_archived, r.stories_done, r.torn_epochs
        );
        assert!(r.epoch >= 5, "seed {}: many epochs were cut ({})", r.seed, r.epoch);
        assert!(r.stories_archived > 500, "seed {}: most finished work went cold ({})", r.seed, r.stories_archived);
    }
    // Whether a tear lands depends on when the seed's cuts reach the node;
    // across the run, some must.
    assert!(reports.iter().any(|r| r.torn_epochs >= 1), "no move was torn in any seed");
}
