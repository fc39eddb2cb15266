//! Landing: the merge stage puts stories on the default branch.
//!
//! A merge-stage run ends, like every other, with a push of the story's
//! branch under its claim (the remote fences a superseded claim there).
//! Then, instead of advancing, the story waits in [`Phase::Queued`] for a
//! batch. The `Train` part forms batches of our queued stories, in queue
//! order, and hands each to the driver as one [`Output::Land`]: build the
//! default branch's tip plus every story, run the gates, move the default
//! branch by compare-and-swap to exactly the tree tested. The answer
//! decides each story:
//!
//! - landed: `done`, its landed commit in the result;
//! - conflicting with the default branch, or failing the gates alone:
//!   back to `current` with the reason, for its agent to fix; after
//!   `max_returns` returns it is given up;
//! - fenced (a newer claim holds its branch at the remote): dropped, as
//!   any fenced run;
//! - the remote failed: a failed attempt, as any failed push.
//!
//! A batch that fails its gates is retried once as it is (gates can be
//! flaky), then split in two halves tested one after the other (bors). A
//! single story that fails goes back at once: a story known bad is never
//! tested again until its agent has changed it.

use std::collections::VecDeque;

use crate::claims::Phase;
use crate::runs::RunOutcomeKind;
use crate::story::short_reason;
use crate::{Engine, Event, Millis, Output, Stage, StoryId, Token};

/// Numbers a landing batch of one node (from 1, per incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BatchId(pub u64);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// One story of a landing batch, in the order it goes onto the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandStory {
    pub id: StoryId,
    /// The merge claim it lands under (named in the landed commit).
    pub token: Token,
    pub title: String,
}

/// What became of a batch: given with [`crate::Input::LandFinished`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LandReport {
    /// The default-branch commit the last build was made on.
    pub base: String,
    /// Stories left out before the gates ran: they do not apply cleanly on
    /// the default branch (with the stories ahead of them). The reason
    /// names the base commit and the conflicting files.
    pub conflicts: Vec<(StoryId, String)>,
    /// Stories whose branch at the remote carries a newer claim than the
    /// one they were to land under: never landed by this batch.
    pub fenced: Vec<(StoryId, Token)>,
    /// Stories that apply on the default branch but conflict with a story
    /// ahead of them in the batch: they wait for the next batch (built on
    /// a tip that holds the one ahead, where a conflict is real).
    pub deferred: Vec<StoryId>,
    /// The tree tested held stories of another node's batch ahead that
    /// were not on the default branch yet: a gate failure may be theirs.
    pub speculative: bool,
    pub result: LandResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandResult {
    /// The stories of the batch not listed as conflicting or fenced are on
    /// the default branch, each in the commit given (landed now, or found
    /// landed before: a story never lands twice).
    Landed { commits: Vec<(StoryId, String)> },
    /// A gate failed on the default branch plus the batch; nothing landed.
    GateFailed { gate: String, output_tail: String },
    /// Nothing landed for another reason (the remote could not be reached):
    /// a failed attempt of each story.
    Failed { reason: String },
    /// Nothing landed and nothing is wrong with the stories: the landing
    /// was called off (`Output::CancelLand`), the batch ahead it built on
    /// did not land, or the default branch kept moving. They queue again.
    Retry { reason: String },
}

/// What a build left out before its gates ran (see the fields of
/// [`LandReport`]): given with [`crate::Input::LandBuilt`] as soon as the
/// batch is applied, so a story that conflicts goes back to its agent a
/// gate run sooner, and the batches stacked on ours know it is not in the
/// tree they test.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeftOut {
    pub conflicts: Vec<(StoryId, String)>,
    pub fenced: Vec<(StoryId, Token)>,
    pub deferred: Vec<StoryId>,
    pub speculative: bool,
}

impl LeftOut {
    pub fn is_empty(&self) -> bool {
        self.conflicts.is_empty() && self.fenced.is_empty() && self.deferred.is_empty()
    }
}

impl LandReport {
    /// The part of the report decided before the gates.
    pub fn left_out(&self) -> LeftOut {
        LeftOut {
            conflicts: self.conflicts.clone(),
            fenced: self.fenced.clone(),
            deferred: self.deferred.clone(),
            speculative: self.speculative,
        }
    }
}

impl Default for LandResult {
    fn default() -> Self {
        LandResult::Landed { commits: Vec::new() }
    }
}

/// A node's landing batch as the document shows it (`train/<node>`): its
/// stories, and the stories of other nodes' batches it is tested on top
/// of. Another merge node builds its own batch on top of the longest such
/// chain still landing, so several batches are tested at once (Zuul's
/// speculative train, across machines). Written by its node only; read by
/// everyone as untrusted data.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Car {
    pub batch: u64,
    pub ahead: Vec<(StoryId, Token)>,
    pub stories: Vec<(StoryId, Token)>,
    /// Stories of the batch its build left out before the gates (they
    /// conflict, or wait for a story stacked before them): not in the tree
    /// tested, so their leaving `merge` breaks no batch stacked on this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<(StoryId, Token)>,
    /// A retry or a half of a bisection: it holds a failure more often than
    /// not, so nobody stacks on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspect: bool,
}

/// How every driver begins the reason of a story that does not apply on
/// the default branch.
pub const CONFLICT_REASON: &str = "merge conflict";

/// Longest chain of stories a batch is tested on top of.
pub const MAX_AHEAD: usize = 64;
/// Largest car a node reads; a bigger one is ignored.
const MAX_CAR_BYTES: usize = 16 << 10;

