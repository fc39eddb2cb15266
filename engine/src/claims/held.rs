//! The `Claims` part: what this node holds and remembers about its own
//! claims. Local, never replicated.
//!
//! The rules that decide claims (claims.rs) read the document through the
//! index; they change this part only through the methods below, which keep
//! its invariants: at most `capacity` runs, one run per story, a phase
//! change only under the run's own token.

use std::collections::{BTreeMap, BTreeSet};

use crate::story::StoryState;
use crate::{Millis, NodeId, Stage, StoryId, Token};

/// What a claimed story of ours is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Claimed; waiting `claim_settle_ms` for a concurrent claim to show.
    Settling,
    /// Asked the driver what a pre-restart worktree holds.
    Inspecting,
    Running,
    Pushing,
    /// Merge stage: pushed, waiting for a landing batch (landing.rs).
    Queued,
    /// Merge stage: in the landing batch the driver is working on.
    Landing,
}

/// One claim of ours, from claim to result.
#[derive(Debug, Clone)]
pub(crate) struct ActiveRun {
    pub token: Token,
    pub stage: Stage,
    pub phase: Phase,
    /// When the phase is given up as hung.
    pub deadline: Millis,
    /// Which attempt in this stage (1 = first).
    pub attempt: u32,
    /// What the driver reported when the run ended, for its record.
    pub report: Option<crate::runs::RunReport>,
    /// Reclaimed from this dead holder, whose claim had this token.
    pub resume: Option<(NodeId, Token)>,
}

#[derive(Debug, Default)]
pub(crate) struct Claims {
    runs: BTreeMap<StoryId, ActiveRun>,
    /// After a failed attempt we wait this long before claiming the story
    /// again (others may take it meanwhile).
    cooldown: BTreeMap<StoryId, Millis>,
    /// When each candidate was first seen free: the stagger that lets the
    /// preferred node claim first counts from here.
    free_since: BTreeMap<StoryId, Millis>,
    /// Stories with a worktree of ours the driver may still hold.
    worktrees: BTreeSet<StoryId>,
    /// Stories whose push the remote fenced, with the newer claim's token
    /// it showed and the release we wrote: we neither adopt nor claim them
    /// until our replica shows a state past that claim and not our own
    /// release (the newer claim's, or a later one's), or until the time
    /// given: a claim that never reaches us (its node's changes refused, or
    /// lost with it) must not keep the story from everyone for ever.
    fenced_by: BTreeMap<StoryId, (Token, Option<StoryState>, Millis)>,
    /// Our agent's API refused us: no claims until then.
    unavailable: Option<Unavailable>,
}

/// Longest pause of claims while our agent's API refuses us.
const MAX_UNAVAILABLE_PAUSE_MS: u64 = 10 * 60 * 1_000;

/// Our agent's API refused us (`RunOutcome::Unavailable`): no claims until
/// `until`; the pause doubles while it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unavailable {
    until: Millis,
    pause_ms: u64,
    reason: String,
}

impl Claims {
    /// Our agent's API refused us: claims pause for `first_ms`, or twice
    /// the last pause while it goes on (ten minutes at most). The pause.
    pub fn pause(&mut self, now: Millis, first_ms: u64, reason: &str) -> u64 {
        let pause_ms = match &self.unavailable {
            Some(p) => p.pause_ms.saturating_mul(2),
            None => first_ms,
        }
        .min(MAX_UNAVAILABLE_PAUSE_MS);
        self.unavailable =
            Some(Unavailable { until: now.saturating_add_ms(pause_ms), pause_ms, reason: reason.into() });
        pause_ms
    }

    /// Our agent worked: the next refusal pauses from the start again.
    pub fn resume(&mut self) {
        self.unavailable = None;
    }

