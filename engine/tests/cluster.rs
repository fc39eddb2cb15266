//! Whole-cluster scenarios on the deterministic in-process harness.

mod harness;

use harness::{AgentModel, Harness, fast_config};
use huskies_engine::{Command, Event, Millis, Stage, StoryId, Token};

fn done_advances(c: &Harness, story: &StoryId) -> usize {
    c.count_events(|e| matches!(e, Event::Advanced { story: s, to: Stage::Done, .. } if s == story))
}

/// 5 agents, 50 stories added at once: every story is done exactly once and
/// the rendezvous ranking keeps duplicate starts rare.
#[test]
fn claim_storm_five_nodes_fifty_stories() {
    let mut c = Harness::new(5, 7, fast_config());
    c.jitter_ms = 10;
    c.run_for(2_000);
    let stories = c.add_stories(0, 50, Stage::Current);
    let took = c.run_until_settled(300_000).expect("storm settles");
    for s in &stories {
        if done_advances(&c, s) != 1 {
            for (t, n, e) in &c.events {
                if format!("{e:?}").contains(&format!("\"{s}\"")) {
                    eprintln!("{t:?} node {n}: {e:?}");
                }
            }
        }
        assert_eq!(done_advances(&c, s), 1, "{s} reached done once");
        let v = c.engine(0).story(s).unwrap().state.clone();
        assert_eq!(v.stage, Stage::Done);
    }
    let starts: u32 = c.starts.values().sum();
    let dups = c.duplicate_starts();
    println!("claim storm: {starts} starts for 150 story-stages, {dups} duplicates, settled in {took} ms");
    assert!(dups <= 2, "duplicate starts {dups} should be rare");
    // Every (story, stage) ran at least once, and all work was pushed.
    assert_eq!(c.starts.len(), 150);
    assert!(c.remote.len() >= 150);
}

/// A cluster of 3 agents that work `current` only, with one story claimed
/// and running: the cluster, the story, its holder and the claim's token.
fn one_story_running(seed: u64, run_ms: u64, cfg: huskies_engine::Config) -> (Harness, StoryId, usize, Token) {
    let mut c = Harness::new(3, seed, huskies_engine::Config { stages: vec![Stage::Current], ..cfg });
    c.agent = AgentModel::fixed(run_ms);
    c.run_for(2_000);
    let story = c.add_stories(0, 1, Stage::Current).remove(0);
    c.run_for(1_000);
    let holder = (1..=3).find(|&i| c.engine(i).runs().count() == 1).expect("someone claimed");
    let token = c.engine(holder).runs().next().unwrap().1;
    (c, story, holder, token)
}

/// Node A holds a story when it is cut off; the others reclaim it after the
/// timeout and finish it. A's own result, produced while cut off, loses on
/// every replica after the heal.
#[test]
fn partition_reclaim_heal_fences_the_zombie() {
    let (mut c, story, holder, token) = one_story_running(11, 5_000, fast_config());
    c.isolate(holder);
    // The others declare it dead, reclaim and finish while it is away; the
    // zombie also finishes its run (5 s) and advances in its own replica.
    c.run_for(12_000);
    let zombie_view = c.engine(holder).story(&story).unwrap().state.clone();
    assert_eq!(zombie_view.stage, Stage::Qa, "the zombie advanced locally");
    assert_eq!(zombie_view.token, token);
    let other = if holder == 1 { 2 } else { 1 };
    let winner_view = c.engine(other).story(&story).unwrap().state.clone();
    assert!(winner_view.token > token, "reclaimed with a higher token");
    assert_eq!(winner_view.stage, Stage::Qa);
    c.heal();
    let start = c.now;
    let took = c.run_until_settled(60_000).expect("converges after heal");
    println!("heal: converged {took} ms after heal (heartbeat {} ms)", 200);
    for i in 0..=3 {
        let s = c.engine(i).story(&story).unwrap().state.clone();
        assert_eq!(s.token, winner_view.token, "node {i} fenced the zombie");
        let result = s.result.expect("result recorded");
        assert_ne!(result.node, c.nodes[holder].id, "the zombie's result was not accepted");
    }
    let zombie_advances =
        c.events.iter().filter(|(_, n, e)| *n == holder && matches!(e, Event::Advanced { .. })).count();
    assert_eq!(zombie_advances, 1, "the zombie did finish, and was fenced");
    // At the remote: the zombie pushed first; the winner's push replaced
    // its tip and kept it on a side ref.
    assert_eq!(c.git.tip(&story).map(|(t, _)| *t), Some(winner_view.token), "the branch holds the winner's push");
    assert!(c.git.is_kept(&story, token), "the zombie's tip is kept");
    c.assert_no_work_lost();
    let _ = start;
}

