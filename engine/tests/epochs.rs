//! Epochs in the in-process harness: history stays bounded, archived
//! stories go to cold storage, and a node offline across cuts brings its
//! writes along.

mod harness;

use harness::{Harness, fast_config};
use huskies_engine::cold::ColdDoc;
use huskies_engine::{Command, Event, NewStory, Stage, StoryId};

const LIMIT: u64 = 90;

fn config() -> huskies_engine::Config {
    huskies_engine::Config { epoch_after_changes: LIMIT, ..fast_config() }
}

fn add(c: &mut Harness, at: usize, id: &str) -> StoryId {
    let id = StoryId::new(id).unwrap();
    let new =
        NewStory { id: Some(id.clone()), title: format!("story {id}"), stage: Stage::Current, ..Default::default() };
    c.command(at, Command::AddStory(new)).expect("add");
    id
}

/// Only `worker` runs the `current` stage until it holds some of `ids`,
/// then it is cut off and the others run every stage again. Its work on
/// what it holds is its own write, made apart (stories are the server's
/// to add, not an agent's). Returns what it holds.
fn cut_off_holding(c: &mut Harness, worker: usize, ids: &[StoryId]) -> Vec<StoryId> {
    let later: Vec<Stage> = Stage::ALL.iter().copied().filter(|s| s.is_active() && *s != Stage::Current).collect();
    for i in 1..c.nodes.len() {
        let stages = if i == worker { vec![Stage::Current] } else { later.clone() };
        c.command(i, Command::SetStages { stages }).expect("set stages");
    }
    let worker_id = c.nodes[worker].id.clone();
    let mut held = Vec::new();
    for _ in 0..1_000 {
        c.run_for(10);
        held = ids
            .iter()
            .filter(|id| c.engine(worker).story(id).is_some_and(|v| v.state.holder.as_ref() == Some(&worker_id)))
            .cloned()
            .collect();
        if !held.is_empty() {
            break;
        }
    }
    assert!(!held.is_empty(), "node {worker} claims some of {ids:?}");
    c.isolate(worker);
    let all: Vec<Stage> = Stage::ALL.iter().copied().filter(|s| s.is_active()).collect();
    for i in (1..c.nodes.len()).filter(|i| *i != worker) {
        c.command(i, Command::SetStages { stages: all.clone() }).expect("set stages");
    }
    held
}

fn archive_done(c: &mut Harness) -> Vec<StoryId> {
    let done: Vec<StoryId> =
        c.engine(0).stories().filter(|(_, v)| v.state.stage == Stage::Done).map(|(id, _)| id.clone()).collect();
    for id in &done {
        c.command(0, Command::MoveStory { id: id.clone(), stage: Stage::Archived }).expect("archive");
    }
    done
}

#[test]
fn epochs_bound_history_and_archived_stories_stay_readable() {
    let mut c = Harness::new(3, 41, config());
    let mut archived = Vec::new();
    for round in 0..4 {
        for k in 0..12 {
            add(&mut c, 0, &format!("r{round}-{k:02}"));
        }
        c.run_until_settled(120_000).expect("round settles");
        archived.extend(archive_done(&mut c));
        c.run_for(3_000);
    }
    c.run_until_settled(60_000).expect("settles");
    let epoch = c.engine(0).epoch();
    assert!(epoch >= 2, "4 rounds of 12 stories through 3 stages cut epochs: {epoch}");
    for i in 0..=3 {
        assert_eq!(c.engine(i).epoch(), epoch, "node {i} moved with the server");
        assert!(c.engine(i).change_count() < 3 * LIMIT as usize, "node {i} history is bounded");
    }
    // Archived stories leave the live document at the next cut, for the
    // server's cold storage, done and with their run history.
    let archives: Vec<Vec<u8>> = c.nodes[0].storage.archives.values().rev().cloned().collect();
    let mut cold = 0;
    for id in &archived {
        if let Some(v) = c.engine(0).story(id) {
            assert_eq!(v.state.stage, Stage::Archived, "{id} is live only until the next cut");
            continue;
        }
        for i in 1..=3 {
            assert!(c.engine(i).story(id).is_none(), "{id} left node {i}'s live document too");
        }
        let story = archives.iter().find_map(|bytes| ColdDoc::open(bytes)?.story(id));
        let story = story.unwrap_or_else(|| panic!("{id} is in no archive"));
        assert_eq!(story.view.state.stage, Stage::Archived);
        assert_eq!(story.runs.len(), 3, "current, qa and merge runs of {id}");
        cold += 1;
    }
    assert!(cold >= 24, "stories of the early rounds went cold: {cold} of {}", archived.len());
    let started = c.count_events(|e| matches!(e, Event::EpochStarted { gap: false, .. }));
    assert!(started >= 4 * 2, "every node started every epoch: {started}");
    assert_eq!(c.duplicate_starts(), 0);
    c.assert_no_work_lost();
}