impl Car {
    pub fn encode(&self) -> String {
        // Plain data with derived impls: serialisation cannot fail.
        serde_json::to_string(self).expect("a car serialises")
    }

    /// Another node's car, if well formed and within bounds.
    pub fn decode(s: &str) -> Option<Car> {
        if s.len() > MAX_CAR_BYTES {
            return None;
        }
        let car: Car = serde_json::from_str(s).ok()?;
        let within = car.ahead.len() <= MAX_AHEAD && car.stories.len() <= MAX_AHEAD && car.left_out.len() <= MAX_AHEAD;
        within.then_some(car)
    }
}

/// Where a story of a car ahead stands, by our replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AheadState {
    /// In `merge`, held under the car's token: still to land.
    Landing,
    /// Done (or archived), landed under the car's token.
    Landed,
    /// Anything else: that car's batch will not land as tested.
    Gone,
}

/// The batch the driver is landing.
#[derive(Debug, Clone)]
struct Batch {
    id: BatchId,
    stories: Vec<StoryId>,
    /// The stories of other batches it is tested on top of.
    ahead: Vec<(StoryId, Token)>,
    /// Called off: a story ahead will not land as tested.
    cancelled: bool,
    /// Tested on the default branch alone on purpose (a retry, a half, or
    /// after a failure on top of others): it never yields to a sibling.
    solo: bool,
    /// Failed its gates once and was handed over again as it was.
    retried: bool,
    /// A half of a split batch: bisected further, never retried.
    half: Option<HalfOf>,
    /// Stories its build left out before the gates (see [`Car::left_out`]).
    left_out: Vec<(StoryId, Token)>,
    /// Stories of `ahead` landed when the batch's deadline was last set
    /// (`extend_progressing_landing`).
    ahead_landed: usize,
}

/// Which split a half comes from, and which half it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HalfOf {
    split: u64,
    second: bool,
}

/// A half of a split batch, waiting its turn.
#[derive(Debug, Clone)]
struct Half {
    stories: Vec<StoryId>,
    of: HalfOf,
    /// For a second half: the failure of the batch it was split from (seen
    /// twice, so not a flaky gate). Should the first half land whole, the
    /// failure is in this one: it is split again, or (one story) sent
    /// back, with no test of its own (bisection's free answer).
    failure: Option<String>,
}

/// Batches this node called off, by why: what speculation cost (each one
/// wastes the gate run it interrupts, and queues its stories again).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallOffs {
    /// A story ahead left `merge` otherwise than as tested (sent back,
    /// reclaimed, removed), and not for a conflict every build left out.
    pub ahead_gone: u64,
    /// A story ahead is held by a node that died: it will be reclaimed.
    pub holder_dead: u64,
    /// Our deadline came with nothing ahead landed since it was set.
    pub stalled: u64,
    /// A batch ahead was called off or ended unlanded, or formed again on
    /// another chain: its node's car no longer lists what we built on.
    pub withdrawn: u64,
    /// Another node's batch was formed on the same chain as ours, and it
    /// ranks before ours: we stack on it instead.
    pub sibling: u64,
}

impl std::ops::AddAssign for CallOffs {
    fn add_assign(&mut self, o: CallOffs) {
        self.ahead_gone += o.ahead_gone;
        self.holder_dead += o.holder_dead;
        self.stalled += o.stalled;
        self.withdrawn += o.withdrawn;
        self.sibling += o.sibling;
    }
}

/// The `Train` part: the batch in flight, halves of split batches waiting
/// their turn, and when our first queued story began waiting.
#[derive(Debug, Default)]
pub(crate) struct Train {
    /// Batches called off so far, by why.
    pub(crate) call_offs: CallOffs,
    next_id: u64,
    in_flight: Option<Batch>,
    halves: VecDeque<Half>,
    splits: u64,
    waiting_since: Option<Millis>,
    /// Until when a batch we are about to form waits for the merge nodes
    /// ranked before us (`formation_rank`), set with `waiting_since`.
    stagger_until: Option<Millis>,
    /// Stories of chains ahead whose tree failed our gates: not built on
    /// while they are still landing (the failure may be ours or theirs;
    /// tested without them, ours is known).
    avoid: std::collections::BTreeSet<(StoryId, Token)>,
    /// Our batch failed on top of others: the next one is tested on the
    /// default branch alone, so a failure of ours is found (a new chain
    /// ahead every time could hide it for ever).
    solo: bool,
    /// Our stories that clashed with a chain ahead: they wait until no
    /// story of it is still landing (then a clash is a real conflict).
    deferred_on: std::collections::BTreeMap<StoryId, Vec<(StoryId, Token)>>,
}

impl Train {
    fn allocate(&mut self) -> BatchId {
        self.next_id += 1;
        BatchId(self.next_id)
    }

    /// Stories of the batch in flight.
    pub fn in_flight(&self) -> impl Iterator<Item = &StoryId> {
        self.in_flight.iter().flat_map(|b| b.stories.iter())
    }
}