/// The zombie finishes after the winner pushed: the remote fences its
/// push, it does not advance on its own replica, its work is kept on a side
/// ref and its run recorded as fenced; after the heal all agree on the
/// winner.
#[test]
fn a_zombie_push_after_the_winner_is_fenced_at_the_remote() {
    let (mut c, story, holder, token) = one_story_running(12, 8_000, fast_config());
    c.isolate(holder);
    // The winner's run is quick; the zombie's (started before) is not.
    c.agent = AgentModel::fixed(500);
    c.run_for(12_000);
    let fenced = c.events.iter().any(|(_, n, e)| {
        *n == holder && matches!(e, Event::Fenced { story: s, token: t, .. } if *s == story && *t == token)
    });
    assert!(fenced, "the zombie's push was fenced");
    let zombie_view = c.engine(holder).story(&story).unwrap().state.clone();
    assert_eq!(zombie_view.stage, Stage::Current, "the zombie did not advance");
    assert!(c.git.is_kept(&story, token));
    c.heal();
    c.run_until_settled(60_000).expect("converges after heal");
    let winner = c.engine(0).story(&story).unwrap().state.clone();
    assert_eq!(c.git.tip(&story).map(|(t, _)| *t), Some(winner.token));
    assert_ne!(winner.result.unwrap().node, c.nodes[holder].id);
    let runs = c.engine(0).story_runs(&story);
    assert!(runs.iter().any(|r| r.outcome == huskies_engine::RunOutcomeKind::Fenced && r.token == token), "{runs:?}");
    c.assert_no_work_lost();
}

/// A node goes offline while working a story, work is added at the server,
/// it comes back: both sides' writes merge and all get done. Stories are
/// the server's to add: the offline agent refuses to add one itself.
#[test]
fn offline_node_reconnects_and_merges() {
    let mut cfg = fast_config();
    cfg.stages = vec![Stage::Current];
    let mut c = Harness::new(3, 3, cfg);
    c.run_for(2_000);
    let add = |c: &mut Harness, at: usize, id: &str| {
        let id = StoryId::new(id).unwrap();
        c.command(
            at,
            Command::AddStory(huskies_engine::NewStory {
                id: Some(id.clone()),
                title: id.to_string(),
                stage: Stage::Current,
                ..Default::default()
            }),
        )
        .unwrap();
        id
    };
    let offline = add(&mut c, 0, "offline-work");
    let holder = (0..400)
        .find_map(|_| {
            c.run_for(10);
            c.engine(0).story(&offline).and_then(|v| v.state.holder.clone())
        })
        .expect("an agent claims the story");
    let k = (1..=3).find(|i| c.nodes[*i].id == holder).expect("the holder is an agent");
    c.isolate(k);
    let refused = c.command(k, Command::AddStory(huskies_engine::NewStory { title: "t".into(), ..Default::default() }));
    assert_eq!(refused, Err(huskies_engine::CommandError::ServerOnly), "agents add no stories");
    let online = add(&mut c, 0, "online-work");
    let worked = (0..500).any(|_| {
        c.run_for(10);
        c.engine(k).story(&offline).is_some_and(|v| v.state.stage == Stage::Qa)
    });
    assert!(worked, "the offline node works alone");
    assert!(c.engine(k).story(&online).is_none());
    c.heal();
    c.run_until_settled(60_000).expect("merges after reconnect");
    for i in 0..=3 {
        for s in [&offline, &online] {
            assert_eq!(c.engine(i).story(s).unwrap().state.stage, Stage::Qa, "node {i} story {s}");
        }
    }
}

