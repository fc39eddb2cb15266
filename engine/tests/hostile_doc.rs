//! An enrolled node turned hostile writes well-formed Automerge changes
//! into its own replica and lets them sync (issue 21): honest nodes must
//! not crash, must not lose a story, must name the writer of what they
//! refused, and must finish the work.

mod harness;

use harness::{Harness, fast_config};
use huskies_engine::{NodeId, Stage, StoryId, Token};

/// Node 2 turns hostile after the stories are claimed; 0 and 1 are honest.
fn cluster(seed: u64) -> (Harness, Vec<StoryId>) {
    let mut c = Harness::new(2, seed, fast_config());
    c.run_for(2_000);
    let stories = c.add_stories(0, 6, Stage::Current);
    c.run_for(1_500);
    (c, stories)
}

fn hostile(
    c: &mut Harness,
    write: impl FnOnce(&mut automerge::AutoCommit, &huskies_engine::testkit::hostile_doc::Parts),
) {
    let now = c.now;
    c.engine(2).write_hostile(now, write);
}

/// Lets the hostile writes sync, then node 2 dies (its claims are
/// reclaimed) and the honest nodes settle; returns its name.
fn hostile_dies(c: &mut Harness) -> String {
    c.run_for(2_000);
    c.crash(2);
    c.run_until_settled(300_000).expect("settles");
    c.nodes[2].id.to_string()
}

fn refused_on(c: &mut Harness, i: usize) -> Vec<String> {
    c.engine(i).refusals().0.map(|r| r.to_string()).collect()
}

fn all_done(c: &mut Harness, stories: &[StoryId], i: usize) {
    for s in stories {
        let v = c.engine(i).story(s).unwrap_or_else(|| panic!("{s} vanished on node {i}")).state.clone();
        assert_eq!(v.stage, Stage::Done, "{s} on node {i}: {v:?}");
    }
}

/// The table's first row: a state whose token is 2^64-1, held by a node
/// that does not exist, crashed every agent that reclaimed it.
#[test]
fn a_token_past_any_claim_is_refused_and_the_story_goes_on() {
    let (mut c, stories) = cluster(21);
    let target = stories[0].clone();
    let mut forged = c.engine(2).story(&target).unwrap().state.clone();
    forged.token = Token(u64::MAX);
    forged.holder = Some(NodeId::new("ghost").unwrap());
    hostile(&mut c, |am, parts| {
        use automerge::{ReadDoc, transaction::Transactable};
        let Ok(Some((_, obj))) = am.get(&parts.stories, target.as_str()) else { panic!("no story map") };
        am.put(&obj, "state", forged.encode()).unwrap();
    });
    c.run_until_settled(300_000).expect("settles");
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
        let refused = refused_on(&mut c, i);
        let name = c.nodes[2].id.to_string();
        assert!(
            refused.iter().any(|r| r.starts_with(&format!("stories/{target}/state: token 18446744073709551615"))
                && r.ends_with(&format!("(written by {name})"))),
            "node {i}: {refused:?}"
        );
    }
}

/// The table's second row: `removed: true` on every story at a higher
/// token was taken for the admin's removal. Now a removal counts only when
/// the server wrote it, and a claim only in its writer's own name: the
/// last valid state stands and the work finishes.
#[test]
fn forged_removals_and_claims_in_anothers_name_are_refused() {
    let (mut c, stories) = cluster(22);
    let honest = c.nodes[1].id.clone();
    let forged: Vec<(StoryId, String)> = stories
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut st = c.engine(2).story(s).unwrap().state.clone();
            st.token = Token(st.token.0 + 1);
            if k % 2 == 0 {
                (st.removed, st.holder) = (true, None);
            } else {
                st.holder = Some(honest.clone());
            }
            (s.clone(), st.encode())
        })
        .collect();
    hostile(&mut c, |am, parts| {
        use automerge::{ReadDoc, transaction::Transactable};
        for (s, v) in &forged {
            let Ok(Some((_, obj))) = am.get(&parts.stories, s.as_str()) else { panic!("no story map") };
            am.put(&obj, "state", v.as_str()).unwrap();
        }
    });
    let name = hostile_dies(&mut c);
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
        let refused = refused_on(&mut c, i);
        for (k, s) in stories.iter().enumerate() {
            let what = if k % 2 == 0 {
                "a removal, which only the server may write".to_owned()
            } else {
                format!("a claim in the name of {honest}")
            };
            let line = format!("stories/{s}/state: {what} (written by {name})");
            assert!(refused.contains(&line), "node {i} lacks {line:?}: {refused:?}");
        }
    }
    // Only the server removes: an agent is told so.
    let err = c.command(1, huskies_engine::Command::RemoveStory { id: stories[0].clone() }).unwrap_err();
    assert_eq!(err, huskies_engine::CommandError::ServerOnly);
}