impl Engine {
    /// Forms the next batch of our queued stories, if none is in flight.
    /// Waits up to `land_batch_wait_ms` while merge runs of ours are still
    /// on their way, so that stories claimed together land together.
    pub(crate) fn form_landing_batch(&mut self) {
        if let Some(b) = &self.train.in_flight {
            if b.stories.iter().any(|id| self.landing_run(id).is_some()) {
                return;
            }
            // Every story of it ended otherwise (expired, lost, moved):
            // the driver's answer, if it comes, is stale.
            if let Some(b) = self.train.in_flight.take() {
                self.withdraw_car(b.id);
            }
        }
        let mut queued: Vec<StoryId> =
            self.claims.runs().filter(|(_, r)| r.phase == Phase::Queued).map(|(id, _)| id.clone()).collect();
        self.train.deferred_on.retain(|id, _| queued.contains(id));
        let deferred_on = std::mem::take(&mut self.train.deferred_on);
        let waiting: Vec<StoryId> = deferred_on
            .iter()
            .filter(|(_, chain)| chain.iter().any(|(s, t)| self.ahead_state(s, *t, None) == AheadState::Landing))
            .map(|(id, _)| id.clone())
            .collect();
        self.train.deferred_on = deferred_on;
        self.train.deferred_on.retain(|id, _| waiting.contains(id));
        queued.retain(|id| !waiting.contains(id));
        if queued.is_empty() {
            self.train.waiting_since = None;
            self.train.stagger_until = None;
            self.train.halves.clear();
            return;
        }
        let (stories, half) = match self.next_half(&queued) {
            Some(h) => (h.stories, Some(h.of)),
            None => {
                let since = *self.train.waiting_since.get_or_insert(self.now);
                if self.train.stagger_until.is_none() {
                    let rank = if self.train.solo { 0 } else { self.formation_rank() };
                    let stagger_ms = rank.saturating_mul(self.config.land_stagger_ms);
                    self.train.stagger_until = Some(since.saturating_add_ms(stagger_ms));
                }
                if self.train.stagger_until.is_some_and(|t| self.now < t) {
                    return;
                }
                let on_the_way = self.claims.runs().any(|(_, r)| {
                    r.stage == Stage::Merge && matches!(r.phase, Phase::Settling | Phase::Running | Phase::Pushing)
                });
                let full = queued.len() >= self.config.land_batch;
                if on_the_way && !full && self.now.saturating_sub(since) < self.config.land_batch_wait_ms {
                    return;
                }
                let mut order: Vec<_> = queued.into_iter().map(|id| (self.queue_key(&id), id)).collect();
                order.sort();
                (order.into_iter().take(self.config.land_batch).map(|(_, id)| id).collect(), None)
            }
        };
        self.train.waiting_since = None;
        self.train.stagger_until = None;
        self.start_batch(stories, false, half);
    }

    /// Queue order: higher priority first, then the time the story reached
    /// `merge` (its Lamport place), then age.
    fn queue_key(&self, id: &StoryId) -> (std::cmp::Reverse<i64>, u64, crate::UnixMs) {
        let v = self.index.known(id);
        (std::cmp::Reverse(v.priority), v.state.queued, v.created)
    }

    /// Where a story of a car ahead stands.
    fn ahead_state(&self, story: &StoryId, token: Token, node: Option<&crate::NodeId>) -> AheadState {
        let Some(v) = self.index.story(story) else { return AheadState::Gone };
        let st = &v.state;
        let holder_ok = node.is_none_or(|n| st.holder.as_ref() == Some(n));
        if st.stage == Stage::Merge && st.token == token && holder_ok && !st.failed && !st.removed {
            return AheadState::Landing;
        }
        let landed = st.result.as_ref().is_some_and(|r| r.token == token && r.landed.is_some());
        if matches!(st.stage, Stage::Done | Stage::Archived) && landed {
            return AheadState::Landed;
        }
        AheadState::Gone
    }

    /// The stories to test our batch on top of: the longest chain of
    /// another node's car whose stories are all still landing or landed
    /// (the landed ones left out), none of them ours, none suspect (in a
    /// tree that failed our gates).
    fn chain_ahead(&mut self, own: &[StoryId]) -> Vec<(StoryId, Token)> {
        let mut best: Vec<(StoryId, Token)> = Vec::new();
        // A suspect that landed or left `merge` is decided: forget it.
        let mut avoid = std::mem::take(&mut self.train.avoid);
        avoid.retain(|(s, t)| self.ahead_state(s, *t, None) == AheadState::Landing);
        self.train.avoid = avoid;
        let cars = self.cars();
        let left_out = Self::left_out_of(&cars);
        for (node, car) in &cars {
            if *node == self.node || car.suspect || !self.liveness.is_alive(node, self.now) {
                continue;
            }
            let mut pending = Vec::new();
            let mut whole = true;
            for (i, (s, t)) in car.ahead.iter().chain(&car.stories).enumerate() {
                // The car's own stories are held by its node; those ahead
                // of it by theirs.
                let holder = (i >= car.ahead.len()).then_some(node);
                // Not stacked on: a story whose holder is dead.
                // `check_ahead` would call our batch off at once, and we
                // would form it on the same chain again, and again: with a
                // merge node cut off for forged writes, 169 of 213 gate
                // runs for 60 stories (`merge_hostile_cars` seed 1).
                let holder_dead = || {
                    let held = self.index.story(s).and_then(|v| v.state.holder.as_ref());
                    held.is_some_and(|h| *h != self.node && !self.liveness.is_alive(h, self.now))
                };
                match self.ahead_state(s, *t, holder) {
                    _ if own.contains(s) => whole = false,
                    AheadState::Landing if holder_dead() => whole = false,
                    AheadState::Landing => pending.push((s.clone(), *t)),
                    AheadState::Landed => {}
                    // Left out of the tree its node tests: not in ours either.
                    AheadState::Gone if left_out.contains(&(s.clone(), *t)) => {}
                    AheadState::Gone => whole = false,
                }
            }
            let better = pending.len() > best.len();
            let suspect = pending.iter().any(|p| self.train.avoid.contains(p));
            if whole && better && !suspect && pending.len() <= MAX_AHEAD && self.chain_holds(&pending, &cars) {
                best = pending;
            }
        }
        best
    }

