//! The engine: state, the `handle`/`poll_*` contract, and the local index.

use automerge::ActorId;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::claims::Claims;
use crate::doc::{Doc, NodeRecord, StoryView};
use crate::index::Index;
use crate::liveness::Liveness;
use crate::peers::{DialTarget, Peers, Purpose};
use crate::story::StoryState;
use crate::{Config, Event, Input, Millis, NodeId, Output, PersistKind, Stage, StoryId};

/// Sync rounds between a story becoming claimable and the scan of claims
/// it asks for (`timers::Scan::claims_soon`).
const CLAIM_SCAN_SYNC_ROUNDS: u64 = 5;

/// Where a node is in its life. It only moves down this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lifecycle {
    /// Storage not loaded: nothing but `StorageLoaded` is acted on.
    Loading,
    /// Claims, runs, beats, and (at the server) cuts.
    Running,
    /// We said goodbye: our last beat went out; no more claims or cuts.
    Leaving,
    /// Our own key was revoked: we run and claim nothing more.
    Revoked,
}

/// The sans-IO state machine of one node. See the crate docs for the
/// contract.
pub struct Engine {
    // Handles: what the node is and what it is given. Nothing else on
    // `Engine` is loose; every rule's state is a part below.
    pub(crate) config: Config,
    pub(crate) node: NodeId,
    /// Seeded at construction: a restart is a new incarnation.
    pub(crate) incarnation: u64,
    /// Our Automerge actor (node id + incarnation), kept to rebuild the
    /// document after a panic.
    pub(crate) actor: ActorId,
    /// Our key and certificate, the CA's key (and its secret at the server).
    pub(crate) creds: crate::identity::Credentials,
    /// The driver's monotonic clock at the input being handled.
    pub(crate) now: Millis,
    /// Every random choice: jitter, generated ids.
    pub(crate) rng: ChaCha8Rng,

    // Parts (see the table in the crate docs).
    /// Loading, running, leaving or revoked.
    pub(crate) lifecycle: Lifecycle,
    /// Every output, staged, held behind a persist, or ready.
    pub(crate) outbox: crate::outbox::Outbox,
    /// The replicated document.
    pub(crate) doc: Doc,
    /// What recovery reloads (`defence.rs`).
    pub(crate) saved: crate::defence::Saved,
    /// Values of the document not believed (`schema.rs`).
    pub(crate) refusals: crate::schema::Refusals,
    /// What the document says of every story and node.
    pub(crate) index: Index,
    /// The base of our epoch, for peers still in an older one, and whether
    /// a new one is wanted (`epoch.rs`).
    pub(crate) epochs: crate::epoch::Epochs,
    /// Signatures of the changes of our epoch (`signing.rs`).
    pub(crate) sigs: crate::signing::Signatures,
    /// CA-signed cluster settings in force (applied to `config`).
    pub(crate) settings: crate::settings::InForce,
    /// Believed and revoked node keys.
    pub(crate) members: crate::membership::Members,
    /// Who is alive, with how many free slots; who was reported dead.
    pub(crate) liveness: Liveness,
    /// Our heartbeat: its sequence, advertised free slots, next one due.
    pub(crate) beat: crate::liveness::OwnBeat,
    /// Connections, dial targets, owed syncs, beats to relay.
    pub(crate) peers: Peers,
    /// Our runs from claim to result; cooldowns, stagger, worktrees,
    /// fences; a pause while our agent's API refuses us.
    pub(crate) claims: Claims,
    /// Our landing batches (merge stage).
    pub(crate) train: crate::landing::Train,
    /// The UTC day by the driver's wall clock: the ledger's and the budget's.
    pub(crate) today: crate::ledger::Today,
    /// When the periodic scan runs next.
    pub(crate) scan: crate::timers::Scan,
    /// When debug builds check the whole index against the document.
    pub(crate) checks: crate::invariants::Checks,
}

