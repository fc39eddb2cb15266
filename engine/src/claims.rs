//! Claiming, running, finishing and reclaiming stories.

use std::cmp::Reverse;
use std::collections::BTreeSet;

mod held;

pub(crate) use held::{ActiveRun, Claims, Phase};

use crate::hash::stable_hash;
use crate::story::{RunResult, StoryState};
use crate::{Engine, Event, Millis, NodeId, Output, RunOutcome, StoryId, Token};

/// Free stories a scan ranks, per free slot of ours.
const SCAN_WINDOW_PER_SLOT: usize = 8;
const MIN_SCAN_WINDOW: usize = 64;

impl Engine {
    pub(crate) fn free_slots(&self) -> u32 {
        self.claims.free_slots(self.config.capacity)
    }

    /// Claims the document says we hold but we are not working on: left by
    /// a previous incarnation, or revived by a merge. Ask the driver what
    /// the worktree holds, then push or release (handle_worktree_inspected).
    /// Without this an orphaned claim of a live node would never move.
    pub(crate) fn adopt_orphaned_claims(&mut self) {
        let orphans: Vec<StoryId> =
            self.index.held_by(&self.node).filter(|id| !self.claims.is_busy_with(id)).cloned().collect();
        for story in orphans {
            let state = &self.index.known(&story).state;
            let token = state.token;
            let run = ActiveRun {
                token,
                stage: state.stage,
                phase: Phase::Inspecting,
                deadline: self.now.saturating_add_ms(self.config.run_timeout_for(state.stage)),
                attempt: state.attempts + 1,
                report: None,
                resume: None,
            };
            self.claims.begin(story.clone(), run, self.config.capacity);
            self.claims.note_worktree(&story);
            self.outbox.push(Output::InspectWorktree { story, token });
        }
    }

    /// Notes holders we have never heard (they get one timeout of grace)
    /// and reports nodes that just died.
    pub(crate) fn scan_liveness(&mut self) {
        let now = self.now;
        let holders: Vec<NodeId> = self.index.holders().filter(|h| **h != self.node).cloned().collect();
        for node in self.liveness.scan_holders(&holders, now) {
            self.emit(Event::NodeDead { node });
        }
    }

    /// Is `story` free for us to claim right now, and if reclaiming, from whom?
    pub(crate) fn claimable(&self, id: &StoryId) -> Option<Option<NodeId>> {
        let view = self.index.story(id)?;
        let s = &view.state;
        if !s.is_claimable_stage() || !self.config.stages.contains(&s.stage) {
            return None;
        }
        if self.claims.is_busy_with(id) || self.claims.is_cooling(id, self.now) {
            return None;
        }
        match &s.holder {
            None => Some(None),
            Some(h) if *h != self.node && !self.liveness.is_alive(h, self.now) => Some(Some(h.clone())),
            Some(_) => None,
        }
    }

    /// How many live nodes with free slots rank above us for `story`, and
    /// our own affinity to it. The preferred node (rank 0) claims at once,
    /// rank r after r staggers.
    fn rank(&self, story: &StoryId) -> (u64, u64) {
        let key = |n: &NodeId| stable_hash(&[story.as_str().as_bytes(), n.as_str().as_bytes()]);
        let ours = key(&self.node);
        let rank =
            self.liveness.alive(self.now).filter(|(n, free)| *free > 0 && **n != self.node && key(n) > ours).count()
                as u64;
        (rank, ours)
    }

