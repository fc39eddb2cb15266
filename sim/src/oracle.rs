//! The checker. Nodes report what their engines output; the oracle checks
//! safety continuously and convergence and liveness at the end. Every
//! violation names its invariant (`violation.rs`) and prints as a line
//! starting with SAFETY or LIVENESS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use huskies_engine::testkit::TraceHash;

use crate::violation::{Invariant, Violation};
use huskies_engine::{Event, NodeId, Output, Stage, StoryId, StoryState, Token};

/// One replica's state as last published by its node.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub heads: Vec<String>,
    /// Shared by the views that are equal (`Oracle::publish`).
    pub stories: Arc<BTreeMap<StoryId, StoryState>>,
    pub save_len: usize,
    pub epoch: u64,
}

#[derive(Debug, Default)]
pub struct Oracle {
    pub trace_hash: TraceHash,
    pub violations: Vec<Violation>,
    pub max_mesh_peers: usize,
    pub mesh_cap: usize,
    /// Stories whose add was acknowledged.
    pub added: BTreeSet<StoryId>,
    /// Stories the server moved to archived (they may leave the live
    /// document at the next cut).
    pub archived: BTreeSet<StoryId>,
    /// Runs in progress: story -> node -> start time.
    pub running: BTreeMap<StoryId, BTreeMap<NodeId, u64>>,
    /// From this time on (after heal + claim timeout), two runs of one story
    /// overlapping for longer than `duplicate_grace_ms` are a violation.
    /// Concurrent claims are detected only after a merge, so a brief
    /// overlap is inherent; a lasting one means the loser never stopped.
    pub exclusive_from_ms: Option<u64>,
    pub duplicate_grace_ms: u64,
    /// Per (node, story): the last (stage, token) it showed, for monotonicity.
    seen: BTreeMap<(NodeId, StoryId), (Stage, Token)>,
    /// Every local accept: (story, from stage, token, node).
    pub advances: Vec<(StoryId, Stage, Token, NodeId)>,
    /// Pushes that reached the simulated git remote.
    pub pushes: BTreeSet<(StoryId, NodeId, Token)>,
    /// The simulated git remote, with compare-and-swap by claim token.
    pub remote: huskies_engine::testkit::remote::RemoteModel,
    /// Pushes the remote fenced.
    pub fenced: u64,
    /// The default branch, with compare-and-swap on its tip.
    pub trunk: huskies_engine::testkit::trunk::TrunkModel,
    /// Landing figures: stories landed, sent back, batches, splits, retries.
    pub landed: u64,
    pub sent_back: u64,
    pub batches: u64,
    pub batch_stories: u64,
    pub retries: u64,
    pub splits: u64,
    pub speculative_batches: u64,
    pub cancelled_batches: u64,
    /// When each story reached `merge` (first seen there), and when it
    /// landed: the queue's latency.
    pub reached_merge_ms: BTreeMap<StoryId, u64>,
    pub landed_after_ms: Vec<u64>,
    pub first_merge_ms: Option<u64>,
    pub last_landed_ms: u64,
    pub views: BTreeMap<NodeId, View>,
    pub starts: u64,
    /// Runs started per stage, in pipeline order (`Stage::ACTIVE`).
    pub starts_by_stage: [u64; 3],
    /// Runs failed because a landing (0) or its wait in the queue (1)
    /// outlived the run timeout; and stories given up (out of attempts).
    pub landing_timeouts: [u64; 2],
    pub given_up: u64,
    pub reclaims: u64,
    pub claim_losses: u64,
    /// `HUSKIES_TRACE_STORY=id` prints every output that mentions the story.
    pub trace_story: Option<String>,
    /// Every node of the cluster.
    pub members: BTreeSet<NodeId>,
    /// The Byzantine node, if any: its outputs and views are not checked
    /// (it is not honest), and no honest view may show what only it
    /// could have written.
    pub byzantine: Option<NodeId>,
    /// What each node told anyone (a reply, a run or push started, a claim
    /// announced): the story, and the lowest token its disk may hold for it
    /// from then on. A restart must read all of it back.
    revealed: BTreeMap<NodeId, BTreeMap<StoryId, Token>>,
    /// Restarts checked against what their node revealed.
    pub restarts_checked: u64,
}