    /// While claims are paused: until when, and why.
    pub fn paused(&self, now: Millis) -> Option<(Millis, &str)> {
        self.unavailable.as_ref().filter(|u| u.until > now).map(|u| (u.until, u.reason.as_str()))
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn free_slots(&self, capacity: u32) -> u32 {
        capacity.saturating_sub(u32::try_from(self.runs.len()).unwrap_or(u32::MAX))
    }

    pub fn run(&self, story: &StoryId) -> Option<&ActiveRun> {
        self.runs.get(story)
    }

    pub fn runs(&self) -> impl Iterator<Item = (&StoryId, &ActiveRun)> {
        self.runs.iter()
    }

    /// We run `story`, or the remote fenced our last push of it: either way
    /// it is not ours to adopt or claim now.
    pub fn is_busy_with(&self, story: &StoryId) -> bool {
        self.runs.contains_key(story) || self.fenced_by.contains_key(story)
    }

    pub fn is_cooling(&self, story: &StoryId, now: Millis) -> bool {
        self.cooldown.get(story).is_some_and(|until| *until > now)
    }

    /// Starts tracking a claim of ours.
    pub fn begin(&mut self, story: StoryId, run: ActiveRun, capacity: u32) {
        assert!(!self.runs.contains_key(&story), "a second run of {story}");
        assert!(!self.fenced_by.contains_key(&story), "a run of {story}, fenced at the remote");
        if run.phase != Phase::Inspecting {
            // Adopted orphans may exceed a capacity lowered since they were
            // claimed; fresh claims never do.
            assert!(self.free_slots(capacity) > 0, "claim of {story} with no free slot");
        }
        self.free_since.remove(&story);
        self.runs.insert(story, run);
    }

    /// Stops tracking a claim (finished, failed, lost or released).
    pub fn end(&mut self, story: &StoryId) -> Option<ActiveRun> {
        self.runs.remove(story)
    }

    /// Stops tracking every claim (we leave, or were revoked).
    pub fn end_all(&mut self) -> BTreeMap<StoryId, ActiveRun> {
        std::mem::take(&mut self.runs)
    }

    /// Is our run of `story` at `token` in `phase`? Anything else is a
    /// stale answer from the driver.
    pub fn is_live(&self, story: &StoryId, token: Token, phase: Phase) -> bool {
        self.runs.get(story).is_some_and(|r| r.token == token && r.phase == phase)
    }

    /// Moves our run of `story` to `phase` until `deadline`.
    pub fn enter(&mut self, story: &StoryId, token: Token, phase: Phase, deadline: Millis) {
        let Some(run) = self.runs.get_mut(story) else { panic!("{phase:?} of {story}, which we do not run") };
        assert_eq!(run.token, token, "{phase:?} of {story} under a token not the run's");
        assert!(phase != Phase::Settling && phase != Phase::Inspecting, "runs enter {phase:?} only when they begin");
        run.phase = phase;
        run.deadline = deadline;
    }

    pub fn set_report(&mut self, story: &StoryId, report: crate::runs::RunReport) {
        if let Some(run) = self.runs.get_mut(story) {
            run.report = Some(report);
        }
    }

    /// Claims whose settling window has passed.
    pub fn settled(&self, now: Millis) -> Vec<StoryId> {
        self.runs
            .iter()
            .filter(|(_, r)| r.phase == Phase::Settling && r.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Runs whose phase outlived its deadline.
    pub fn expired(&self, now: Millis) -> Vec<(StoryId, ActiveRun)> {
        self.runs.iter().filter(|(_, r)| r.deadline <= now).map(|(id, r)| (id.clone(), r.clone())).collect()
    }

    /// The earliest settling claim: this part's deadline for `poll_timeout`
    /// (hung phases are found by the periodic scan).
    pub fn next_settle_at(&self) -> Option<Millis> {
        self.runs.values().filter(|r| r.phase == Phase::Settling).map(|r| r.deadline).min()
    }

    pub fn note_worktree(&mut self, story: &StoryId) {
        self.worktrees.insert(story.clone());
    }

    /// Forgets the worktree of `story`; true if we had one to prune.
    pub fn forget_worktree(&mut self, story: &StoryId) -> bool {
        self.worktrees.remove(story)
    }

    /// The story left the document (archived at an epoch's cut): nothing
    /// of it is kept. True if we had a worktree to prune.
    pub fn forget(&mut self, story: &StoryId) -> bool {
        assert!(!self.runs.contains_key(story), "forgetting {story} while we run it");
        self.cooldown.remove(story);
        self.free_since.remove(story);
        self.fenced_by.remove(story);
        self.worktrees.remove(story)
    }

    /// The remote refused our push of `story`: a claim at `by` holds it.
    pub fn fence(&mut self, story: &StoryId, by: Token, released: Option<StoryState>, until: Millis) {
        assert!(!self.runs.contains_key(story), "fencing {story} while we still run it");
        self.fenced_by.insert(story.clone(), (by, released, until));
    }

    pub fn cool_down(&mut self, story: &StoryId, until: Millis) {
        self.cooldown.insert(story.clone(), until);
    }

    /// An operator asked for the story to be tried again: no waiting.
    pub fn clear_cooldown(&mut self, story: &StoryId) {
        self.cooldown.remove(story);
    }

    /// The replica shows `state` for `story`: lift a fence it passed, and
    /// restart the stagger of a story that is no longer free.
    pub fn observe(&mut self, story: &StoryId, state: &StoryState) {
        if self.fenced_by.get(story).is_some_and(|(by, ours, _)| state.token >= *by && ours.as_ref() != Some(state)) {
            self.fenced_by.remove(story);
        }
        if state.holder.is_some() || !state.is_claimable_stage() {
            self.free_since.remove(story);
        }
    }

    /// When each of `candidates` was first seen free (now, for new ones).
    /// Stories no longer candidates are forgotten, so their stagger
    /// restarts if they become free again; spent cooldowns are dropped.
    pub fn free_since(&mut self, candidates: &BTreeSet<StoryId>, now: Millis) -> Vec<(StoryId, Millis)> {
        self.free_since.retain(|id, _| candidates.contains(id));
        self.cooldown.retain(|_, until| *until > now);
        self.fenced_by.retain(|_, (_, _, until)| *until > now);
        let since =
            candidates.iter().map(|id| (id.clone(), *self.free_since.entry(id.clone()).or_insert(now))).collect();
        assert!(self.free_since.len() == candidates.len());
        since
    }

    /// This part's own invariants, for the debug checks after each input;
    /// `stories` is how many the index knows.
    pub fn check(&self, stories: usize) {
        assert!(self.runs.values().all(|r| r.attempt >= 1), "a run with attempt 0");
        assert!(self.runs.keys().all(|id| !self.fenced_by.contains_key(id)), "a run of a fenced story");
        assert!(self.free_since.keys().all(|id| !self.runs.contains_key(id)), "a story both free and ours");
        // Everything here is about a story the document knows: bounded by it.
        for (what, n) in
            [("cooldowns", self.cooldown.len()), ("fences", self.fenced_by.len()), ("worktrees", self.worktrees.len())]
        {
            assert!(n <= stories, "{n} {what} for {stories} stories");
        }
    }
}