/// 10 agents with crashes and restarts: nobody ever holds more than
/// max_mesh_peers supplementary connections, and after churn every agent is
/// meshed again.
#[test]
fn mesh_cap_holds_under_churn() {
    let mut c = Harness::new(10, 5, fast_config());
    c.run_for(5_000);
    for i in 1..=10 {
        assert!(c.engine(i).mesh_peer_count() <= 3);
    }
    for round in 0..6u64 {
        let victim = 1 + ((round * 7 + 3) % 10) as usize;
        c.crash(victim);
        c.run_for(3_000);
        c.start(victim);
        c.run_for(2_000);
    }
    c.run_for(10_000);
    assert!(c.max_mesh_seen <= 3, "mesh cap exceeded: {}", c.max_mesh_seen);
    let mut dialed = 0;
    for i in 1..=10 {
        let e = c.engine(i);
        dialed += e.mesh_peer_count();
        // A mesh link may be one the peer dialed, so count connections.
        assert!(e.peer_count() >= 2, "agent {i} is connected beyond the rendezvous");
    }
    assert!(dialed >= 10, "the mesh re-formed: {dialed} supplementary links");
    assert!(c.converged());
}

/// Heartbeats are gossip, not document writes: 10,000 rounds leave the
/// saved document the same size.
#[test]
fn heartbeats_do_not_grow_the_document() {
    let mut c = Harness::new(3, 1, fast_config());
    c.add_stories(0, 3, Stage::Backlog);
    c.run_for(3_000);
    let before = c.engine(1).save().len();
    let heads = c.engine(1).heads();
    // 10,000 heartbeat rounds of 200 ms each.
    c.run_for(10_000 * 200);
    let after = c.engine(1).save().len();
    println!("doc size: {before} bytes before, {after} bytes after 10,000 heartbeat rounds");
    assert_eq!(before, after);
    assert_eq!(heads, c.engine(1).heads());
    assert!(c.engine(1).alive_nodes().len() == 4, "everyone stayed alive on heartbeats alone");
}

fn storm_trace(seed: u64) -> (u64, usize) {
    let mut c = Harness::new(4, seed, fast_config());
    c.jitter_ms = 20;
    c.agent.fail_pct = 20;
    c.run_for(1_000);
    c.add_stories(0, 20, Stage::Current);
    c.run_for(4_000);
    c.crash(2);
    c.run_for(3_000);
    c.start(2);
    c.run_until_settled(200_000).expect("settles");
    (c.trace_hash.0, c.events.len())
}

#[test]
fn same_seed_same_trace() {
    let a = storm_trace(42);
    let b = storm_trace(42);
    assert_eq!(a, b, "one seed, one trace");
    let other = storm_trace(43);
    assert_ne!(a.0, other.0, "the seed matters");
}

/// A crashed node restarts from its persisted bytes: its own claims are
/// inspected and released, and the work still finishes.
#[test]
fn crash_restart_reconciles_own_claims() {
    let mut cfg = fast_config();
    cfg.stages = vec![Stage::Current];
    let mut c = Harness::new(2, 9, cfg);
    c.agent = AgentModel::fixed(3_000);
    c.run_for(1_000);
    let stories = c.add_stories(0, 4, Stage::Current);
    c.run_for(500);
    let held: Vec<StoryId> = c.engine(1).runs().map(|(s, _, _)| s.clone()).collect();
    assert!(!held.is_empty());
    c.crash(1);
    c.run_for(200);
    c.start(1);
    c.run_until_settled(60_000).expect("settles after restart");
    for s in &stories {
        assert_eq!(c.engine(2).story(s).unwrap().state.stage, Stage::Qa);
    }
    let inspected = c.count_events(|e| matches!(e, Event::Ready { .. }));
    assert!(inspected >= 4);
    let _ = Millis(0);
}

