//! Landing decisions of one merge node, driven input by input: what goes
//! back before the gates, and what a bisection concludes without a test.

use huskies_engine::landing::{BatchId, LandReport, LandResult, LandStory, LeftOut};
use huskies_engine::{
    Command, CommandId, Config, Engine, Event, Input, Millis, NewStory, NodeId, Output, RunOutcome, Stage, StoryId,
};

/// A merge node holding `n` stories, each pushed and queued, and the
/// `Output::Land` of its first batch.
struct Node {
    e: Engine,
    now: u64,
    outs: Vec<Output>,
}

impl Node {
    fn new(n: usize) -> Node {
        let config = Config { capacity: n as u32, land_batch: n, land_batch_wait_ms: 600_000, ..Config::default() };
        let mut e = Engine::new(config, NodeId::new("me").unwrap(), 1, Millis(0));
        e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
        let mut node = Node { e, now: 0, outs: Vec::new() };
        node.input(Input::Command { id: CommandId(0), command: Command::SetStages { stages: vec![Stage::Merge] } });
        for i in 0..n {
            let story =
                NewStory { id: Some(id(i)), title: format!("story {i}"), stage: Stage::Merge, ..Default::default() };
            node.input(Input::Command { id: CommandId(1 + i as u64), command: Command::AddStory(story) });
        }
        // Claims settle, runs start, succeed and push; the batch forms.
        for _ in 0..50 {
            node.tick(1_000);
            let outs = std::mem::take(&mut node.outs);
            for o in &outs {
                match o {
                    Output::StartRun { story, token, .. } => node.input(Input::RunFinished {
                        story: story.clone(),
                        token: *token,
                        outcome: RunOutcome::Succeeded,
                        report: Default::default(),
                    }),
                    Output::Push { story, token, .. } => {
                        node.input(Input::PushFinished { story: story.clone(), token: *token, outcome: Ok(()) })
                    }
                    _ => {}
                }
            }
            node.outs.extend(outs);
            if node.lands().next().is_some() {
                break;
            }
        }
        node
    }

    fn input(&mut self, input: Input) {
        self.e.handle(Millis(self.now), input);
        self.outs.extend(self.e.drain_sync_persist());
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.input(Input::Timeout);
    }

    fn lands(&self) -> impl Iterator<Item = (BatchId, &Vec<LandStory>, &Vec<LandStory>)> {
        self.outs.iter().filter_map(|o| match o {
            Output::Land { batch, stories, ahead, .. } => Some((*batch, stories, ahead)),
            _ => None,
        })
    }

    /// The newest batch asked for, and clears what was seen.
    fn take_land(&mut self) -> (BatchId, Vec<StoryId>, usize) {
        let (b, s, a) = self
            .lands()
            .last()
            .map(|(b, s, a)| (b, s.iter().map(|s| s.id.clone()).collect(), a.len()))
            .expect("a batch");
        self.outs.clear();
        (b, s, a)
    }

    fn finish(&mut self, batch: BatchId, report: LandReport) {
        self.input(Input::LandFinished { batch, report });
    }

    fn stage(&self, story: &StoryId) -> Stage {
        self.e.story(story).expect("known story").state.stage
    }

    fn sent_back(&self) -> Vec<StoryId> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                Output::Event(Event::SentBack { story, .. }) => Some(story.clone()),
                _ => None,
            })
            .collect()
    }
}

fn id(i: usize) -> StoryId {
    StoryId::new(format!("s{i}")).unwrap()
}

fn gate_failed() -> LandReport {
    LandReport {
        result: LandResult::GateFailed { gate: "sh ci.sh".into(), output_tail: "boom".into() },
        ..LandReport::default()
    }
}

fn landed(stories: &[StoryId]) -> LandReport {
    let commits = stories.iter().enumerate().map(|(i, s)| (s.clone(), format!("c{i}"))).collect();
    LandReport { result: LandResult::Landed { commits }, ..LandReport::default() }
}

#[test]
fn a_conflict_goes_back_before_the_gates_and_the_car_says_so() {
    let mut n = Node::new(3);
    let (batch, stories, _) = n.take_land();
    assert_eq!(stories.len(), 3);
    let left_out =
        LeftOut { conflicts: vec![(stories[1].clone(), "merge conflict in src/a.rs".into())], ..LeftOut::default() };
    n.input(Input::LandBuilt { batch, left_out });
    assert_eq!(n.sent_back(), vec![stories[1].clone()], "sent back at once");
    assert_eq!(n.stage(&stories[1]), Stage::Current);
    let testing = n.e.queue_view().testing;
    let (_, car) = testing.iter().find(|(node, _)| node.as_str() == "me").expect("our car");
    assert_eq!(car.left_out.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), vec![stories[1].clone()]);
    assert!(!car.stories.iter().any(|(s, _)| *s == stories[1]));
    // The final answer repeats the conflict: nothing is decided twice.
    n.outs.clear();
    let mut report = landed(&[stories[0].clone(), stories[2].clone()]);
    report.conflicts = vec![(stories[1].clone(), "merge conflict in src/a.rs".into())];
    n.finish(batch, report);
    assert!(n.sent_back().is_empty());
    assert_eq!(n.stage(&stories[0]), Stage::Done);
    assert_eq!(n.stage(&stories[2]), Stage::Done);
}

#[test]
fn bisection_sends_back_the_second_half_untested_when_the_first_lands() {
    let mut n = Node::new(2);
    let (b1, stories, _) = n.take_land();
    n.finish(b1, gate_failed());
    let (b2, retry, _) = n.take_land();
    assert_eq!(retry, stories, "retried once as it was");
    n.finish(b2, gate_failed());
    let (b3, first, _) = n.take_land();
    assert_eq!(first, vec![stories[0].clone()], "split: the first half alone");
    n.finish(b3, landed(&first));
    assert_eq!(n.stage(&stories[0]), Stage::Done);
    assert_eq!(n.sent_back(), vec![stories[1].clone()], "the failure is in the second half: no test of it");
    assert!(n.lands().next().is_none(), "nothing more to test");
    assert_eq!(n.stage(&stories[1]), Stage::Current);
}

#[test]
fn bisection_tests_the_second_half_when_the_first_fails_too() {
    let mut n = Node::new(2);
    let (b1, stories, _) = n.take_land();
    n.finish(b1, gate_failed());
    let (b2, _, _) = n.take_land();
    n.finish(b2, gate_failed());
    let (b3, _, _) = n.take_land();
    n.finish(b3, gate_failed());
    assert_eq!(n.sent_back(), vec![stories[0].clone()]);
    let (b4, second, _) = n.take_land();
    assert_eq!(second, vec![stories[1].clone()], "tested, not presumed guilty");
    n.finish(b4, landed(&second));
    assert_eq!(n.stage(&stories[1]), Stage::Done);
}