#[test]
fn a_node_offline_across_cuts_brings_its_writes() {
    let mut c = Harness::new(3, 43, config());
    c.agent = huskies_engine::testkit::AgentModel::fixed(3_000);
    add(&mut c, 0, "warmup");
    c.run_until_settled(60_000).expect("settles");
    // Apart: node 3 runs the stories it claimed.
    let offered: Vec<StoryId> = (0..4).map(|k| add(&mut c, 0, &format!("offline-{k}"))).collect();
    let mine = cut_off_holding(&mut c, 3, &offered);
    // Meanwhile the rest of the cluster cuts epochs.
    for round in 0..3 {
        for k in 0..12 {
            add(&mut c, 0, &format!("r{round}-{k:02}"));
        }
        c.run_for(20_000);
        archive_done(&mut c);
        c.run_for(2_000);
    }
    assert!(c.engine(0).epoch() >= 2, "epochs were cut while node 3 was away");
    assert_eq!(c.engine(3).epoch(), 0);
    c.heal();
    c.run_until_settled(120_000).expect("settles after the heal");
    let epoch = c.engine(0).epoch();
    for i in 0..=3 {
        assert_eq!(c.engine(i).epoch(), epoch);
        for id in &mine {
            let v = c.engine(i).story(id).unwrap_or_else(|| panic!("{id} missing on node {i}"));
            assert_eq!(v.state.stage, Stage::Done, "{id} on node {i}");
        }
    }
    let carried =
        c.events.iter().any(|(_, n, e)| *n == 3 && matches!(e, Event::EpochStarted { carried, .. } if *carried > 0));
    assert!(carried, "node 3 carried its writes");
    c.assert_no_work_lost();
}

/// A node more than EPOCH_MEMORY epochs behind cannot tell which of its
/// writes the cluster saw: it carries none, says so, and keeps them in its
/// own cold storage.
#[test]
fn a_node_too_far_behind_carries_nothing_and_keeps_its_writes_cold() {
    // Many cuts is the point, whatever the backlog.
    let cfg = huskies_engine::Config { epoch_after_changes: 20, epoch_changes_per_live_story: 0, ..fast_config() };
    let mut c = Harness::new(2, 47, cfg);
    c.agent = huskies_engine::testkit::AgentModel::fixed(3_000);
    add(&mut c, 0, "warmup");
    c.run_until_settled(60_000).expect("settles");
    let lonely = add(&mut c, 0, "lonely");
    let mine = cut_off_holding(&mut c, 2, std::slice::from_ref(&lonely)).remove(0);
    let mut round = 0;
    while c.engine(0).epoch() <= huskies_engine::EPOCH_MEMORY + 1 {
        for k in 0..4 {
            add(&mut c, 0, &format!("r{round}-{k}"));
        }
        c.run_for(8_000);
        archive_done(&mut c);
        c.run_for(1_000);
        round += 1;
        assert!(round < 200, "the server keeps cutting");
    }
    let advanced =
        |c: &mut Harness, i: usize| c.engine(i).story(&mine).is_some_and(|v| v.state.stage != Stage::Current);
    assert!(advanced(&mut c, 2) && !advanced(&mut c, 0), "node 2 worked alone; the server never heard");
    c.heal();
    c.run_until_settled(240_000).expect("settles after the heal");
    let gap =
        c.events.iter().any(|(_, n, e)| *n == 2 && matches!(e, Event::EpochStarted { gap: true, carried: 0, .. }));
    assert!(gap, "node 2 reported the gap");
    assert_eq!(c.engine(2).epoch(), c.engine(0).epoch());
    let cold = c.nodes[2].storage.archives.values().any(|b| {
        ColdDoc::open(b).and_then(|mut d| d.story(&mine)).is_some_and(|s| s.view.state.stage != Stage::Current)
    });
    assert!(cold, "node 2 keeps its own write in cold storage");
}

