//! The cost ledger and budgets across a cluster (ledger.rs): a run's cost
//! counts once on every replica, however it synced; a spent daily budget
//! stops new claims; a story past its own budget is given up.

mod harness;

use harness::{Harness, LEDGER_DAY_MS, RUN_COST_MICRO_USD, fast_config};
use huskies_engine::ledger::{Day, Period};
use huskies_engine::{Input, Stage};

/// Tells every node the wall clock (the ledger's day).
fn tell_day(c: &mut Harness) {
    for i in 0..c.nodes.len() {
        c.input(i, Input::WallClock { unix_ms: LEDGER_DAY_MS + 1 });
    }
}

/// Runs of the agents' stages (current, qa) in the ledger of node 1.
fn agent_runs(c: &mut Harness) -> u64 {
    let ledger = c.engine(1).ledger();
    ledger
        .lines
        .iter()
        .filter(|((_, p), _)| *p == Period::AllTime)
        .flat_map(|(_, l)| l.0.iter().filter(|x| x.stage.spends()).map(|x| x.runs))
        .sum()
}

fn runs_recorded(c: &mut Harness) -> u64 {
    let ids: Vec<_> = c.engine(0).stories().map(|(id, _)| id.clone()).collect();
    ids.iter().map(|id| c.engine(0).story_runs(id).len() as u64).sum()
}

#[test]
fn every_replica_counts_each_run_once() {
    let mut c = Harness::new(3, 11, fast_config());
    c.jitter_ms = 10;
    c.run_for(2_000);
    tell_day(&mut c);
    c.add_stories(0, 12, Stage::Current);
    c.run_until_settled(300_000).expect("settles");
    assert!(c.converged());
    let runs = runs_recorded(&mut c);
    assert!(runs >= 36, "12 stories through current, qa and merge: {runs} runs");
    let day = Day::of_unix_ms(LEDGER_DAY_MS);
    for i in 0..c.nodes.len() {
        let ledger = c.engine(i).ledger();
        let all: u64 =
            ledger.lines.iter().filter(|((_, p), _)| *p == Period::AllTime).map(|(_, l)| l.cost_micro_usd()).sum();
        assert_eq!(all, runs * RUN_COST_MICRO_USD, "node {i}: all time");
        assert_eq!(ledger.spent_on(day), runs * RUN_COST_MICRO_USD, "node {i}: the day");
        // Only nodes that ran agents have lines: never the server.
        assert!(ledger.lines.keys().all(|(n, _)| n.as_str() != "rendezvous"), "node {i}");
        let by_stage: u64 = ledger
            .lines
            .iter()
            .filter(|((_, p), _)| *p == Period::AllTime)
            .flat_map(|(_, l)| l.0.iter().filter(|x| x.stage == Stage::Qa).map(|x| x.runs))
            .sum();
        assert!(by_stage >= 12, "node {i}: qa runs {by_stage}");
    }
}

#[test]
fn a_spent_daily_budget_stops_new_claims() {
    let budget_runs = 5;
    let config =
        huskies_engine::Config { daily_budget_micro_usd: Some(budget_runs * RUN_COST_MICRO_USD), ..fast_config() };
    let mut c = Harness::new(2, 5, config);
    c.run_for(2_000);
    tell_day(&mut c);
    c.add_stories(0, 10, Stage::Current);
    c.run_for(120_000);
    let runs = runs_recorded(&mut c);
    // Runs already going when the budget is spent finish: at most one
    // round of every slot past it (2 agents, capacity 2). Landing (the
    // merge stage) is no agent's and goes on.
    let paid = agent_runs(&mut c);
    assert!((budget_runs..=budget_runs + 4).contains(&paid), "{paid} agent runs for a budget of {budget_runs}");
    assert!(c.engine(1).daily_budget_spent().is_some());
    let done = c.engine(0).stories().filter(|(_, v)| v.state.stage == Stage::Done).count();
    assert!(done < 10, "the budget stopped the work: {done} done");
    assert!(c.engine(0).stories().all(|(_, v)| v.state.holder.is_none()), "no claim is held");
    // The next day the work goes on.
    for i in 0..c.nodes.len() {
        c.input(i, Input::WallClock { unix_ms: LEDGER_DAY_MS + 86_400_000 });
    }
    c.run_for(30_000);
    assert!(agent_runs(&mut c) > paid && runs_recorded(&mut c) > runs, "claims resume on a new day");
}

#[test]
fn a_story_past_its_budget_is_given_up_with_that_reason() {
    let config = huskies_engine::Config { max_story_cost_micro_usd: Some(RUN_COST_MICRO_USD), ..fast_config() };
    let mut c = Harness::new(2, 3, config);
    c.run_for(2_000);
    tell_day(&mut c);
    let stories = c.add_stories(0, 3, Stage::Current);
    c.run_for(120_000);
    for s in &stories {
        let v = c.engine(0).story(s).unwrap().state.clone();
        // Its run in current cost its budget: qa is never run.
        assert_eq!(v.stage, Stage::Qa, "{s}: {v:?}");
        assert!(v.failed, "{s}: {v:?}");
        assert!(v.reason.as_deref().unwrap_or("").starts_with("over budget: its runs cost $0.0010"), "{s}: {v:?}");
        assert_eq!(c.engine(0).story_runs(s).len(), 1, "{s}");
    }
}

/// A node whose agent's API refuses it (a bad key) gives its claims back
/// without spending the stories' attempts, and stops claiming for a while:
/// the other node does the work, and nothing is given up.
#[test]
fn a_node_whose_api_refuses_it_steps_back_without_spending_attempts() {
    let mut c = Harness::new(2, 9, fast_config());
    c.nodes[1].api_refuses = true;
    c.run_for(2_000);
    tell_day(&mut c);
    let stories = c.add_stories(0, 6, Stage::Current);
    c.run_until_settled(300_000).expect("settles");
    for s in &stories {
        let v = c.engine(0).story(s).unwrap().state.clone();
        assert_eq!((v.stage, v.failed), (Stage::Done, false), "{s}: {v:?}");
    }
    let refused = c.count_events(|e| matches!(e, huskies_engine::Event::RunFailed { gave_up: false, attempts: 0, .. }));
    let id1 = c.nodes[1].id.clone();
    let mut records = Vec::new();
    for s in &stories {
        records.extend(c.engine(0).story_runs(s).into_iter().filter(|r| r.node == id1));
    }
    assert!(!records.is_empty() && refused >= 1, "node 1 claimed and was refused");
    for r in &records {
        let why = r.reason.as_deref().unwrap_or("");
        assert!(why.starts_with(&format!("not counted, {id1} could not run it: API authentication failed")), "{r:?}");
    }
    // Paused after each refusal (doubling), it took far fewer than its
    // share of 18 story-stages.
    assert!(records.len() <= 4, "node 1 kept claiming: {} runs", records.len());
}
