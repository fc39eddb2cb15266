//! Epochs in the in-process harness: history stays bounded, archived
//! stories go to cold storage, and a node offline across cuts brings its
//! writes along.

mod harness;

use harness::{Harness, fast_config};
use huskies_engine::cold::ColdDoc;
use huskies_engine::{Command, Event, NewStory, Stage, StoryId};

const LIMIT: u64 = 120;

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
    add(&mut c, 0, "warmup");
    c.run_until_settled(60_000).expect("settles");
    c.isolate(3);
    // Apart: node 3 adds and runs its own stories.
    let mine: Vec<StoryId> = (0..4).map(|k| add(&mut c, 3, &format!("offline-{k}"))).collect();
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
    let cfg = huskies_engine::Config { epoch_after_changes: 20, ..fast_config() };
    let mut c = Harness::new(2, 47, cfg);
    add(&mut c, 0, "warmup");
    c.run_until_settled(60_000).expect("settles");
    c.isolate(2);
    let mine = add(&mut c, 2, "lonely");
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
    c.heal();
    c.run_until_settled(120_000).expect("settles after the heal");
    let gap =
        c.events.iter().any(|(_, n, e)| *n == 2 && matches!(e, Event::EpochStarted { gap: true, carried: 0, .. }));
    assert!(gap, "node 2 reported the gap");
    assert_eq!(c.engine(2).epoch(), c.engine(0).epoch());
    assert!(c.engine(0).story(&mine).is_none(), "nothing was carried");
    let cold =
        c.nodes[2].storage.archives.values().any(|b| ColdDoc::open(b).and_then(|mut d| d.story(&mine)).is_some());
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