    pub(crate) fn scan_claims(&mut self) {
        let mut slots = self.free_slots();
        if slots == 0 || self.lifecycle != crate::engine::Lifecycle::Running || self.claims_paused().is_some() {
            return;
        }
        // A spent daily budget stops the agents' stages; landing tested
        // work goes on (ledger.rs).
        let budget_spent = self.daily_budget_spent().is_some();

        let now = self.now;
        let dead_held = self
            .index
            .holders()
            .filter(|h| **h != self.node && !self.liveness.is_alive(h, now))
            .flat_map(|h| self.index.held_by(h).cloned());
        // A scan looks at a bounded window of free stories (in claim order:
        // later stages, higher priority, older first), not all of them: ranking every free story
        // made a scan of 10,000 free stories cost 4x the claims it made.
        // Every node sees the same window, and rendezvous ranking spreads
        // the window's stories over the nodes.
        let window = (slots as usize).saturating_mul(SCAN_WINDOW_PER_SLOT).max(MIN_SCAN_WINDOW);
        let free = self.index.free().filter(|k| self.claimable(&k.id).is_some()).take(window).map(|k| k.id.clone());
        let mut candidates: BTreeSet<StoryId> = free.chain(dead_held).collect();
        candidates.retain(|id| self.claimable(id).is_some());
        let stagger = self.config.claim_stagger_ms;
        let mut ready = Vec::new();
        for (id, since) in self.claims.free_since(&candidates, now) {
            let (rank, affinity) = self.rank(&id);
            if now.saturating_sub(since) >= rank.saturating_mul(stagger) {
                let v = &self.index.known(&id);
                let order = (Reverse(v.state.stage), Reverse(v.priority), v.created);
                ready.push((order, rank, Reverse(affinity), id));
            }
        }
        // Among the stories we may claim now (the stagger already held
        // back those others are preferred for): finish work before
        // starting work (later stages first), higher priority, older, then
        // the stories we are most preferred for. Ordering by our own hash,
        // not by id, keeps nodes that free up together from all picking
        // the same first story when heartbeats still say everyone is busy
        // (stories added in one batch share a creation time rarely, but
        // tests and imports do).
        ready.sort();
        // One change for the scan's claims: a commit per claim cost more
        // than the claims themselves.
        self.doc.begin_batch();
        for (_, _, _, id) in ready {
            if slots == 0 {
                break;
            }
            if budget_spent && self.index.known(&id).state.stage.spends() {
                continue;
            }
            if let Some(from) = self.claimable(&id) {
                if let Some(reason) = self.over_budget(&id, 0) {
                    self.give_up_over_budget(&id, reason);
                    continue;
                }
                self.claim(&id, from);
                slots -= 1;
            }
        }
        self.doc.end_batch();
    }

    fn claim(&mut self, id: &StoryId, reclaimed_from: Option<NodeId>) {
        let mut state = self.index.known(id).state.clone();
        assert!(state.is_claimable_stage(), "claim of {id} in stage {}", state.stage);
        let resume = reclaimed_from.clone().map(|n| (n, state.token));
        state.token = state.token.next();
        state.holder = Some(self.node.clone());
        let (stage, token) = (state.stage, state.token);
        self.write_state(id, state);
        // The run starts only after `claim_settle_ms`: a concurrent claim
        // made before ours was visible arrives within that window, and the
        // loser then never starts at all.
        let deadline = self.now.saturating_add_ms(self.config.claim_settle_ms);
        let attempt = self.index.known(id).state.attempts + 1;
        let run = ActiveRun { token, stage, phase: Phase::Settling, deadline, attempt, report: None, resume };
        self.claims.begin(id.clone(), run, self.config.capacity);
        assert!(self.claims.len() <= self.config.capacity as usize, "{} runs over capacity", self.claims.len());
        self.emit(Event::Claimed { story: id.clone(), stage, token, reclaimed_from });
    }

    /// Starts the runs whose claims survived their settling window.
    pub(crate) fn start_settled_runs(&mut self) {
        let now = self.now;
        for id in self.claims.settled(now) {
            let Some(run) = self.claims.run(&id) else { continue };
            let (token, stage, attempt, resume) = (run.token, run.stage, run.attempt, run.resume.clone());
            let held = self.index.story(&id).and_then(|v| v.state.holder.as_ref());
            assert_eq!(held, Some(&self.node), "a settled run of {id} whose claim is not ours");
            let deadline = now.saturating_add_ms(self.config.run_timeout_for(stage));
            self.claims.enter(&id, token, Phase::Running, deadline);
            let view = &self.index.known(&id);
            let (title, last_failure) = (view.title.clone(), view.state.reason.clone());
            let body = self.read_body(&id);
            self.claims.note_worktree(&id);
            self.outbox.push(Output::StartRun { story: id, title, stage, token, attempt, body, last_failure, resume });
        }
    }

    /// Our run of `story` at `token`, if it is still in `phase`.
    fn live_run(&mut self, story: &StoryId, token: Token, phase: Phase) -> bool {
        let ok = self.claims.is_live(story, token, phase);
        if !ok {
            self.emit(Event::StaleResult { story: story.clone(), token });
        }
        ok
    }

    fn enter_push(&mut self, story: &StoryId, token: Token) {
        let Some(stage) = self.claims.run(story).map(|r| r.stage) else { return };
        let deadline = self.now.saturating_add_ms(self.config.run_timeout_for(stage));
        self.claims.enter(story, token, Phase::Pushing, deadline);
        self.outbox.push(Output::Push { story: story.clone(), token, stage });
    }

    pub(crate) fn handle_run_finished(
        &mut self,
        story: StoryId,
        token: Token,
        outcome: RunOutcome,
        report: crate::runs::RunReport,
    ) {
        if !self.live_run(&story, token, Phase::Running) {
            return;
        }
        self.claims.set_report(&story, report);
        match outcome {
            RunOutcome::Succeeded => {
                self.claims.resume();
                self.enter_push(&story, token)
            }
            RunOutcome::Failed { reason } => self.fail(&story, reason),
            RunOutcome::Unavailable { reason } => self.release_unavailable(&story, reason),
        }
    }