/// The harness's disk takes up to 100 ms a write, and the engine goes on
/// handling inputs while its outputs wait behind each write. Agents and the
/// server crash at seeded times, losing what had not landed: every restart
/// reads back each story, claim, run and push it revealed (checked in
/// `Harness::start`), and the work still finishes.
#[test]
fn slow_disks_and_crashes_lose_nothing_revealed() {
    let seeds: u64 = std::env::var("HUSKIES_HARNESS_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut restarts = 0;
    for seed in 1..=seeds {
        let mut c = Harness::new(3, seed, fast_config());
        c.write_ms = 100;
        c.agent = AgentModel::fixed(400);
        c.run_for(500);
        let stories = c.add_stories(0, 10, Stage::Current);
        for round in 0..8u64 {
            c.run_for(150 + (seed * 37 + round * 101) % 400);
            let victim = ((seed + round) % 4) as usize;
            c.crash(victim);
            c.run_for(50 + (seed * 13 + round * 29) % 200);
            c.start(victim);
            restarts += 1;
        }
        c.run_until_settled(120_000).unwrap_or_else(|| {
            c.print_unsettled();
            panic!("seed {seed} did not settle")
        });
        for s in &stories {
            let st = &c.engine(0).story(s).expect("acknowledged story kept").state;
            assert!(st.stage > Stage::Current, "seed {seed}: {s} at {}", st.stage);
        }
        c.assert_no_work_lost();
    }
    assert_eq!(restarts, seeds * 8);
}

/// Cluster settings set at the server reach every node, survive a restart
/// from storage, and change behaviour there: with the claim timeout raised
/// from 2 s to 6 s, a crashed agent's story is not reclaimed at 3 s, and is
/// by 8 s.
#[test]
fn cluster_settings_reach_every_node_and_take_effect() {
    use huskies_engine::{ClusterSettings, CommandError, Reply};
    let mut c = Harness::new(3, 5, fast_config());
    c.run_for(1_000);
    let raised = ClusterSettings { claim_timeout_ms: 6_000, ..ClusterSettings::of(&fast_config()) };
    let set = |c: &mut Harness, s: &ClusterSettings| c.command(0, Command::SetClusterSettings { settings: s.clone() });
    assert_eq!(set(&mut c, &raised), Ok(Reply::Settings { revision: 1 }));
    assert_eq!(set(&mut c, &raised), Ok(Reply::Settings { revision: 1 }), "same values: no new revision");
    // One that cannot work (heartbeats slower than a third of the timeout)
    // is refused and changes nothing.
    let bad = ClusterSettings { heartbeat_interval_ms: 5_000, ..raised.clone() };
    assert!(matches!(set(&mut c, &bad), Err(CommandError::BadSettings(_))));
    c.run_for(1_000);
    for i in 0..=3 {
        let s = c.engine(i).cluster_settings().cloned();
        assert_eq!(s.map(|s| (s.revision, s.claim_timeout_ms)), Some((1, 6_000)), "node {i}");
    }
    c.crash(3);
    c.start(3);
    assert_eq!(c.engine(3).cluster_settings().map(|s| s.claim_timeout_ms), Some(6_000), "kept in storage");
    c.run_for(1_000);

    // A held story, then its holder dies.
    c.add_stories(0, 1, Stage::Current);
    let mut holder = None;
    for _ in 0..40 {
        c.run_for(100);
        holder = c.engine(0).stories().find_map(|(_, v)| v.state.holder.clone());
        if holder.is_some() {
            break;
        }
    }
    let holder = holder.expect("the story was claimed");
    let i: usize = holder.as_str().trim_start_matches("agent-").parse().unwrap();
    c.crash(i);
    let reclaims = |c: &Harness| c.count_events(|e| matches!(e, Event::Claimed { reclaimed_from: Some(_), .. }));
    c.run_for(3_000);
    assert_eq!(reclaims(&c), 0, "not reclaimed within the old 2 s timeout");
    c.run_for(5_000);
    assert!(reclaims(&c) >= 1, "reclaimed after the new 6 s timeout");
}

fn add(c: &mut Harness, id: &str, priority: i64, created_ms: u64) -> StoryId {
    let id = StoryId::new(id).unwrap();
    let new = huskies_engine::NewStory {
        id: Some(id.clone()),
        title: format!("story {id}"),
        stage: Stage::Current,
        body: format!("body of {id}"),
        priority,
        created: huskies_engine::UnixMs(created_ms),
    };
    c.command(0, Command::AddStory(new)).expect("add");
    id
}

/// Free stories are claimed by priority, then age; every run leaves a
/// record (node, token, stage, attempt, outcome) in the story's history,
/// replicated to every node; the body reaches the run.
#[test]
fn claims_follow_priority_then_age_and_runs_are_recorded() {
    let config = huskies_engine::Config { capacity: 1, ..fast_config() };
    let mut c = Harness::new(1, 3, config);
    c.run_for(1_000);
    let low = add(&mut c, "low", 0, 300);
    let old = add(&mut c, "old", 0, 100);
    let high = add(&mut c, "high", 5, 200);
    c.run_until_settled(60_000).expect("settles");
    let order: Vec<StoryId> = c
        .events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Claimed { story, stage: Stage::Current, .. } => Some(story.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![high.clone(), old, low], "priority first, then oldest");
    for i in 0..=1 {
        let runs = c.engine(i).story_runs(&high);
        let stages: Vec<Stage> = runs.iter().map(|r| r.stage).collect();
        assert_eq!(stages, Stage::ACTIVE.to_vec(), "node {i}");
        assert!(runs.iter().all(|r| r.outcome == huskies_engine::RunOutcomeKind::Succeeded && r.attempt == 1));
        assert!(runs.iter().all(|r| r.node == huskies_engine::testkit::node_name(1)));
        assert_eq!(c.engine(i).story_body(&high), "body of high");
    }
}

/// Edit changes title, body and priority everywhere; a failed story keeps
/// its reason and is claimed again after a retry; rm stops a held story's
/// run and leaves a tombstone nobody claims.
#[test]
fn edit_retry_and_remove() {
    use huskies_engine::{CommandError, Reply};
    let config = huskies_engine::Config { capacity: 1, max_attempts: 2, stages: vec![Stage::Current], ..fast_config() };
    let mut c = Harness::new(1, 4, config);
    c.run_for(1_000);
    c.agent.fail_pct = 100;
    let s = add(&mut c, "flaky", 0, 1);
    let edit = Command::EditStory {
        id: s.clone(),
        title: Some("Flaky, renamed".into()),
        body: Some("new body".into()),
        priority: Some(3),
    };
    assert_eq!(c.command(0, edit), Ok(Reply::Edited { id: s.clone() }));
    c.run_for(10_000);
    let view = c.engine(1).stories().find(|(id, _)| **id == s).map(|(_, v)| v.clone()).unwrap();
    assert_eq!((view.title.as_str(), view.priority), ("Flaky, renamed", 3));
    assert_eq!(c.engine(1).story_body(&s), "new body");
    assert!(view.state.failed, "gave up after 2 attempts");
    assert_eq!(view.state.reason.as_deref(), Some("simulated agent failure"));
    let runs = c.engine(0).story_runs(&s);
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![1, 2]);
    assert!(runs.iter().all(|r| r.reason.as_deref() == Some("simulated agent failure")));

    // Retry: new attempts, and this time the agent succeeds.
    c.agent.fail_pct = 0;
    assert!(matches!(c.command(0, Command::RetryStory { id: s.clone() }), Ok(Reply::Retried { .. })));
    assert!(matches!(c.command(0, Command::RetryStory { id: s.clone() }), Err(CommandError::NotFailed(_))));
    c.run_for(10_000);
    let state = c.engine(0).stories().find(|(id, _)| **id == s).map(|(_, v)| v.state.clone()).unwrap();
    assert_eq!((state.stage, state.failed, state.reason), (Stage::Qa, false, None));

    // Remove a story while it runs: the run stops, nobody claims it again.
    c.agent = AgentModel::fixed(5_000);
    let r = add(&mut c, "doomed", 0, 2);
    let mut held = false;
    for _ in 0..50 {
        c.run_for(100);
        if c.nodes[1].runs.contains_key(&r) {
            held = true;
            break;
        }
    }
    assert!(held, "the agent started it");
    assert!(matches!(c.command(0, Command::RemoveStory { id: r.clone() }), Ok(Reply::Removed { .. })));
    c.run_for(1_000);
    assert!(!c.nodes[1].runs.contains_key(&r), "the run was stopped");
    c.run_for(10_000);
    let state = c.engine(1).stories().find(|(id, _)| **id == r).map(|(_, v)| v.state.clone()).unwrap();
    assert!(state.removed && state.holder.is_none() && state.stage == Stage::Current);
    assert!(matches!(
        c.command(0, Command::MoveStory { id: r.clone(), stage: Stage::Qa }),
        Err(CommandError::Removed(_))
    ));
}