/// A server restored from a backup taken before its last cut must not cut
/// that epoch again: the agents hold the real one and would refuse a
/// second base of it. The restored server cuts nothing while alone (it
/// cannot tell whether its epoch is the newest), takes the agents' base
/// when they link, and carries what it wrote alone.
#[test]
fn a_server_restored_from_an_older_backup_takes_the_agents_epoch() {
    let mut c = Harness::new(2, 53, config());
    let mut round = 0;
    let mut work_until_epoch = |c: &mut Harness, epoch: u64| {
        while c.engine(0).epoch() < epoch {
            for k in 0..12 {
                add(c, 0, &format!("r{round}-{k:02}"));
            }
            c.run_until_settled(120_000).expect("round settles");
            archive_done(c);
            c.run_for(3_000);
            round += 1;
            assert!(round < 50, "the server keeps cutting");
        }
    };
    work_until_epoch(&mut c, 1);
    let backup = c.nodes[0].storage.clone();
    let backup_epoch = c.engine(0).epoch();
    work_until_epoch(&mut c, backup_epoch + 1);
    c.run_until_settled(60_000).expect("settles");
    let agents_epoch = c.engine(1).epoch();
    assert!(agents_epoch > backup_epoch);

    // The server dies and comes back from the backup, cut off at first,
    // and takes more writes alone than an epoch holds.
    c.crash(0);
    c.nodes[0].storage = backup;
    c.isolate(0);
    c.start(0);
    assert_eq!(c.engine(0).epoch(), backup_epoch);
    let alone: Vec<StoryId> = (0..2 * LIMIT)
        .map(|k| {
            let id = StoryId::new(format!("alone-{k:03}")).unwrap();
            let new = NewStory { id: Some(id.clone()), title: format!("written alone {k}"), ..Default::default() };
            c.command(0, Command::AddStory(new)).expect("add");
            id
        })
        .collect();
    c.run_for(5_000);
    assert_eq!(c.engine(0).epoch(), backup_epoch, "no cut while alone");

    c.heal();
    c.run_until_settled(120_000).expect("settles after the heal");
    let rejected = c.count_events(|e| matches!(e, Event::PeerRejected { .. }));
    assert_eq!(rejected, 0, "no node refused another's base");
    let epoch = c.engine(1).epoch();
    assert!(epoch >= agents_epoch);
    for i in 0..=2 {
        assert_eq!(c.engine(i).epoch(), epoch, "node {i} in the cluster's epoch");
        for id in &alone {
            assert!(c.engine(i).story(id).is_some(), "{id}, written alone at the server, on node {i}");
        }
    }
    c.assert_no_work_lost();
}

/// With a large backlog the cut waits for history in proportion to it: a
/// cut reads every live story on every node, so a fixed count of changes
/// would make it ever more frequent per story done.
#[test]
fn a_large_backlog_makes_epochs_longer() {
    let epochs_after = |per_story: u64| {
        let cfg = huskies_engine::Config {
            epoch_after_changes: 20,
            epoch_changes_per_live_story: per_story,
            ..fast_config()
        };
        let mut c = Harness::new(2, 59, cfg);
        // 40 stories waiting (no agent works them: every node runs only
        // `qa`), so the backlog stays live; each move is one change.
        for i in 1..c.nodes.len() {
            c.command(i, Command::SetStages { stages: vec![Stage::Qa] }).expect("set stages");
        }
        for k in 0..40 {
            add(&mut c, 0, &format!("b{k:02}"));
        }
        c.run_for(5_000);
        for k in 0..40 {
            let id = StoryId::new(format!("b{k:02}")).unwrap();
            let edit = Command::EditStory { id, title: None, body: None, priority: Some(1) };
            c.command(0, edit).expect("priority");
        }
        c.run_for(10_000);
        c.engine(0).epoch()
    };
    // About 85 changes: a cut every 20 alone, none below 2 × 40 live.
    let (alone, in_proportion) = (epochs_after(0), epochs_after(2));
    assert!(alone >= 2, "a cut every 20 changes: {alone} epochs");
    assert!(in_proportion <= 1, "at most one cut past 80 changes with 40 live stories: {in_proportion} epochs");
}