impl Engine {
    /// Creates a node. `seed` drives every random choice (incarnation,
    /// backoff jitter, generated ids); `now` is the local clock.
    ///
    /// # Panics
    /// If `config` is invalid: validate it first with [`Config::validate`].
    pub fn new(config: Config, node: NodeId, seed: u64, now: Millis) -> Engine {
        if let Err(e) = config.validate() {
            panic!("invalid engine config: {e}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let incarnation = rng.next_u64();
        // Actor = node id + incarnation: derived from the node id, yet a node
        // that restarted with lost storage never reuses (actor, seq) pairs
        // its peers already hold, which Automerge cannot survive.
        let mut actor = node.as_str().as_bytes().to_vec();
        actor.push(0);
        actor.extend_from_slice(&incarnation.to_be_bytes());
        let liveness = Liveness::new(config.claim_timeout_ms);
        let creds = config.credentials.clone().unwrap_or_else(|| crate::identity::Credentials::dev(&node));
        let actor = ActorId::from(actor);
        Engine {
            doc: Doc::new(actor.clone()),
            actor,
            saved: Default::default(),
            config,
            node,
            rng,
            incarnation,
            now,
            lifecycle: Lifecycle::Loading,
            index: Index::default(),
            checks: crate::invariants::Checks::default(),
            claims: Claims::default(),
            train: Default::default(),
            liveness,
            creds,
            members: Default::default(),
            settings: crate::settings::InForce::default(),
            today: crate::ledger::Today::default(),
            refusals: Default::default(),
            peers: Peers::default(),
            beat: crate::liveness::OwnBeat::new(now),
            scan: crate::timers::Scan::new(now),
            outbox: Default::default(),
            epochs: crate::epoch::Epochs::default(),
            sigs: Default::default(),
        }
    }

    /// Feeds one input. Never panics on peer data; drain
    /// [`Engine::poll_output`] afterwards.
    pub fn handle(&mut self, now: Millis, input: Input) {
        // Local time never runs backwards inside the engine, whatever the
        // driver's clock does.
        self.now = self.now.max(now);
        match input {
            Input::StorageLoaded { bytes } => self.handle_storage_loaded(&bytes),
            Input::PeerConnected { conn } => self.handle_peer_connected(conn),
            Input::PeerMessage { conn, bytes } => self.handle_peer_message(conn, &bytes),
            Input::PeerClosed { conn } => self.handle_peer_closed(conn),
            Input::RunFinished { story, token, outcome, report } => {
                self.handle_run_finished(story, token, outcome, report)
            }
            Input::PushFinished { story, token, outcome } => self.handle_push_finished(story, token, outcome),
            Input::WorktreeInspected { story, token, committed } => {
                self.handle_worktree_inspected(story, token, committed)
            }
            Input::LandBuilt { batch, left_out } => self.handle_land_built(batch, left_out),
            Input::LandFinished { batch, report } => self.handle_land_finished(batch, report),
            Input::Command { id, command } => self.handle_command(id, command),
            Input::Timeout => self.handle_timeout(),
            Input::WallClock { unix_ms } => self.handle_wall_clock(unix_ms),
            Input::Persisted { seq } => self.outbox.handle_persisted(seq),
        }
        self.finish_input();
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.poll()
    }

    fn handle_timeout(&mut self) {
        if !self.is_ready() {
            return;
        }
        if self.beat.is_due(self.now) {
            self.send_heartbeat(true);
            self.beat.schedule(self.now, self.config.heartbeat_interval_ms);
        }
        self.start_settled_runs();
        self.check_ahead();
        self.form_landing_batch();
        if self.scan.is_due(self.now) {
            // Jitter the scan by up to a quarter interval: nodes started
            // together would otherwise scan, and collide, in lockstep.
            let interval = self.config.scan_interval_ms;
            let jitter = self.random_u64() % (interval / 4).max(1);
            self.scan.ran(self.now, interval - interval / 8 + jitter);
            self.expire_runs();
            self.adopt_orphaned_claims();
            self.scan_liveness();
            self.reconcile_mesh();
            self.scan_claims();
            self.scan.claims_ran();
            self.maybe_cut_epoch();
        } else if self.scan.claims_due(self.now) {
            self.scan.claims_ran();
            self.scan_claims();
        }
        self.dial_due();
    }

    fn handle_storage_loaded(&mut self, bytes: &[u8]) {
        if self.lifecycle != Lifecycle::Loading {
            return;
        }
        if !bytes.is_empty() {
            self.load_stored(bytes);
        }
        assert!(self.index.len() == 0, "the index is built once, from storage");
        let (stories, nodes, bad) = self.read_all();
        self.doc.skip_touched();
        for (id, rec) in nodes {
            self.learn_node(id, rec);
        }
        self.absorb_signed();
        self.absorb_settings();
        for (id, view) in stories {
            self.apply_story(&id, Some(view));
        }
        self.write_own_record();
        // Claims we held before a restart: ask what the worktree holds
        // before releasing or pushing.
        self.adopt_orphaned_claims();
        // A revocation of our own key may have been read on the way.
        if self.lifecycle == Lifecycle::Loading {
            self.lifecycle = Lifecycle::Running;
        }
        // Compact storage on every start: one snapshot replaces the log.
        let snapshot = self.doc.save_snapshot();
        self.persist(PersistKind::Snapshot, snapshot);
        self.doc.mark_persisted();
        self.emit(Event::Ready { stories: self.index.len(), unreadable: bad.keys });
        if let Some(addr) = self.config.rendezvous.clone() {
            self.peers.add_target(addr, DialTarget::new(Purpose::Rendezvous, self.now));
        }
        self.dial_due();
    }

    /// Loads what storage holds into the document: checked as peer bytes
    /// are, damage reported as `StorageCorrupt`, whatever loads kept.
    fn load_stored(&mut self, bytes: &[u8]) {
        // Stored bytes get the checks peer bytes get (a disk can be written
        // by anyone with access to the data dir), with a larger inflation
        // budget: a whole document is stored, not one message.
        let budget = self.config.max_inflated_bytes.saturating_mul(16);
        let crate::guard::Stored { chunks: good, sig_blocks, refused } = crate::guard::split_stored(bytes, budget);
        assert!(good.len() <= bytes.len(), "valid chunks are a prefix of what was stored");
        if let Some(e) = refused {
            let error = format!("stored chunk refused after {} good bytes: {e}", good.len());
            self.emit(Event::StorageCorrupt { error });
        }
        // `load_incremental` skips what it cannot parse without saying so;
        // a strict load first tells us whether storage is damaged.
        let strict = std::panic::catch_unwind(|| automerge::Automerge::load(&good).map(|_| ()));
        match strict {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.emit(Event::StorageCorrupt { error: e.to_string() }),
            Err(p) => {
                let error = format!("automerge panicked loading storage: {}", crate::defence::panic_text(p.as_ref()));
                self.emit(Event::StorageCorrupt { error });
            }
        }
        // Keep whatever loads; peers will fill in the rest. An epoch's
        // document loads as it is; one of epoch 0 on top of the genesis.
        let actor = self.actor.clone();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Doc::load(actor, &good))) {
            Ok(Ok(mut doc)) => {
                let epoch = doc.epoch();
                if epoch > 0 {
                    doc.automerge().set_actor(self.actor_for(epoch));
                }
                self.doc = doc;
            }
            Ok(Err(e)) => {
                self.emit(Event::StorageCorrupt { error: e.to_string() });
                let doc = &mut self.doc;
                let partial = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let loaded = doc.automerge().load_incremental(&good).map(|_| ());
                    crate::doc::forget_patches(doc.automerge());
                    loaded
                }));
                if !matches!(partial, Ok(Ok(()))) {
                    self.doc = Doc::new(self.actor.clone());
                }
            }
            Err(_) => {
                self.emit(Event::StorageCorrupt { error: "automerge panicked loading storage; starting empty".into() });
                self.doc = Doc::new(self.actor.clone());
            }
        }
        let base = self.read_base();
        self.epochs.loaded(base);
        // History that is not all signed cannot be served to a peer that
        // lacks it: the server moves everyone past it.
        if self.load_signatures(&sig_blocks) {
            self.epochs.want_cut();
        }
        if self.epochs.base().is_none() && self.doc.epoch() > 0 {
            // Damaged storage: we cannot serve our epoch's base to peers
            // behind us (the server and other peers still can).
            let error = format!("epoch {} document without a verifiable base signature", self.doc.epoch());
            self.emit(Event::StorageCorrupt { error });
        }
    }

    /// Our own node record, written when it differs from what we hold.
    pub(crate) fn write_own_record(&mut self) {
        let own = NodeRecord {
            address: self.config.address.clone(),
            label: self.config.label.clone(),
            capacity: self.config.capacity,
            cert: Some(self.creds.cert),
        };
        if self.index.node(&self.node) != Some(&own) {
            self.doc.put_node(&self.node, &own);
            self.index.put_node(self.node.clone(), Some(own));
        }
        assert_eq!(self.index.node(&self.node).map(|r| r.capacity), Some(self.config.capacity));
    }

    /// Persist what changed, then release the outputs it covers, then sync.
    pub(crate) fn finish_input(&mut self) {
        if self.doc.unpersisted() {
            self.doc.mark_persisted();
            let (kind, bytes) = if self.saved.snapshot_due(self.config.snapshot_every) {
                (PersistKind::Snapshot, self.doc.save_snapshot())
            } else {
                (PersistKind::Append, self.doc.save_incremental())
            };
            if !bytes.is_empty() {
                self.persist(kind, bytes);
            }
            // Every link, merges included: a mesh peer may have lost its
            // own rendezvous link and hear the server only through us
            // (tests/cluster.rs, an agent cut off from the server).
            self.peers.owe_sync_all();
        }
        // Advertise a change in free slots at once: claim ranking relies on
        // it, and a stale "busy" makes two nodes both think they rank first.
        if self.is_ready() && self.free_slots() != self.beat.advertised_slots() {
            self.send_heartbeat(false);
        }
        self.flush_sync();
        // Everything this input made follows the persist that covers it.
        self.outbox.end_input();
    }

    /// For drivers that make each `Persist` durable before they carry out
    /// the next output (tests, simulations, benches): every output, each
    /// `Persist` confirmed as it is handed over, so what it covers follows
    /// in the same batch. Carry them out in order.
    pub fn drain_sync_persist(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.poll_output() {
            let seq = match &o {
                Output::Persist { seq, .. } => Some(*seq),
                _ => None,
            };
            out.push(o);
            if let Some(seq) = seq {
                self.handle(self.now, Input::Persisted { seq });
            }
        }
        out
    }

    /// Outputs wait for a `Persist` the driver has not confirmed.
    pub fn awaiting_persist(&self) -> bool {
        self.outbox.awaiting_persist()
    }

    /// Emits a `Persist` and keeps the copy that recovery reloads. The
    /// signatures of what it covers go with it (`signing.rs`); a snapshot
    /// carries all of the epoch's.
    pub(crate) fn persist(&mut self, kind: PersistKind, mut bytes: Vec<u8>) {
        let doc_bytes = bytes.len();
        self.sign_new_changes();
        bytes.extend(self.sigs.take_block(!matches!(kind, PersistKind::Append)));
        self.saved.keep(kind, &bytes[..doc_bytes], bytes.len());
        self.saved.set_heads(self.doc.heads());
        // Persists go out at once, in order; what they cover waits.
        self.outbox.persist(kind, bytes);
    }

    pub(crate) fn emit(&mut self, event: Event) {
        tracing::debug!(node = %self.node, ?event);
        self.outbox.push(Output::Event(event));
    }

    /// Writes a new state for a story and updates the index. Every write of
    /// a state goes through here.
    pub(crate) fn write_state(&mut self, id: &StoryId, state: StoryState) {
        assert!(
            self.index.story(id).is_none_or(|v| v.state.token <= state.token),
            "a write never lowers the fencing token"
        );
        self.doc.put_state(id, &state);
        let view = match self.index.story(id) {
            Some(v) => StoryView { state, concurrent: 1, ..v.clone() },
            None => StoryView { title: String::new(), priority: 0, created: crate::UnixMs(0), state, concurrent: 1 },
        };
        self.apply_story(id, Some(view));
    }

    /// Brings the index up to date with `view` and reacts to what changed:
    /// lost claims stop runs, archived stories prune worktrees.
    pub(crate) fn apply_story(&mut self, id: &StoryId, view: Option<StoryView>) {
        // A story whose map a concurrent add of the same id replaced starts
        // over: its token may go back (fencing at the remote copes).
        let replaced = self.doc.take_replaced(id);
        let old = self.index.put_story(id, view.clone(), replaced);
        let Some(view) = view else { return };
        let state = &view.state;
        self.claims.observe(id, state);
        let was_free = old.as_ref().is_some_and(|o| o.state.holder.is_none() && o.state.is_claimable_stage());
        if !was_free && state.holder.is_none() && self.free_slots() > 0 && self.claimable(id).is_some() {
            // A few sync rounds later, not at once: stories added together
            // (an import, a burst of adds) arrive over several messages,
            // and the scan must see them all to claim by priority.
            let delay_ms = self.config.sync_interval_ms.saturating_mul(CLAIM_SCAN_SYNC_ROUNDS);
            self.scan.claims_soon(self.now.saturating_add_ms(delay_ms));
        }
        if let Some(old) = &old {
            if old.state.stage != state.stage {
                self.emit(Event::StageChanged {
                    story: id.clone(),
                    from: old.state.stage,
                    to: state.stage,
                    token: state.token,
                });
            }
            if state.attempts > old.state.attempts {
                let until = self.now.saturating_add_ms(self.retry_backoff_ms(state.attempts));
                self.claims.cool_down(id, until);
            }
        }
        if let Some(run) = self.claims.run(id)
            && (state.token != run.token || state.holder.as_ref() != Some(&self.node))
        {
            let run = self.drop_run(id).expect("checked above");
            self.emit(Event::ClaimLost {
                story: id.clone(),
                token: run.token,
                now_held_by: state.holder.clone(),
                now_token: state.token,
            });
        }
        if state.stage == Stage::Archived && self.claims.forget_worktree(id) {
            self.outbox.push(Output::PruneWorktree { story: id.clone() });
        }
    }

    pub(crate) fn retry_backoff_ms(&self, attempts: u32) -> u64 {
        let shift = attempts.saturating_sub(1).min(16);
        self.config.retry_backoff_ms.saturating_mul(1 << shift)
    }

    /// Rebuilds the index from the whole document after the document was
    /// replaced (a new epoch, or a reload after a panic): stories gone stop
    /// their runs and are forgotten; a story's state may differ from
    /// anything it was, so the token check is off meanwhile.
    pub(crate) fn reindex(&mut self) {
        let (stories, nodes, _) = self.read_all();
        self.doc.skip_touched();
        for (id, rec) in nodes {
            self.learn_node(id, rec);
        }
        let gone: Vec<StoryId> = self.index.story_ids().filter(|id| !stories.contains_key(*id)).cloned().collect();
        for id in gone {
            self.apply_story(&id, None);
            if let Some(run) = self.drop_run(&id) {
                self.emit(Event::ClaimLost {
                    story: id.clone(),
                    token: run.token,
                    now_held_by: None,
                    now_token: run.token,
                });
            }
            if self.claims.forget(&id) {
                self.outbox.push(Output::PruneWorktree { story: id });
            }
        }
        self.index.begin_rebuild();
        for (id, view) in stories {
            self.apply_story(&id, Some(view));
        }
        self.index.end_rebuild();
        self.absorb_signed();
        self.absorb_settings();
    }

    /// Re-reads everything a merge touched.
    pub(crate) fn absorb_remote_changes(&mut self) {
        let crate::doc::Touched { stories, nodes, signed, settings } = self.doc.take_touched();
        for (id, what) in stories {
            let known = self.index.story(&id).cloned();
            let reread = match (what, &known) {
                (crate::doc::Reread::Nothing, Some(_)) => continue,
                (crate::doc::Reread::State, Some(k)) => self.reread_state(&id, k),
                _ => None,
            };
            let (read, refused) = match reread {
                Some(r) => r,
                None => self.read_story_checked(&id),
            };
            for r in refused {
                self.refuse(r);
            }
            match read {
                crate::doc::StoryRead::Valid(view) => self.apply_story(&id, Some(view)),
                // Within an epoch no honest node deletes a story's map
                // (removal is a tombstone): the last valid view stands.
                crate::doc::StoryRead::Absent if known.is_some() => self.refuse(crate::schema::Refusal {
                    key: format!("stories/{id}"),
                    what: "the story was deleted".into(),
                    writer: None,
                }),
                crate::doc::StoryRead::Absent => self.apply_story(&id, None),
                crate::doc::StoryRead::Refused(r) => self.refuse(r),
            }
        }
        for id in nodes {
            match self.doc.read_node(&id) {
                Some(rec) => self.learn_node(id, rec),
                None => self.index.put_node(id, None),
            };
        }
        if signed {
            self.absorb_signed();
        }
        if settings {
            self.absorb_settings();
        }
    }

    /// A value not believed: counted, kept for `status`, told.
    pub(crate) fn refuse(&mut self, refusal: crate::schema::Refusal) {
        if !self.refusals.note(&refusal) {
            return;
        }
        self.emit(Event::ValueRefused { refusal });
    }

    /// The newest values not believed, and how many in all.
    pub fn refusals(&self) -> (impl Iterator<Item = &crate::schema::Refusal>, u64) {
        (self.refusals.recent(), self.refusals.total())
    }

    pub(crate) fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
