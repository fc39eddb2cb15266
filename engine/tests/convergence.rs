//! Property: whatever commands land on the server (or are refused by the
//! agents they are sent to), in whatever delivery order and under whatever
//! partitions, the replicas converge to identical heads and identical
//! story views once the network heals.

mod harness;

use harness::{AgentModel, Harness, fast_config};
use huskies_engine::{Command, Stage, StoryId, StoryView};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add { node: usize, story: u8 },
    Move { node: usize, story: u8, stage: usize },
    Cut { node: usize },
    Heal,
    Wait { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=3usize, 0..8u8).prop_map(|(node, story)| Op::Add { node, story }),
        3 => (1..=3usize, 0..8u8, 0..6usize).prop_map(|(node, story, stage)| Op::Move { node, story, stage }),
        1 => (1..=3usize).prop_map(|node| Op::Cut { node }),
        1 => Just(Op::Heal),
        2 => (1..800u64).prop_map(|ms| Op::Wait { ms }),
    ]
}

fn views(c: &mut Harness, i: usize) -> Vec<(StoryId, StoryView)> {
    c.engine(i).stories().map(|(id, v)| (id.clone(), v.clone())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(seed in any::<u64>(), jitter in 0..40u64, ops in prop::collection::vec(op(), 1..40)) {
        let mut cfg = fast_config();
        cfg.capacity = 1;
        let mut c = Harness::new(3, seed, cfg);
        c.jitter_ms = jitter;
        c.agent = AgentModel::fixed(300);
        c.run_for(500);
        for op in ops {
            match op {
                // Story commands run on the server (node 0), concurrent
                // with the agents' claims under partitions; one in four
                // goes to an agent, which refuses it.
                Op::Add { node, story } => {
                    let id = StoryId::new(format!("p{story}")).unwrap();
                    let at = if node == 3 { node } else { 0 };
                    let _ = c.command(at, Command::AddStory(huskies_engine::NewStory { id: Some(id), title: "t".into(), stage: Stage::Current, ..Default::default() }));
                }
                Op::Move { node, story, stage } => {
                    let id = StoryId::new(format!("p{story}")).unwrap();
                    let at = if node == 3 { node } else { 0 };
                    let _ = c.command(at, Command::MoveStory { id, stage: Stage::ALL[stage] });
                }
                Op::Cut { node } => c.isolate(node),
                Op::Heal => c.heal(),
                Op::Wait { ms } => c.run_for(ms),
            }
        }
        c.heal();
        let took = c.run_until_settled(120_000);
        prop_assert!(took.is_some(), "did not settle");
        let reference = views(&mut c, 0);
        for i in 1..=3 {
            prop_assert_eq!(&views(&mut c, i), &reference);
        }
    }
}