    /// Whether every batch of a chain (its stories still landing, in
    /// order) is still in flight as the chain has it: the car of each
    /// story's holder lists the story among its own, and that car's chain
    /// is exactly the part before it. A batch called off, ended unlanded,
    /// or formed again on another chain (its stories queued again under
    /// the same claim) will not land as the chain was built: stacked on
    /// such cars, every merge node of a 20-node fleet waited one run
    /// timeout for commits that never came (merge_fleet_trains seed
    /// 3003). A holder with no car at all (cars are not carried across an
    /// epoch's cut) is not evidence either way: trusted, as before.
    fn chain_holds(&self, chain: &[(StoryId, Token)], cars: &[(crate::NodeId, Car)]) -> bool {
        let landing = |(s, t): &(StoryId, Token)| self.ahead_state(s, *t, None) == AheadState::Landing;
        let mut at = 0;
        while at < chain.len() {
            let (s, _) = &chain[at];
            let holder = self.index.story(s).and_then(|v| v.state.holder.clone());
            let Some(holder) = holder else { return false };
            let Some((_, car)) = cars.iter().find(|(n, _)| *n == holder) else {
                at += 1;
                continue;
            };
            let own: Vec<&(StoryId, Token)> = car.stories.iter().filter(|p| landing(p)).collect();
            let before: Vec<&(StoryId, Token)> = car.ahead.iter().filter(|p| landing(p)).collect();
            let run = chain[at..].iter().take(own.len());
            if own.is_empty() || !own.iter().copied().eq(run) || !before.iter().copied().eq(chain[..at].iter()) {
                return false;
            }
            at += own.len();
        }
        true
    }

    /// Every node's car that is well formed and within bounds.
    fn cars(&mut self) -> Vec<(crate::NodeId, Car)> {
        self.read_trains().into_iter().filter_map(|(n, raw)| Some((n, Car::decode(&raw)?))).collect()
    }

    /// Every node's car as its own node wrote it (`Doc::read_trains`).
    fn read_trains(&mut self) -> Vec<(crate::NodeId, String)> {
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        self.doc.read_trains(&|op| crate::signing::writer_of(sigs, op, &own, own_admin))
    }

    /// Every story some car says its build left out, with its token.
    fn left_out_of(cars: &[(crate::NodeId, Car)]) -> std::collections::BTreeSet<(StoryId, Token)> {
        cars.iter().flat_map(|(_, c)| c.left_out.iter().cloned()).collect()
    }

    /// Whether the story left `merge` right after `token` because it did
    /// not apply on the default branch: a build on the same tip left it
    /// out too (conflicts are decided before the gates, the same way on
    /// every node), so a batch stacked behind it still lands as tested.
    fn returned_for_conflict(&self, story: &StoryId, token: Token) -> bool {
        self.index.story(story).is_some_and(|v| {
            let st = &v.state;
            st.token == token.next()
                && st.stage == Stage::Current
                && st.reason.as_deref().is_some_and(|r| r.starts_with(CONFLICT_REASON))
        })
    }

    /// Calls off the batch in flight when a story it was tested on top of
    /// will not land as tested.
    pub(crate) fn check_ahead(&mut self) {
        let Some(b) = &self.train.in_flight else { return };
        if b.cancelled {
            return;
        }
        if b.ahead.is_empty() {
            let cars = self.cars();
            return self.yield_to_sibling(&cars);
        }
        // A story whose holder died will be reclaimed, and landed under
        // another claim: the chain will not land as tested. Waiting on it
        // could even wait on ourselves (a node whose slots are all taken
        // by stories queued behind its own batch cannot reclaim it).
        let holder_dead = |s: &StoryId| {
            let holder = self.index.story(s).and_then(|v| v.state.holder.clone());
            holder.is_some_and(|h| h != self.node && !self.liveness.is_alive(&h, self.now))
        };
        let mut gone = Vec::new();
        let mut dead = false;
        for (s, t) in &b.ahead {
            match self.ahead_state(s, *t, None) {
                AheadState::Gone if !self.returned_for_conflict(s, *t) => gone.push((s.clone(), *t)),
                AheadState::Landing => dead |= holder_dead(s),
                _ => {}
            }
        }
        if dead {
            return self.call_off_in_flight(|c| &mut c.holder_dead);
        }
        let cars = self.cars();
        if !gone.is_empty() {
            // Gone, but left out of the tree by its own node's build: not
            // in the tree we test either.
            let left_out = Self::left_out_of(&cars);
            if gone.iter().any(|g| !left_out.contains(g)) {
                return self.call_off_in_flight(|c| &mut c.ahead_gone);
            }
        }
        let Some(b) = &self.train.in_flight else { return };
        let chain: Vec<(StoryId, Token)> =
            b.ahead.iter().filter(|(s, t)| self.ahead_state(s, *t, None) == AheadState::Landing).cloned().collect();
        if !self.chain_holds(&chain, &cars) {
            return self.call_off_in_flight(|c| &mut c.withdrawn);
        }
        self.yield_to_sibling(&cars);
    }