impl Oracle {
    pub fn new(mesh_cap: usize) -> Oracle {
        Oracle { mesh_cap, trace_story: std::env::var("HUSKIES_TRACE_STORY").ok(), ..Oracle::default() }
    }

    pub fn violation(&mut self, invariant: Invariant, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(Violation { invariant, what });
        }
    }

    /// A node's view: kept for convergence and liveness, and checked
    /// against what only the Byzantine node could have written.
    pub fn publish(&mut self, node: &NodeId, view: View) {
        if self.byzantine.as_ref() == Some(node) {
            return;
        }
        if self.byzantine.is_some() {
            for (id, st) in view.stories.iter() {
                // The sims never remove a story and add only their own ids;
                // a holder is a member (no "ghost").
                let forged = if !self.added.contains(id) {
                    Some("a story the server never added".to_owned())
                } else if st.removed {
                    Some("a removal no admin asked for".to_owned())
                } else if st.holder.as_ref().is_some_and(|h| !self.members.contains(h)) {
                    Some(format!("held by {:?}, no member", st.holder))
                } else {
                    None
                };
                if let Some(what) = forged {
                    self.violation(
                        Invariant::ForgedValueShown,
                        format!("{node} shows {id}: {what} (only the Byzantine node wrote it)"),
                    );
                }
            }
        }
        // Converged replicas publish equal views: they share one copy (at
        // 200 x 10,000 the copies alone would be 2 million story states).
        let mut view = view;
        if let Some(same) = self.views.values().find(|v| v.heads == view.heads && v.stories == view.stories) {
            view.stories = same.stories.clone();
        }
        self.views.insert(node.clone(), view);
    }

    pub fn observe(&mut self, now_ms: u64, node: &NodeId, out: &Output) {
        if let Some(story) = &self.trace_story {
            let line = format!("{now_ms} {node} {out:?}");
            if line.contains(&format!("\"{story}\"")) || line.contains(&format!("/{story}/")) {
                println!("trace: {line}");
            }
        }
        // Message and snapshot bytes are folded as they are; the rest of
        // an output by its debug form.
        let head = format!("{now_ms} {node}");
        match out {
            Output::Send { conn, bytes } => {
                self.trace_hash.fold_parts(&[head.as_bytes(), b"send", &conn.0.to_be_bytes(), bytes])
            }
            Output::Persist { seq, kind, bytes } => {
                let what = format!("persist {seq:?} {kind:?}");
                self.trace_hash.fold_parts(&[head.as_bytes(), what.as_bytes(), bytes])
            }
            _ => self.trace_hash.fold(&format!("{head} {out:?}")),
        }
        self.note_revealed(node, out);
        match out {
            Output::StartRun { story, stage, .. } => {
                if *stage == Stage::Current {
                    self.trunk.work_started(story);
                }
                self.starts += 1;
                if let Some(i) = Stage::ACTIVE.iter().position(|s| s == stage) {
                    self.starts_by_stage[i] += 1;
                }
                self.running.entry(story.clone()).or_default().insert(node.clone(), now_ms);
            }
            Output::StopRun { story, .. } => self.run_ended(node, story),
            Output::Event(e) => self.observe_event(now_ms, node, e),
            _ => {}
        }
    }

    /// Keeps what `out` reveals of its node's document, for `check_restart`.
    fn note_revealed(&mut self, node: &NodeId, out: &Output) {
        let (story, token) = match out {
            Output::Reply { result: Ok(huskies_engine::Reply::Added { id }), .. } => (id, Token(0)),
            Output::StartRun { story, token, .. }
            | Output::Push { story, token, .. }
            | Output::Event(Event::Claimed { story, token, .. }) => (story, *token),
            _ => return,
        };
        let min = self.revealed.entry(node.clone()).or_default().entry(story.clone()).or_insert(token);
        *min = (*min).max(token);
    }

    /// A node restarted from its disk with `stories` (id, token): everything
    /// it revealed before it died must be there, at the token it revealed
    /// or later. Nothing may be revealed before it is durable, and no crash
    /// may lose a write that was confirmed.
    ///
    /// A write may also land without its outputs ever leaving (the crash
    /// came between the write and its confirmation): what such a write
    /// did is learned here, from the disk. Results this node wrote count
    /// as produced by it; archived stories count as archived.
    pub fn check_restart(&mut self, node: &NodeId, stories: impl Iterator<Item = (StoryId, StoryState)>) {
        if self.byzantine.as_ref() == Some(node) {
            return;
        }
        self.restarts_checked += 1;
        let stories: BTreeMap<StoryId, StoryState> = stories.collect();
        for (id, st) in &stories {
            if let Some(r) = st.result.as_ref().filter(|r| r.node == *node) {
                self.advances.push((id.clone(), r.stage, r.token, node.clone()));
            }
            if st.stage == Stage::Archived {
                self.archived.insert(id.clone());
            }
        }
        let Some(revealed) = self.revealed.get(node) else { return };
        let stored: BTreeMap<&StoryId, Token> = stories.iter().map(|(id, st)| (id, st.token)).collect();
        let mut found = Vec::new();
        for (story, min) in revealed {
            match stored.get(story) {
                Some(t) if t >= min => {}
                Some(t) => {
                    found.push(format!("{node} restarted with {story} at token {t}, below the {min} it revealed"))
                }
                // Archived stories leave the live document at a cut.
                None if self.archived.contains(story) => {}
                None => found.push(format!("{node} restarted without {story}, which it revealed at token {min}")),
            }
        }
        for f in found {
            self.violation(Invariant::RevealedLost, f);
        }
    }

    pub fn run_ended(&mut self, node: &NodeId, story: &StoryId) {
        if let Some(r) = self.running.get_mut(story) {
            r.remove(node);
            if r.is_empty() {
                self.running.remove(story);
            }
        }
    }

    pub fn node_crashed(&mut self, node: &NodeId) {
        for r in self.running.values_mut() {
            r.remove(node);
        }
        self.running.retain(|_, r| !r.is_empty());
    }

    /// Flags stories that have run on two nodes at once for longer than the
    /// grace period, after the heal.
    pub fn check_overlaps(&mut self, now_ms: u64) {
        let Some(from) = self.exclusive_from_ms else { return };
        let mut found = Vec::new();
        for (story, runners) in &self.running {
            let mut starts: Vec<u64> = runners.values().map(|s| (*s).max(from)).collect();
            starts.sort_unstable();
            if starts.len() > 1 && now_ms >= starts[1] + self.duplicate_grace_ms {
                found.push(format!(
                    "{story} has run on {:?} at once for over {} ms",
                    runners.keys().collect::<Vec<_>>(),
                    self.duplicate_grace_ms
                ));
            }
        }
        for f in found {
            self.violation(Invariant::DuplicateRun, f);
        }
    }

    /// Landing: a landed commit must be the story's on the default
    /// branch; figures for the report.
    fn observe_landing(&mut self, now_ms: u64, node: &NodeId, e: &Event) {
        if std::env::var("HUSKIES_DEBUG_LAND").is_ok()
            && matches!(e, Event::BatchStarted { .. } | Event::BatchCancelled { .. } | Event::BatchSplit { .. })
        {
            println!("{now_ms} {node} {e:?}");
        }
        match e {
            Event::StageChanged { story, to: Stage::Merge, .. }
            | Event::Advanced { story, to: Stage::Merge, .. }
            | Event::StoryAdded { story, stage: Stage::Merge } => {
                self.reached_merge_ms.entry(story.clone()).or_insert(now_ms);
                self.first_merge_ms.get_or_insert(now_ms);
            }
            Event::Landed { story, commit, .. } => {
                if std::env::var("HUSKIES_DEBUG_LAND").is_ok() {
                    println!("{now_ms} {node} landed {story}");
                }
                self.landed += 1;
                self.last_landed_ms = self.last_landed_ms.max(now_ms);
                if self.trunk.commit_of(story).as_ref() != Some(commit) {
                    let on = self.trunk.commit_of(story);
                    self.violation(
                        Invariant::LandedElsewhere,
                        format!("{node} says {story} landed in {commit}, the branch has {on:?}"),
                    );
                }
                if let Some(t) = self.reached_merge_ms.remove(story) {
                    self.landed_after_ms.push(now_ms.saturating_sub(t));
                }
            }
            Event::SentBack { story, reason, .. } => {
                if std::env::var("HUSKIES_DEBUG_LAND").is_ok() {
                    println!("{now_ms} {node} sent back {story}: {reason}");
                }
                self.sent_back += 1;
                // The wait counts from the first time it reached merge.
                self.trunk.returned(story);
            }
            Event::BatchStarted { size, retry, ahead, .. } => {
                self.batches += 1;
                self.speculative_batches += u64::from(*ahead > 0);
                self.batch_stories += *size as u64;
                self.retries += u64::from(*retry);
            }
            Event::BatchSplit { .. } => self.splits += 1,
            Event::BatchCancelled { .. } => self.cancelled_batches += 1,
            _ => {}
        }
    }

    fn observe_event(&mut self, now_ms: u64, node: &NodeId, e: &Event) {
        self.observe_landing(now_ms, node, e);
        match e {
            Event::Claimed { story, stage, token, reclaimed_from } => {
                self.check_monotonic(node, story, *stage, *token, false);
                if reclaimed_from.is_some() {
                    self.reclaims += 1;
                }
            }
            Event::StageChanged { story, from, to, token } => {
                // A stage only goes back under a higher token (a fence or a
                // user move), never by itself.
                self.check_monotonic(node, story, *to, *token, to < from);
            }
            Event::Advanced { story, from, token, .. } => {
                self.advances.push((story.clone(), *from, *token, node.clone()));
                self.run_ended(node, story);
            }
            Event::RunFailed { story, gave_up, reason, .. } => {
                if reason.starts_with("landing timed out") {
                    self.landing_timeouts[0] += 1;
                } else if reason.starts_with("queued timed out") {
                    self.landing_timeouts[1] += 1;
                }
                if *gave_up {
                    self.given_up += 1;
                }
                self.run_ended(node, story)
            }
            Event::ClaimLost { story, .. } => {
                self.claim_losses += 1;
                self.run_ended(node, story);
            }
            _ => {}
        }
    }

    fn check_monotonic(&mut self, node: &NodeId, story: &StoryId, stage: Stage, token: Token, backwards: bool) {
        let key = (node.clone(), story.clone());
        if let Some(&(prev_stage, prev_token)) = self.seen.get(&key) {
            if token < prev_token {
                self.violation(
                    Invariant::TokenWentBack,
                    format!("{node} saw {story}'s token go back {prev_token} -> {token}"),
                );
            }
            if backwards && token <= prev_token {
                self.violation(
                    Invariant::StageWentBack,
                    format!("{node} saw {story} regress {prev_stage} -> {stage} at {token}"),
                );
            }
        }
        self.seen.insert(key, (stage, token));
    }

    pub fn observe_mesh(&mut self, node: &NodeId, mesh: usize) {
        self.max_mesh_peers = self.max_mesh_peers.max(mesh);
        if mesh > self.mesh_cap {
            self.violation(Invariant::MeshCap, format!("{node} holds {mesh} mesh connections, cap {}", self.mesh_cap));
        }
    }

    /// All published views agree and every acknowledged story is finished.
    pub fn settled(&self, worked: &[Stage]) -> bool {
        let mut views = self.views.values();
        let Some(first) = views.next() else { return false };
        views.all(|v| v.heads == first.heads)
            && self
                .added
                .iter()
                // A story archived and absent from the live view left it
                // at an epoch's cut; the final check finds it in cold
                // storage (or calls it lost).
                .all(|s| match first.stories.get(s) {
                    Some(st) => !worked.contains(&st.stage) || st.failed,
                    None => self.archived.contains(s),
                })
    }

    /// Checks on the converged end state.
    /// `cold`: stories in the server's cold storage, archived (they left
    /// the live document at an epoch's cut).
    pub fn check_final(&mut self, worked: &[Stage], cold: &std::collections::BTreeSet<StoryId>) {
        for v in self.trunk.violations() {
            self.violation(Invariant::Trunk, v);
        }
        let on_trunk = self.trunk.landed();
        for (story, commit) in self.remote.lost() {
            self.violation(
                Invariant::CommitUnreachable,
                format!("{story}: the commit of claim {commit:?} is reachable from no ref"),
            );
        }
        let Some((first_node, first)) = self.views.iter().next().map(|(n, v)| (n.clone(), v.clone())) else {
            return self.violation(Invariant::NoView, "no node published a view".into());
        };
        if std::env::var_os("HUSKIES_DEBUG_VIEWS").is_some() {
            for (n, v) in &self.views {
                let differ: Vec<_> = v
                    .stories
                    .iter()
                    .filter(|(id, st)| first.stories.get(*id) != Some(*st))
                    .map(|(id, st)| format!("{id}:{:?}", st.stage))
                    .collect();
                let missing: Vec<_> = first.stories.keys().filter(|id| !v.stories.contains_key(*id)).collect();
                eprintln!(
                    "VIEW {n}: epoch {} heads {:?} save {} stories {} differ {:?} missing {:?}",
                    v.epoch,
                    v.heads,
                    v.save_len,
                    v.stories.len(),
                    differ,
                    missing
                );
            }
        }
        for (n, v) in self.views.clone() {
            if v.heads != first.heads {
                self.violation(Invariant::NotConverged, format!("{n} did not converge with {first_node}"));
            } else if v.stories != first.stories {
                self.violation(
                    Invariant::SameHeadsOtherStories,
                    format!("{n} has the same heads as {first_node} but other stories"),
                );
            }
        }
        for s in self.added.clone() {
            let Some(st) = first.stories.get(&s) else {
                if !cold.contains(&s) {
                    self.violation(
                        Invariant::StoryLost,
                        format!("acknowledged story {s} was lost (not live, not in cold storage)"),
                    );
                }
                continue;
            };
            if worked.contains(&st.stage) && !st.failed {
                self.violation(
                    Invariant::NotFinished,
                    format!("{s} is still in {} after the heal budget: {st:?}", st.stage),
                );
                continue;
            }
            let Some(result) = &st.result else { continue };
            // Done means on the default branch: exactly once, in the
            // commit the result names.
            if matches!(st.stage, Stage::Done | Stage::Archived) && !st.removed {
                let on = self.trunk.commit_of(&s);
                if on_trunk.get(&s).copied().unwrap_or(0) != 1 || result.landed.is_none() || result.landed != on {
                    self.violation(
                        Invariant::DoneNotOnTrunk,
                        format!(
                            "{s} is {} but the default branch has it in {on:?} (result says {:?})",
                            st.stage, result.landed
                        ),
                    );
                }
            }
            // The accepted result was pushed by the node it names, with its
            // token; a story that finished carries that token still (a
            // story that failed for good has since released at higher ones).
            if st.stage == Stage::Done && result.token != st.token {
                self.violation(
                    Invariant::StaleResult,
                    format!("{s}'s result carries {} but the story is at {}", result.token, st.token),
                );
            }
            // The branch ends in the accepted result's claim: no
            // superseded claim's push ends it. (Claims made on both sides
            // of a partition can share a token; the remote keeps one.)
            // A Byzantine node holds push credentials: its pushes to a
            // story's branch are beyond what the document governs (the
            // default branch is checked above; docs/design/authority.md).
            let tip_by_byzantine = self.remote.tip(&s).is_some_and(|(_, n)| self.byzantine.as_ref() == Some(n));
            if st.stage == Stage::Done
                && !tip_by_byzantine
                && self.remote.tip(&s).map(|(t, _)| *t) != Some(result.token)
            {
                self.violation(
                    Invariant::BranchNotResult,
                    format!("{s}'s branch ends in {:?}, not in its result at {}", self.remote.tip(&s), result.token),
                );
            }
            if !self.pushes.contains(&(s.clone(), result.node.clone(), result.token)) {
                self.violation(
                    Invariant::ResultNotPushed,
                    format!("{s}'s accepted result by {} at {} was never pushed", result.node, result.token),
                );
            }
            // Nodes split by a partition may both finish a stage under the
            // same token; the merge keeps exactly one result. It must be one
            // that its node really produced.
            let produced = self.advances.iter().any(|(story, from, token, node)| {
                *story == s && *from == result.stage && *token == result.token && *node == result.node
            });
            if !produced {
                self.violation(
                    Invariant::ResultNotProduced,
                    format!("{s}'s result names {} at {} but that node never advanced it", result.node, result.token),
                );
            }
        }
    }
}