    pub(crate) fn handle_push_finished(&mut self, story: StoryId, token: Token, outcome: Result<(), crate::PushError>) {
        if !self.live_run(&story, token, Phase::Pushing) {
            return;
        }
        match outcome {
            // A merge-stage push puts the story in line to land; landing
            // advances it (landing.rs).
            Ok(()) if self.claims.run(&story).is_some_and(|r| r.stage == crate::Stage::Merge) => {
                let deadline = self.now.saturating_add_ms(self.config.run_timeout_for(crate::Stage::Merge));
                self.claims.enter(&story, token, Phase::Queued, deadline);
                self.form_landing_batch();
            }
            Ok(()) => self.advance(&story, None),
            Err(e @ crate::PushError::Fenced { by_token: Some(_), .. }) => self.fenced(&story, e),
            // Commits huskies did not push hold the branch: no newer claim
            // to defer to, so this is a failed attempt (the next run starts
            // from those commits and fast-forwards).
            Err(e) => self.fail(&story, e.to_string()),
        }
    }

    /// The remote fenced our push: a newer claim holds the story. We drop
    /// the run and release our claim at the next token. The release cannot
    /// beat the newer claim's state (that has a higher token, or the same
    /// token with a held claim or a later stage, each of which outranks a
    /// release), but it frees the story when that state never reaches us:
    /// a story added twice under one id while apart keeps only one of its
    /// two maps, and the remote may hold the hidden one's push. We do not
    /// claim it again ourselves until our replica has caught up with that
    /// claim.
    pub(crate) fn fenced(&mut self, story: &StoryId, e: crate::PushError) {
        let Some(run) = self.claims.end(story) else { return };
        let reason = e.to_string();
        let mut state = self.index.known(story).state.clone();
        let mut released = None;
        if state.holder.as_ref() == Some(&self.node) && state.token == run.token {
            state.holder = None;
            state.token = state.token.next();
            state.reason = Some(crate::story::short_reason(&reason));
            released = Some(state.clone());
        }
        let reason_short = Some(crate::story::short_reason(&reason));
        let kind = crate::runs::RunOutcomeKind::Fenced;
        self.end_run_in_doc(story, released.clone(), &run, kind, reason_short);
        let (by, kept) = match e {
            crate::PushError::Fenced { by_token, kept } => (by_token, kept),
            crate::PushError::Failed(_) => (None, String::new()),
        };
        if let Some(by) = by {
            // Twice a claim's timeout: by then the newer claim has reached
            // us, or its node's heartbeats have long lapsed.
            let until = self.now.saturating_add_ms(self.config.claim_timeout_ms.saturating_mul(2));
            self.claims.fence(story, by, released, until);
        }
        self.emit(Event::Fenced { story: story.clone(), token: run.token, kept });
    }

    pub(crate) fn handle_worktree_inspected(&mut self, story: StoryId, token: Token, committed: bool) {
        if !self.live_run(&story, token, Phase::Inspecting) {
            return;
        }
        if committed {
            self.enter_push(&story, token);
        } else {
            // Interrupted, not failed: release without counting an attempt.
            self.claims.end(&story);
            let mut state = self.index.known(&story).state.clone();
            state.holder = None;
            state.token = state.token.next();
            self.write_state(&story, state);
        }
    }

    /// Landing put the story on the default branch, in `commit`.
    pub(crate) fn advance_landed(&mut self, story: &StoryId, commit: String) {
        let token = self.claims.run(story).map(|r| r.token);
        self.advance(story, Some(commit.clone()));
        if let Some(token) = token {
            self.emit(Event::Landed { story: story.clone(), token, commit });
        }
    }

    /// Accepts our result: the story moves on, the claim is released at the
    /// same token, and the result records who did it with which token (and,
    /// for the merge stage, the default-branch commit that landed it).
    fn advance(&mut self, story: &StoryId, landed: Option<String>) {
        let Some(run) = self.claims.end(story) else { return };
        let mut state = self.index.known(story).state.clone();
        // A run is dropped the moment its claim stops being the winning
        // one (apply_story), so a run we still hold is our claim.
        assert_eq!(state.token, run.token, "advance of {story} under a superseded token");
        assert_eq!(state.holder.as_ref(), Some(&self.node), "advance of {story}, which we do not hold");
        let from = state.stage;
        let Some(to) = from.next() else { return };
        state = StoryState {
            stage: to,
            token: run.token,
            holder: None,
            attempts: 0,
            failed: false,
            result: Some(RunResult { node: self.node.clone(), token: run.token, stage: from, landed }),
            reason: None,
            removed: false,
            // Landing's returns count until the story is done.
            returns: if to == crate::Stage::Done { 0 } else { state.returns },
            queued: if to == crate::Stage::Merge { self.index.next_queue_place() } else { state.queued },
        };
        self.end_run_in_doc(story, Some(state), &run, crate::runs::RunOutcomeKind::Succeeded, None);
        self.emit(Event::Advanced { story: story.clone(), from, to, token: run.token });
    }