    /// Calls our batch off when another node's, ranked before ours, was
    /// formed on the same chain: its stories and ours cannot both land on
    /// what each was tested on. Left alone, one lands and the other builds
    /// and tests again on the new tip, and siblings formed together do so
    /// in turn: at 50 merge nodes 70% of all gate runs were such builds
    /// again. Stacked on the sibling, ours is tested once, behind it.
    /// Both ends agree on who yields (a hash of node and epoch), and every
    /// yield moves a batch onto a longer chain, so yields end.
    fn yield_to_sibling(&mut self, cars: &[(crate::NodeId, Car)]) {
        let Some(b) = &self.train.in_flight else { return };
        if b.cancelled || b.solo {
            return;
        }
        let landing = |(s, t): &(StoryId, Token)| self.ahead_state(s, *t, None) == AheadState::Landing;
        let ours: Vec<&(StoryId, Token)> = b.ahead.iter().filter(|p| landing(p)).collect();
        let key = self.land_key(&self.node);
        let sibling = cars.iter().any(|(node, car)| {
            if *node == self.node
                || car.suspect
                || self.land_key(node) >= key
                || !self.liveness.is_alive(node, self.now)
            {
                return false;
            }
            let theirs = car.stories.iter().filter(|(s, t)| self.ahead_state(s, *t, Some(node)) == AheadState::Landing);
            let theirs: Vec<(StoryId, Token)> = theirs.cloned().collect();
            let disjoint = theirs.iter().all(|(s, _)| !b.stories.contains(s));
            let same_chain = car.ahead.iter().filter(|p| landing(p)).eq(ours.iter().copied());
            let chain: Vec<(StoryId, Token)> =
                ours.iter().map(|p| (*p).clone()).chain(theirs.iter().cloned()).collect();
            !theirs.is_empty() && disjoint && same_chain && self.chain_holds(&chain, cars)
        });
        if !sibling {
            return;
        }
        // Only for a longer chain we would stack on now: a sibling we would
        // not build on (one whose stories failed our gates, a chain over
        // `MAX_AHEAD`) would have us yield, form again beside it, and
        // yield again, for ever. So every yield lengthens our chain.
        let (stories, before) = (b.stories.clone(), ours.len());
        if self.chain_ahead(&stories).len() > before {
            self.call_off_in_flight(|c| &mut c.sibling);
        }
    }

    /// The order merge nodes form batches in, and yield to siblings in: a
    /// hash of node and epoch, so no node is always first.
    fn land_key(&self, node: &crate::NodeId) -> u64 {
        let epoch = self.doc.epoch().to_be_bytes();
        crate::hash::stable_hash(&[b"land", &epoch, node.as_str().as_bytes()])
    }

    /// Asks the driver to stop the batch in flight; its answer (called
    /// off) queues the stories again.
    fn call_off_in_flight(&mut self, why: fn(&mut CallOffs) -> &mut u64) {
        let Some(b) = self.train.in_flight.as_mut() else { return };
        let first = !b.cancelled;
        b.cancelled = true;
        let id = b.id;
        if first {
            *why(&mut self.train.call_offs) += 1;
            self.withdraw_car(id);
        }
        self.emit(Event::BatchCancelled { batch: id });
        self.outbox.push(Output::CancelLand { batch: id });
    }

    /// Our car lists nothing: the batch will not land as built, and a
    /// merge node stacked on it calls its own off (`chain_holds`) at once,
    /// not after a run timeout spent waiting for commits that never come.
    fn withdraw_car(&mut self, batch: BatchId) {
        self.doc.put_train(&self.node, &Car { batch: batch.0, ..Car::default() }.encode());
    }

    /// The next waiting half whose stories are still queued here.
    fn next_half(&mut self, queued: &[StoryId]) -> Option<Half> {
        while let Some(mut half) = self.train.halves.pop_front() {
            half.stories.retain(|id| queued.contains(id));
            if !half.stories.is_empty() {
                return Some(half);
            }
        }
        None
    }

    /// A first half is decided: if it landed whole, its sibling holds the
    /// failure of the batch they were split from; otherwise the sibling
    /// must be tested like any batch.
    fn settle_sibling(&mut self, batch: BatchId, split: u64, first_landed: bool) {
        let Some(at) = self.train.halves.iter().position(|h| h.of.split == split && h.of.second) else { return };
        if !first_landed {
            self.train.halves[at].failure = None;
            return;
        }
        let Some(reason) = self.train.halves[at].failure.take() else { return };
        let Some(mut half) = self.train.halves.remove(at) else { return };
        half.stories.retain(|id| self.claims.run(id).is_some_and(|r| r.phase == Phase::Queued));
        match half.stories.len() {
            0 => {}
            1 => {
                let why = format!("{reason} (its batch failed twice, and the rest of it passed without it)");
                self.send_back(&half.stories[0], &why);
            }
            n => {
                self.emit(Event::BatchSplit { batch, size: n });
                self.push_halves(half.stories, reason);
            }
        }
    }

    /// Splits a failing batch in two halves, to be tested first.
    fn push_halves(&mut self, mut first: Vec<StoryId>, failure: String) {
        self.train.splits += 1;
        let split = self.train.splits;
        let second = first.split_off(first.len() / 2);
        let of = |second| HalfOf { split, second };
        self.train.halves.push_front(Half { stories: second, of: of(true), failure: Some(failure) });
        self.train.halves.push_front(Half { stories: first, of: of(false), failure: None });
    }

