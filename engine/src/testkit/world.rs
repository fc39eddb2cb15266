//! One output dispatch for both simulators (the in-process harness and the
//! madsim nodes): [`carry_out`] maps each engine output to a method of the
//! node's [`World`], so a new output is one new method both must answer,
//! and the parts of a node's surroundings that are not about transport or
//! timing (what a worktree holds) are one model, [`Worktrees`], which both
//! answer `InspectWorktree` from.

use std::collections::BTreeMap;

use crate::landing::{BatchId, LandStory};
use crate::{CommandError, CommandId, ConnId, Event, Output, PersistKind, PersistSeq, Reply, Stage, StoryId, Token};

/// What a simulated node's surroundings do with each output. Each method
/// says how that simulator carries one kind out: its network, clock and
/// agent model differ; the mapping from outputs does not.
pub trait World {
    fn persist(&mut self, seq: PersistSeq, kind: PersistKind, bytes: Vec<u8>);
    fn send(&mut self, conn: ConnId, bytes: Vec<u8>);
    fn dial(&mut self, conn: ConnId, address: String);
    fn hang_up(&mut self, conn: ConnId);
    fn start_run(&mut self, story: StoryId, stage: Stage, token: Token);
    fn stop_run(&mut self, story: StoryId, token: Token);
    fn push(&mut self, story: StoryId, token: Token);
    fn land(&mut self, batch: BatchId, stories: Vec<LandStory>, ahead: Vec<LandStory>);
    fn cancel_land(&mut self, batch: BatchId);
    /// Runs `f` on the node's worktrees, which outlive its process.
    fn worktrees<R>(&mut self, f: impl FnOnce(&mut Worktrees) -> R) -> R;
    /// Feed `WorktreeInspected` with `committed`, as this simulator times it.
    fn answer_inspection(&mut self, story: StoryId, token: Token, committed: bool);
    fn reply(&mut self, id: CommandId, result: Result<Reply, CommandError>);
    fn event(&mut self, event: Event);
}

/// Carries one output out in `world`.
pub fn carry_out(world: &mut impl World, out: Output) {
    match out {
        Output::Persist { seq, kind, bytes } => world.persist(seq, kind, bytes),
        Output::Send { conn, bytes } => world.send(conn, bytes),
        Output::Dial { conn, address } => world.dial(conn, address),
        Output::HangUp { conn } => world.hang_up(conn),
        Output::StartRun { story, stage, token, .. } => world.start_run(story, stage, token),
        Output::StopRun { story, token } => world.stop_run(story, token),
        Output::Push { story, token, .. } => world.push(story, token),
        Output::Land { batch, stories, ahead, .. } => world.land(batch, stories, ahead),
        Output::CancelLand { batch } => world.cancel_land(batch),
        Output::InspectWorktree { story, token } => {
            let committed = world.worktrees(|w| w.committed(&story, token));
            world.answer_inspection(story, token, committed);
        }
        Output::PruneWorktree { story } => world.worktrees(|w| w.prune(&story)),
        Output::Reply { id, result } => world.reply(id, result),
        Output::Event(e) => world.event(e),
    }
}

/// What each story's worktree holds: the claim whose run finished with a
/// commit not pushed yet. It survives a crash, as a worktree on disk does.
#[derive(Debug, Default, Clone)]
pub struct Worktrees {
    unpushed: BTreeMap<StoryId, Token>,
}

impl Worktrees {
    /// A run under `token` finished and committed.
    pub fn committed_by(&mut self, story: &StoryId, token: Token) {
        self.unpushed.insert(story.clone(), token);
    }

    /// The story's branch was pushed (or the push was fenced): nothing is
    /// left unpushed.
    pub fn pushed(&mut self, story: &StoryId) {
        self.unpushed.remove(story);
    }

    /// Does the worktree hold the finished, unpushed commit of `token`?
    pub fn committed(&self, story: &StoryId, token: Token) -> bool {
        self.unpushed.get(story) == Some(&token)
    }

    pub fn prune(&mut self, story: &StoryId) {
        self.unpushed.remove(story);
    }
}