/// A node that leaves says so with a signed last beat: the others count it
/// dead at once and reclaim its story well inside the claim timeout.
#[test]
fn a_leaving_node_is_reclaimed_at_once() {
    let cfg = huskies_engine::Config { claim_timeout_ms: 10_000, heartbeat_interval_ms: 1_000, ..fast_config() };
    let (mut c, story, holder, _) = one_story_running(21, 30_000, cfg);
    assert_eq!(c.command(holder, Command::Leave), Ok(huskies_engine::Reply::Left));
    let left_at = c.now;
    c.run_for(50);
    c.crash(holder);
    c.run_for(2_000);
    let reclaimed = c.events.iter().find_map(|(t, _, e)| match e {
        Event::Claimed { story: s, reclaimed_from: Some(_), .. } if *s == story => Some(*t),
        _ => None,
    });
    let at = reclaimed.expect("reclaimed");
    assert!(
        at.saturating_sub(left_at) < 2_000,
        "reclaimed {} ms after leaving; the timeout is 10 s",
        at.saturating_sub(left_at)
    );
}

/// An agent cut off from the server but not from its mesh peers still
/// learns what the server writes, through peers that do have a server
/// link, within a bounded time (a backlog story: no agent's own write
/// carries it along).
#[test]
fn an_agent_cut_off_from_the_server_hears_it_through_the_mesh() {
    let mut c = Harness::new(3, 5, fast_config());
    c.run_for(3_000);
    c.partition(1, &[0]);
    c.run_for(1_000);
    let id = StoryId::new("backlog-news").unwrap();
    let story = huskies_engine::NewStory {
        id: Some(id.clone()),
        title: "news".into(),
        stage: Stage::Backlog,
        ..Default::default()
    };
    c.command(0, Command::AddStory(story)).unwrap();
    let heard = (0..500).find(|_| {
        c.run_for(10);
        c.engine(1).story(&id).is_some()
    });
    assert!(heard.is_some(), "agent 1 never heard of the story through its mesh peers");
    assert!(c.engine(2).story(&id).is_some() && c.engine(3).story(&id).is_some());
}

/// Mesh links stay quiet while the rendezvous carries the changes: they
/// send heads when those change, and a sync only for what the rendezvous
/// did not bring (here: almost nothing). Before heads-first every mesh
/// link synced every change at its own pace.
#[test]
fn mesh_links_send_heads_not_changes_while_the_rendezvous_carries_them() {
    let mut c = Harness::new(4, 11, fast_config());
    c.run_for(2_000);
    let stories = c.add_stories(0, 20, Stage::Current);
    c.run_until_settled(300_000).expect("the stories settle");
    for s in &stories {
        assert_eq!(c.engine(0).story(s).unwrap().state.stage, Stage::Done);
    }
    let mut sent = huskies_engine::SyncSent::default();
    for i in 1..=4 {
        sent += c.engine(i).sync_sent();
    }
    println!("agents sent: {sent:?}");
    assert!(sent.heads_messages > 0, "mesh links told each other their heads: {sent:?}");
    assert!(
        sent.mesh_messages * 10 <= sent.main_messages,
        "mesh sync messages are a small fraction of the main path's: {sent:?}"
    );
    assert!(sent.mesh_bytes + sent.heads_bytes < sent.main_bytes / 4, "{sent:?}");
}