    fn start_batch(&mut self, stories: Vec<StoryId>, retry: bool, half: Option<HalfOf>) {
        assert!(!stories.is_empty() && stories.len() <= self.config.land_batch, "a batch of {}", stories.len());
        assert!(self.train.in_flight.is_none(), "a second batch in flight");
        let id = self.train.allocate();
        let deadline = self.now.saturating_add_ms(self.config.run_timeout_for(Stage::Merge));
        let mut land = Vec::with_capacity(stories.len());
        // A retry or a half finds out about our own stories: on the default
        // branch alone, like the test that failed.
        let solo = std::mem::take(&mut self.train.solo) || retry || half.is_some();
        let ahead = if solo { Vec::new() } else { self.chain_ahead(&stories) };
        let suspect = retry || half.is_some();
        let mut car = Car { batch: id.0, ahead, stories: Vec::new(), left_out: Vec::new(), suspect };
        for story in &stories {
            let token = self.claims.run(story).map(|r| r.token).expect("a batch of queued runs");
            self.claims.enter(story, token, Phase::Landing, deadline);
            land.push(LandStory { id: story.clone(), token, title: self.index.known(story).title.clone() });
            car.stories.push((story.clone(), token));
        }
        let ahead: Vec<LandStory> = car
            .ahead
            .iter()
            .map(|(s, t)| LandStory { id: s.clone(), token: *t, title: self.index.known(s).title.clone() })
            .collect();
        // Others build on this batch only once they can see it.
        self.doc.put_train(&self.node, &car.encode());
        let b = Batch {
            id,
            stories,
            ahead: car.ahead,
            cancelled: false,
            solo,
            retried: retry,
            half,
            left_out: Vec::new(),
            ahead_landed: 0,
        };
        self.train.in_flight = Some(b);
        self.emit(Event::BatchStarted { batch: id, size: land.len(), retry, ahead: ahead.len() });
        self.outbox.push(Output::Land { batch: id, stories: land, ahead, retry });
    }

    /// A batch stacked on a chain ahead waits for that chain to land, and
    /// with many merge nodes the chain is long: a deadline counted from
    /// the batch's start failed stories whose wait was the fleet's
    /// progress, not a hang (50 agents: 690 landings timed out for 300
    /// stories, 22 stories given up in a run with no fault). So when our
    /// landing's deadline comes and stories ahead landed since it was set,
    /// it moves one run timeout on, and so do our stories queued behind
    /// it. When none landed, the chain stalled: our batch is called off
    /// (no attempt counted) and the next is tested on the default branch
    /// alone. Bounded: every extension needs one more of at most
    /// `MAX_AHEAD` stories ahead landed, a called-off batch gets one
    /// timeout for the driver's answer, after which its stories fail as
    /// before, and a queued story waits only as long as the batch ahead of
    /// it lives, or our turn to form one comes (`formation_rank`).
    pub(crate) fn extend_progressing_landing(&mut self) {
        let now = self.now;
        // Waiting for the merge nodes ranked before us is waiting our turn,
        // not a hang (bounded: the stagger is set once per wait).
        if self.train.in_flight.is_none() && self.train.stagger_until.is_some_and(|t| t > now) {
            let deadline = now.saturating_add_ms(self.config.run_timeout_for(Stage::Merge));
            for (id, token) in self.due_in(Phase::Queued) {
                self.claims.enter(&id, token, Phase::Queued, deadline);
            }
            return;
        }
        let Some(b) = &self.train.in_flight else { return };
        if b.cancelled {
            return;
        }
        let mut landing_due = self.due_in(Phase::Landing);
        landing_due.retain(|(id, _)| b.stories.contains(id));
        let mut extend: Vec<(StoryId, Token, Phase)> = Vec::new();
        let mut landed_now = None;
        let mut stalled = false;
        if !landing_due.is_empty() && !b.ahead.is_empty() {
            let landed = b.ahead.iter().filter(|(s, t)| self.ahead_state(s, *t, None) == AheadState::Landed).count();
            if landed > b.ahead_landed {
                landed_now = Some(landed);
            } else {
                // The chain ahead stopped landing (its batch was called
                // off, or its car lost at an epoch's cut, and formed
                // again otherwise): no fault of our stories. Call ours
                // off, with one more timeout for the driver to say so, and
                // land next on the default branch alone, without that
                // chain. Counting it as a failed attempt gave up 14 of
                // 1,000 stories at 50 agents, in a run without faults.
                stalled = true;
            }
            extend.extend(landing_due.into_iter().map(|(id, t)| (id, t, Phase::Landing)));
        }
        // Our stories queued behind the batch wait as long as it lives.
        let batch_alive = !extend.is_empty()
            || b.stories
                .iter()
                .any(|id| self.claims.run(id).is_some_and(|r| r.phase == Phase::Landing && r.deadline > now));
        if batch_alive {
            extend.extend(self.due_in(Phase::Queued).into_iter().map(|(id, t)| (id, t, Phase::Queued)));
        }
        if extend.is_empty() {
            return;
        }
        let deadline = now.saturating_add_ms(self.config.run_timeout_for(Stage::Merge));
        for (id, token, phase) in extend {
            self.claims.enter(&id, token, phase, deadline);
        }
        if let (Some(landed), Some(b)) = (landed_now, self.train.in_flight.as_mut()) {
            b.ahead_landed = landed;
        }
        if stalled {
            if let Some(b) = &self.train.in_flight {
                self.train.avoid.extend(b.ahead.iter().cloned());
            }
            self.train.solo = true;
            self.call_off_in_flight(|c| &mut c.stalled);
        }
    }

    /// Our runs in `phase` whose deadline has come.
    fn due_in(&self, phase: Phase) -> Vec<(StoryId, Token)> {
        let now = self.now;
        self.claims
            .runs()
            .filter(|(_, r)| r.phase == phase && r.deadline <= now)
            .map(|(id, r)| (id.clone(), r.token))
            .collect()
    }