/// The table's flood row: an agent writes hundreds of valid-looking
/// stories. Stories are the server's to create: none reaches an honest
/// board or index, each is counted and named, and the work goes on.
#[test]
fn stories_an_agent_creates_never_reach_a_board() {
    let (mut c, stories) = cluster(23);
    hostile(&mut c, |am, parts| {
        use automerge::{ObjType, transaction::Transactable};
        for k in 0..300 {
            let o = am.put_object(&parts.stories, format!("flood-{k:03}").as_str(), ObjType::Map).unwrap();
            am.put(&o, "title", "flood").unwrap();
            am.put(&o, "state", r#"{"stage":"current","token":0}"#).unwrap();
        }
    });
    let name = hostile_dies(&mut c);
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
        assert_eq!(c.engine(i).stories().count(), stories.len(), "node {i}: only the server's stories");
        let refused = refused_on(&mut c, i);
        let line = "a write of `stories/flood-000` itself: stories are the server's to add and remove";
        assert!(
            refused.iter().any(|r| r.contains(line) && r.ends_with(&format!("(written by {name})"))),
            "node {i}: {refused:?}"
        );
    }
}

/// Values of the wrong type: a story's map replaced by a list, a state
/// that is a number, a title that is a counter. Those stories vanished
/// from every board; now the last valid values stand and the work ends.
#[test]
fn values_of_the_wrong_type_are_refused_and_no_story_vanishes() {
    let (mut c, stories) = cluster(22);
    let (a, b, d) = (stories[1].clone(), stories[2].clone(), stories[3].clone());
    hostile(&mut c, |am, parts| {
        use automerge::{ReadDoc, ScalarValue, transaction::Transactable};
        let Ok(Some((_, obj))) = am.get(&parts.stories, b.as_str()) else { panic!("no story map") };
        am.put(&obj, "state", 42).unwrap();
        let Ok(Some((_, obj))) = am.get(&parts.stories, d.as_str()) else { panic!("no story map") };
        am.put(&obj, "title", ScalarValue::counter(3)).unwrap();
        am.put(&obj, "priority", "high").unwrap();
    });
    // A story's map replaced: a change of its own, refused at the door.
    hostile(&mut c, |am, parts| {
        use automerge::{ObjType, transaction::Transactable};
        am.put_object(&parts.stories, a.as_str(), ObjType::List).unwrap();
    });
    // The server refuses that change at its door, so it reaches agent 1
    // over the mesh alone: heads first, then a sync a mesh interval later.
    c.run_for(2_000);
    for i in [0, 1] {
        let refused = refused_on(&mut c, i);
        for want in [format!("a write of `stories/{a}` itself"), format!("stories/{b}/state: state is a number")] {
            assert!(refused.iter().any(|r| r.contains(&want)), "node {i} lacks {want:?}: {refused:?}");
        }
        assert!(
            refused.iter().any(|r| r.starts_with(&format!("stories/{d}/title: title is a counter"))),
            "{refused:?}"
        );
        for s in &stories {
            assert!(c.engine(i).story(s).is_some(), "{s} vanished on node {i}");
        }
        assert_eq!(c.engine(i).story(&d).unwrap().title, format!("story {}", 3), "the last valid title stands");
    }
    hostile_dies(&mut c);
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
    }
}