    /// Ends our run of `story` and gives the state that releases its claim,
    /// for the caller to finish and write; `None` when we run nothing.
    fn end_and_release(&mut self, story: &StoryId) -> Option<(crate::claims::ActiveRun, StoryState)> {
        let run = self.claims.end(story)?;
        let mut state = self.index.known(story).state.clone();
        assert_eq!(state.token, run.token, "releasing {story} under a superseded token");
        assert_eq!(state.holder.as_ref(), Some(&self.node), "releasing {story}, which we do not hold");
        state.holder = None;
        // A release takes the next token: it must outrank every claim made
        // concurrently with ours at our token. Those lost to ours, and a
        // release at the same token would revive them after their nodes
        // had already stopped (seen in the swarm sim, seed 2).
        state.token = state.token.next();
        Some((run, state))
    }

    /// Releases the claim after a failed run or push; gives up after
    /// `max_attempts`. This node cools down before retrying it.
    pub(crate) fn fail(&mut self, story: &StoryId, reason: String) {
        let Some((run, mut state)) = self.end_and_release(story) else { return };
        state.attempts += 1;
        state.failed = state.attempts >= self.config.max_attempts_for(run.stage);
        let this_run = run.report.as_ref().and_then(|r| r.usage.as_ref()).map_or(0, |u| u.cost_micro_usd);
        let over = if run.stage.spends() { self.over_budget(story, this_run) } else { None };
        let reason = match over {
            Some(over) => {
                state.failed = true;
                format!("{over}; {reason}")
            }
            None => reason,
        };
        state.reason = Some(crate::story::short_reason(&reason));
        let (attempts, gave_up) = (state.attempts, state.failed);
        let why = Some(crate::story::short_reason(&reason));
        self.end_run_in_doc(story, Some(state), &run, crate::runs::RunOutcomeKind::Failed, why);
        self.emit(Event::RunFailed { story: story.clone(), token: run.token, attempts, gave_up, reason });
    }

    /// Our agent could not work (its API): the claim goes back at the next
    /// token with the attempts unchanged, and we pause claiming.
    fn release_unavailable(&mut self, story: &StoryId, reason: String) {
        let Some((run, mut state)) = self.end_and_release(story) else { return };
        let why = crate::story::short_reason(&format!("not counted, {} could not run it: {reason}", self.node));
        state.reason = Some(why.clone());
        self.end_run_in_doc(story, Some(state), &run, crate::runs::RunOutcomeKind::Failed, Some(why));
        let first_ms = self.config.retry_backoff_ms.max(1_000).saturating_mul(4);
        let pause_ms = self.claims.pause(self.now, first_ms, &reason);
        // Our own next try of this story waits longer still: others first.
        self.claims.cool_down(story, self.now.saturating_add_ms(pause_ms.saturating_mul(2)));
        self.emit(Event::RunFailed {
            story: story.clone(),
            token: run.token,
            attempts: self.index.known(story).state.attempts,
            gave_up: false,
            reason,
        });
    }

    /// While our agent's API refuses us: the reason and until when.
    pub fn claims_paused(&self) -> Option<(Millis, &str)> {
        self.claims.paused(self.now)
    }

    /// Stops and fails phases that outlived `run_timeout_ms` (hung agents,
    /// pushes or inspections the driver never answered).
    pub(crate) fn expire_runs(&mut self) {
        self.extend_progressing_landing();
        let now = self.now;
        for (story, run) in self.claims.expired(now) {
            self.stop_process(&story, &run);
            self.fail(&story, format!("{:?} timed out", run.phase).to_lowercase());
        }
    }

    /// Tells the driver to stop the agent of `run` if it still runs (the
    /// other phases have no process of ours to stop).
    fn stop_process(&mut self, story: &StoryId, run: &ActiveRun) {
        if run.phase == Phase::Running {
            self.outbox.push(Output::StopRun { story: story.clone(), token: run.token });
        }
    }

    /// Ends our run of `story`, if we have one, stopping its agent: the
    /// one way a run ends other than by its result.
    pub(crate) fn drop_run(&mut self, story: &StoryId) -> Option<ActiveRun> {
        let run = self.claims.end(story)?;
        self.stop_process(story, &run);
        Some(run)
    }

    /// Ends every run of ours (we leave, or were revoked).
    pub(crate) fn drop_all_runs(&mut self) {
        for (story, run) in self.claims.end_all() {
            self.stop_process(&story, &run);
        }
    }
}