    /// When a waiting batch stops waiting for more stories, or for the
    /// merge nodes ranked before us.
    pub(crate) fn next_batch_at(&self) -> Option<Millis> {
        let since = self.train.waiting_since?;
        if self.train.in_flight.is_some() {
            return None;
        }
        let full_wait = since.saturating_add_ms(self.config.land_batch_wait_ms);
        let ahead = [Some(full_wait), self.train.stagger_until].into_iter().flatten().filter(|t| *t > self.now).min();
        Some(ahead.unwrap_or(full_wait))
    }

    /// How many merge nodes form a batch before ours: live nodes ranked
    /// before us (a hash of node and epoch) that hold merge stories not in
    /// a batch and have no batch landing. When a chain's head changes,
    /// every node waiting on it forms its next batch at once, before any
    /// of their cars reaches the others, and they all stack on the same
    /// chain: one of them can land, the rest were tested for nothing (50
    /// agents: 6-8 gate runs a story). Waiting `land_stagger_ms` a rank,
    /// each sees the cars of those before it and stacks on them: a train.
    fn formation_rank(&mut self) -> u64 {
        let ours = self.land_key(&self.node);
        let cars: std::collections::BTreeMap<crate::NodeId, Car> = self.cars().into_iter().collect();
        let now = self.now;
        let mut rank = 0;
        for node in self.index.holders() {
            if *node == self.node || self.land_key(node) >= ours || !self.liveness.is_alive(node, now) {
                continue;
            }
            let car = cars.get(node);
            let landing = car.is_some_and(|c| {
                c.stories.iter().any(|(s, t)| self.ahead_state(s, *t, Some(node)) == AheadState::Landing)
            });
            let in_car = |s: &StoryId| car.is_some_and(|c| c.stories.iter().chain(&c.left_out).any(|(id, _)| id == s));
            let waiting =
                self.index.held_by(node).any(|s| self.index.known(s).state.stage == Stage::Merge && !in_car(s));
            if !landing && waiting {
                rank += 1;
            }
        }
        rank
    }

    /// Our run of `story`, if it is landing.
    fn landing_run(&self, story: &StoryId) -> Option<Token> {
        self.claims.run(story).filter(|r| r.phase == Phase::Landing).map(|r| r.token)
    }

    /// The driver applied the batch: what it left out is decided now, and
    /// our car says so before the gates have run.
    pub(crate) fn handle_land_built(&mut self, batch: BatchId, left_out: LeftOut) {
        if left_out.is_empty() || self.train.in_flight.as_ref().is_none_or(|b| b.id != batch) {
            return;
        }
        let Some(mut b) = self.train.in_flight.take() else { return };
        // With the tokens they land under (a send-back moves the token on).
        let before: Vec<(StoryId, Token)> =
            b.stories.iter().filter_map(|id| Some((id.clone(), self.landing_run(id)?))).collect();
        let mut rest: Vec<StoryId> = before.iter().map(|(id, _)| id.clone()).collect();
        self.settle_left_out(&b, &mut rest, &left_out);
        for (id, token) in before.iter().filter(|(id, _)| !rest.contains(id)) {
            b.left_out.push((id.clone(), *token));
        }
        b.stories.retain(|id| rest.contains(id));
        let stories = b.stories.iter().filter_map(|id| Some((id.clone(), self.landing_run(id)?))).collect();
        let suspect = b.retried || b.half.is_some();
        let car = Car { batch: b.id.0, ahead: b.ahead.clone(), stories, left_out: b.left_out.clone(), suspect };
        self.doc.put_train(&self.node, &car.encode());
        self.train.in_flight = Some(b);
    }

    /// Decides the stories a build left out (fenced, deferred, conflicting),
    /// taking them out of `rest`.
    fn settle_left_out(&mut self, b: &Batch, rest: &mut Vec<StoryId>, left_out: &LeftOut) {
        for (id, by) in &left_out.fenced {
            if rest.contains(id) {
                rest.retain(|s| s != id);
                let kept = format!("the story's branch at the remote (claim {})", by.0);
                self.fenced(id, crate::PushError::Fenced { by_token: Some(*by), kept });
            }
        }
        for id in &left_out.deferred {
            if rest.contains(id) {
                rest.retain(|s| s != id);
                self.requeue(std::slice::from_ref(id));
                if left_out.speculative {
                    self.train.deferred_on.insert(id.clone(), b.ahead.clone());
                }
            }
        }
        for (id, reason) in &left_out.conflicts {
            if rest.contains(id) {
                rest.retain(|s| s != id);
                self.send_back(id, reason);
            }
        }
    }