/// The root maps deleted: stories and nodes. Refused at the door (the
/// change writes where only an epoch's base writes), on every honest node,
/// named with its writer; the maps stay and the work finishes.
#[test]
fn deleting_the_root_maps_is_refused_at_the_door() {
    let (mut c, stories) = cluster(23);
    hostile(&mut c, |am, _| {
        use automerge::transaction::Transactable;
        am.delete(automerge::ROOT, "stories").unwrap();
        am.delete(automerge::ROOT, "nodes").unwrap();
    });
    c.run_for(2_000);
    let name = c.nodes[2].id.to_string();
    for i in [0, 1] {
        assert!(!c.engine(i).root_damaged(), "node {i} applied the deletion");
        let refused = refused_on(&mut c, i);
        assert!(
            refused
                .iter()
                .any(|r| r.contains("a write to the root's `stories` map")
                    && r.ends_with(&format!("(written by {name})"))),
            "node {i}: {refused:?}"
        );
    }
    // An honest node restarting from its disk after that.
    c.crash(1);
    c.run_for(500);
    c.start(1);
    hostile_dies(&mut c);
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
    }
}

/// The same in a later epoch: the base's maps are as safe as the genesis'.
#[test]
fn deleting_the_root_maps_of_a_later_epoch_is_refused_too() {
    let config = huskies_engine::Config { epoch_after_changes: 40, ..fast_config() };
    let mut c = Harness::new(2, 24, config);
    c.run_for(2_000);
    let stories = c.add_stories(0, 6, Stage::Current);
    for _ in 0..30 {
        if c.engine(0).epoch() >= 1 && c.engine(1).epoch() >= 1 {
            break;
        }
        c.run_for(500);
    }
    assert!(c.engine(1).epoch() >= 1, "the cluster is past epoch 0");
    hostile(&mut c, |am, _| {
        use automerge::transaction::Transactable;
        am.delete(automerge::ROOT, "stories").unwrap();
    });
    c.run_for(2_000);
    for i in [0, 1] {
        assert!(!c.engine(i).root_damaged(), "node {i} applied the deletion");
    }
    hostile_dies(&mut c);
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
    }
}

/// A Byzantine node writes random hostile values, then dies. The honest
/// nodes never panic (their invariants run after every input), finish
/// every story, and agree. `HUSKIES_BYZANTINE_SEEDS=n` runs more seeds.
#[test]
fn byzantine_writes_never_panic_and_the_work_finishes() {
    let seeds: u64 = std::env::var("HUSKIES_BYZANTINE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let base: u64 = std::env::var("HUSKIES_BYZANTINE_SEED_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in base..base + seeds {
        let result = std::panic::catch_unwind(|| byzantine_seed(seed));
        if let Err(e) = result {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!(
                "byzantine seed {seed} failed: {}\nreplay: HUSKIES_BYZANTINE_SEED_BASE={seed} HUSKIES_BYZANTINE_SEEDS=1 cargo test -p huskies-engine --test hostile_doc byzantine",
                msg.unwrap_or_default()
            );
        }
    }
}

fn byzantine_seed(seed: u64) {
    let mut c = Harness::new(2, seed, fast_config());
    c.run_for(2_000);
    let stories = c.add_stories(0, 8, Stage::Current);
    let mut n = 0u64;
    let mut draw = move || {
        n += 1;
        huskies_engine::hash::stable_hash(&[b"byzantine", &seed.to_be_bytes(), &n.to_be_bytes()])
    };
    for _ in 0..6 {
        c.run_for(100 + draw() % 400);
        let attacks = 1 + draw() % 4;
        let mut d = draw();
        let mut sub = move || {
            d = huskies_engine::hash::stable_hash(&[&d.to_be_bytes()]);
            d
        };
        hostile(&mut c, |am, parts| {
            for _ in 0..attacks {
                huskies_engine::testkit::hostile_doc::random_attack(am, parts, &stories, &mut sub);
            }
        });
    }
    // The hostile node dies; its claims are reclaimed.
    c.crash(2);
    c.run_until_settled(600_000).unwrap_or_else(|| panic!("seed {seed}: the honest nodes did not settle"));
    for i in [0, 1] {
        all_done(&mut c, &stories, i);
    }
}