    pub(crate) fn handle_land_finished(&mut self, batch: BatchId, report: LandReport) {
        if self.train.in_flight.as_ref().is_none_or(|b| b.id != batch) {
            return;
        }
        let Some(b) = self.train.in_flight.take() else { return };
        // Stories whose claim ended meanwhile are not ours to decide.
        let live: Vec<StoryId> = b.stories.iter().filter(|id| self.landing_run(id).is_some()).cloned().collect();
        for id in b.stories.iter().filter(|id| !live.contains(id)) {
            self.emit(Event::StaleResult { story: id.clone(), token: Token(0) });
        }
        let mut rest = live.clone();
        self.settle_left_out(&b, &mut rest, &report.left_out());
        let mut landed_whole = b.left_out.is_empty() && rest.len() == b.stories.len();
        let first_half = b.half.filter(|h| !h.second).map(|h| h.split);
        let batch = b.id;
        let mut first_landed = false;
        if !matches!(report.result, LandResult::Landed { .. }) && !b.cancelled {
            self.withdraw_car(batch);
        }
        match report.result {
            LandResult::Landed { commits } => {
                for id in rest {
                    match commits.iter().find(|(s, _)| *s == id) {
                        Some((_, commit)) => self.advance_landed(&id, commit.clone()),
                        None => {
                            landed_whole = false;
                            self.fail(&id, "landing reported nothing of this story".into())
                        }
                    }
                }
                first_landed = landed_whole;
            }
            // A failure on top of a chain ahead may be theirs: queue again
            // at once, on the default branch or a chain with none of those
            // stories (Zuul retests those behind a failure without it);
            // theirs is known when they land, or go back.
            LandResult::GateFailed { .. } if report.speculative || b.cancelled => {
                if report.speculative {
                    self.train.avoid.extend(b.ahead.iter().cloned());
                    self.train.solo = true;
                }
                self.requeue(&rest);
            }
            LandResult::GateFailed { gate, output_tail } => {
                let base = report.base.get(..12).unwrap_or(&report.base);
                let reason =
                    format!("gate `{gate}` failed on the default branch at {base} with this story: {output_tail}");
                self.gate_failed(b, rest, reason);
            }
            LandResult::Failed { reason } => {
                for id in rest {
                    self.fail(&id, format!("landing: {reason}"));
                }
            }
            LandResult::Retry { .. } => self.requeue(&rest),
        }
        // Anything but a whole landing says nothing of the second half.
        if let Some(split) = first_half {
            self.settle_sibling(batch, split, first_landed);
        }
        self.form_landing_batch();
    }

    /// Back in line, no attempt counted.
    fn requeue(&mut self, stories: &[StoryId]) {
        let deadline = self.now.saturating_add_ms(self.config.run_timeout_for(Stage::Merge));
        for id in stories {
            if let Some(token) = self.landing_run(id) {
                self.claims.enter(id, token, Phase::Queued, deadline);
            }
        }
    }

    /// The gates failed on `rest`: one story goes back; a batch is retried
    /// once, then split.
    fn gate_failed(&mut self, b: Batch, rest: Vec<StoryId>, reason: String) {
        for id in &rest {
            let token = self.landing_run(id).expect("live stories are landing");
            // Back in line; a new batch enters Landing again.
            let deadline = self.now.saturating_add_ms(self.config.run_timeout_for(Stage::Merge));
            self.claims.enter(id, token, Phase::Queued, deadline);
        }
        match rest.len() {
            0 => {}
            1 => self.send_back(&rest[0], &reason),
            _ if !b.retried && b.half.is_none() => {
                self.start_batch(rest, true, None);
            }
            n => {
                self.emit(Event::BatchSplit { batch: b.id, size: n });
                self.push_halves(rest, reason);
            }
        }
    }

    /// Landing sent the story back: to `current` with the reason, for its
    /// agent to fix, or given up after `max_returns` returns.
    pub(crate) fn send_back(&mut self, story: &StoryId, reason: &str) {
        let Some(run) = self.claims.end(story) else { return };
        let mut state = self.index.known(story).state.clone();
        assert_eq!(state.token, run.token, "sending {story} back under a superseded token");
        assert_eq!(state.holder.as_ref(), Some(&self.node), "sending {story} back, which we do not hold");
        state.holder = None;
        state.token = state.token.next();
        state.attempts = 0;
        state.returns = state.returns.saturating_add(1);
        let gave_up = state.returns >= self.config.max_returns;
        if gave_up {
            state.failed = true;
            state.reason = Some(short_reason(&format!("gave up after {} returns: {reason}", state.returns)));
        } else {
            state.stage = Stage::Current;
            state.reason = Some(short_reason(reason));
        }
        let (token, returns) = (state.token, state.returns);
        self.end_run_in_doc(story, Some(state), &run, RunOutcomeKind::Returned, Some(short_reason(reason)));
        self.emit(Event::SentBack { story: story.clone(), token, returns, gave_up, reason: reason.to_owned() });
    }

    /// The train's invariants: a landing run is in the batch in flight.
    pub(crate) fn check_train(&self) {
        for (id, r) in self.claims.runs() {
            if r.phase == Phase::Landing {
                assert!(self.train.in_flight().any(|s| s == id), "{id} landing outside the batch in flight");
            }
            if matches!(r.phase, Phase::Queued | Phase::Landing) {
                assert_eq!(r.stage, Stage::Merge, "{id} queued to land from {}", r.stage);
            }
        }
        if let Some(b) = &self.train.in_flight {
            assert!(b.stories.len() <= self.config.land_batch, "a batch over the limit");
        }
    }
}

/// The merge queue as this replica sees it (for `huskies queue` and the
/// dashboard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Stories in `merge`, in queue order (priority, then when each reached
    /// `merge`, then age), not given up.
    pub order: Vec<StoryId>,
    /// Each merge node's batch being tested, with the stories of other
    /// batches it is stacked on; only batches with a story still landing.
    pub testing: Vec<(crate::NodeId, Car)>,
}

impl Engine {
    pub fn queue_view(&mut self) -> QueueView {
        let mut order: Vec<_> = self
            .index
            .stories()
            .filter(|(_, v)| v.state.stage == Stage::Merge && !v.state.failed && !v.state.removed)
            .map(|(id, _)| (self.queue_key(id), id.clone()))
            .collect();
        order.sort();
        let mut testing = Vec::new();
        for (node, raw) in self.read_trains() {
            let Some(car) = Car::decode(&raw) else { continue };
            let live = car.stories.iter().any(|(s, t)| self.ahead_state(s, *t, Some(&node)) == AheadState::Landing);
            if live {
                testing.push((node, car));
            }
        }
        QueueView { order: order.into_iter().map(|(_, id)| id).collect(), testing }
    }
}
