//! Epochs: history that stays bounded. See `docs/design/history.md`.
//!
//! Automerge walks a document's whole change history for every sync
//! message, so one document for the life of a pipeline makes every change
//! cost more as the pipeline ages. Instead, once the document holds
//! `epoch_after_changes` changes (and `epoch_changes_per_live_story` for
//! each live story: a cut reads them all on every node), the server (the
//! only node holding the CA secret) cuts a new epoch: a **base**, one
//! Automerge change by the actor
//! `huskies-epoch-<n>` that writes the live state (every story not archived
//! or removed, with its winning state; node records; signed entries;
//! settings), signed by the CA. Every node adopts the base as a fresh
//! document and syncs only with peers in the same epoch; a peer in an older
//! epoch is sent the base.
//!
//! A node moving to the new epoch **carries** what the base has not seen.
//! The base records, per source epoch, the clock it was cut from (the
//! largest op counter of every actor), and actors are per epoch, so an op
//! of the old document is "seen" exactly when the clock covers it:
//! - a story the base lacks was archived or removed at a cut (listed in the
//!   base's `archived` map for [`EPOCH_MEMORY`] epochs) unless its creation
//!   is unseen: then it was added after the cut and comes along whole;
//! - an unseen state comes along when it outranks the base's (the same
//!   precedence every merge uses, so fencing tokens never go back);
//! - an unseen field (title, body, priority) comes along only while the new
//!   document still holds the base's value: someone who wrote it in this
//!   epoch wrote it later, or carried the same value first;
//! - unseen run records, node records and signed entries the base lacks
//!   come along.
//!
//! A node more than [`EPOCH_MEMORY`] epochs behind cannot tell its unseen
//! writes apart: it carries nothing, keeps its old document in cold storage
//! and says so (`Event::EpochStarted { gap: true }`).

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value};

mod carry;

use carry::carry;

use crate::doc::{ARCHIVED_KEY, CLOCKS_KEY, Doc, EPOCH_KEY, EPOCH_SIG_KEY};
use crate::identity::{self, Sig, hex, unhex};
use crate::wire::Envelope;
use crate::{ConnId, Engine, Event, Millis, Output, PersistKind, RejectKind, StoryId};

/// Epochs a base remembers: the clocks of the documents it descends from
/// and the stories archived at their cuts. A node further behind carries
/// nothing (see the module docs).
pub const EPOCH_MEMORY: u64 = 16;

/// The actor of epoch n's base is this prefix and n.
pub(crate) const BASE_ACTOR_PREFIX: &[u8] = b"huskies-epoch-";

/// The base of the epoch we are in, as peers in older epochs are sent it.
#[derive(Debug, Clone)]
pub(crate) struct EpochBase {
    pub epoch: u64,
    pub hash: automerge::ChangeHash,
    pub sig: Sig,
    pub change: Vec<u8>,
}

impl EpochBase {
    pub fn envelope(&self) -> Vec<u8> {
        Envelope::Epoch { epoch: self.epoch, sig: self.sig, base: self.change.clone() }.encode()
    }
}

/// Where this node stands between epochs: the base of ours, which peers
/// still in an older epoch are sent, and whether the server wants a new
/// epoch cut whatever the peers hold.
#[derive(Debug, Default)]
pub(crate) struct Epochs {
    base: Option<EpochBase>,
    /// A cut is due (after a revocation, or over history that is not all
    /// signed): it waits for the peers to be in step, a claim timeout at
    /// most.
    cut_wanted: bool,
    /// When a scan first saw the wanted cut.
    cut_wanted_since: Option<Millis>,
}

impl Epochs {
    pub fn base(&self) -> Option<&EpochBase> {
        self.base.as_ref()
    }

    /// After a load: the base our stored document says it is on, if it
    /// verifies.
    pub fn loaded(&mut self, base: Option<EpochBase>) {
        self.base = base;
    }

    pub fn want_cut(&mut self) {
        self.cut_wanted = true;
    }

    /// How long a wanted cut has waited, counted from the first scan that
    /// saw it; `None` while no cut is wanted.
    pub fn cut_waited_ms(&mut self, now: Millis) -> Option<u64> {
        if !self.cut_wanted {
            self.cut_wanted_since = None;
            return None;
        }
        let since = *self.cut_wanted_since.get_or_insert(now);
        Some(now.saturating_sub(since))
    }

    /// We moved to `base`'s epoch: nothing is wanted of the old one.
    pub fn moved_to(&mut self, base: EpochBase) {
        if let Some(b) = &self.base {
            assert!(base.epoch > b.epoch, "epochs only move forward: {} after {}", base.epoch, b.epoch);
        }
        self.cut_wanted = false;
        self.cut_wanted_since = None;
        self.base = Some(base);
    }
}

/// Largest op counter per actor: what a document has seen.
type Clock = BTreeMap<Vec<u8>, u64>;

fn clock_of(am: &mut AutoCommit) -> Clock {
    let mut clock = Clock::new();
    for c in am.get_changes_meta(&[]) {
        let max = clock.entry(c.actor.to_bytes().to_vec()).or_default();
        *max = (*max).max(c.max_op);
    }
    clock
}

fn encode_clock(clock: &Clock) -> String {
    clock.iter().map(|(a, n)| format!("{}:{n}", hex(a))).collect::<Vec<_>>().join(";")
}

fn decode_clock(s: &str, into: &mut Clock) {
    for part in s.split(';').filter(|p| !p.is_empty()) {
        if let Some((a, n)) = part.split_once(':')
            && let (Some(a), Ok(n)) = (unhex(a), n.parse::<u64>())
        {
            let max = into.entry(a).or_default();
            *max = (*max).max(n);
        }
    }
}

fn covered(clock: &Clock, op: &automerge::ObjId) -> bool {
    match op {
        automerge::ObjId::Root => true,
        automerge::ObjId::Id(counter, actor, _) => clock.get(actor.to_bytes()).is_some_and(|max| counter <= max),
    }
}

fn scalar(v: &Value<'_>) -> Option<ScalarValue> {
    match v {
        Value::Scalar(s) => Some(s.as_ref().clone()),
        Value::Object(_) => None,
    }
}

fn map_of(am: &AutoCommit, parent: &ObjId, key: &str) -> Option<ObjId> {
    match am.get(parent, key) {
        Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
        _ => None,
    }
}

/// The winning scalar of every key of `obj`.
fn scalars(am: &AutoCommit, obj: &ObjId) -> Vec<(String, ScalarValue, ObjId)> {
    am.keys(obj)
        .filter_map(|k| {
            let (v, op) = am.get(obj, k.as_str()).ok()??;
            Some((k, scalar(&v)?, op))
        })
        .collect()
}

/// What a base of `epoch` remembers from the one before: the clocks and
/// archived stories of the last [`EPOCH_MEMORY`] epochs.
fn base_memory(old: &AutoCommit, epoch: u64) -> (BTreeMap<u64, String>, BTreeMap<String, u64>) {
    let oldest = epoch.saturating_sub(EPOCH_MEMORY);
    let mut clocks = BTreeMap::new();
    let mut archived = BTreeMap::new();
    if let Some(obj) = map_of(old, &automerge::ROOT, CLOCKS_KEY) {
        for (k, v, _) in scalars(old, &obj) {
            if let (Ok(e), ScalarValue::Str(s)) = (k.parse::<u64>(), v)
                && e >= oldest
            {
                clocks.insert(e, s.to_string());
            }
        }
    }
    if let Some(obj) = map_of(old, &automerge::ROOT, ARCHIVED_KEY) {
        for (k, v, _) in scalars(old, &obj) {
            if let ScalarValue::Uint(e) = v
                && e > oldest
            {
                archived.insert(k, e);
            }
        }
    }
    (clocks, archived)
}

/// Copies the scalars of `src` (but its state) into a new map `key` of
/// `parent` in `am`; returns the new map.
fn copy_map(old: &AutoCommit, src: &ObjId, am: &mut AutoCommit, parent: &ObjId, key: &str) -> ObjId {
    let dst = am.put_object(parent, key, ObjType::Map).expect("base");
    for (k, v, _) in scalars(old, src) {
        if k != "state" {
            am.put(&dst, k.as_str(), v).expect("base");
        }
    }
    dst
}

/// Root keys that are not the document's structure: signed entries and
/// settings.
fn is_root_entry(key: &str) -> bool {
    !matches!(key, "stories" | "nodes" | EPOCH_KEY | CLOCKS_KEY | ARCHIVED_KEY | EPOCH_SIG_KEY)
}

/// What one move to a new epoch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Carried {
    pub writes: usize,
}

impl Engine {
    /// Our Automerge actor in `epoch`: node id, incarnation, and (after the
    /// first cut) the epoch, so clocks of different epochs never mix.
    pub(crate) fn actor_for(&self, epoch: u64) -> ActorId {
        let mut bytes = self.actor.to_bytes().to_vec();
        if epoch > 0 {
            bytes.extend_from_slice(&epoch.to_be_bytes());
        }
        ActorId::from(bytes)
    }

    /// Changes held for dependencies that have not arrived (their missing
    /// ancestors), for tests and diagnostics.
    pub fn missing_deps_held(&mut self) -> usize {
        self.doc.automerge().get_missing_deps(&[]).len()
    }

    /// Whether a peer cut this document's root maps off (schema.rs); the
    /// server's next epoch mends it.
    pub fn root_damaged(&self) -> bool {
        self.doc.root_damaged()
    }

    pub fn epoch(&self) -> u64 {
        self.doc.epoch()
    }

    /// At the server, on the scan: cut a new epoch when the document has
    /// grown past `epoch_after_changes` and every linked peer has all we
    /// have (then nothing needs carrying), or past twice that regardless
    /// (carrying makes it safe; a busy cluster may never be quiet). Never
    /// alone, and never while a linked peer is in a later epoch.
    pub(crate) fn maybe_cut_epoch(&mut self) {
        let limit = self.cut_limit();
        // Exactly one node cuts: the one holding the CA secret that dials
        // no rendezvous (the server). Two cutters would make two bases of
        // one epoch.
        let cutter = self.creds.ca_secret.is_some() && self.config.rendezvous.is_none();
        if !cutter || self.lifecycle != crate::engine::Lifecycle::Running {
            return;
        }
        // A peer cut the root maps off (schema.rs): a new epoch puts fresh
        // ones in place, built from our index, as soon as we are not alone.
        let damaged = self.doc.root_damaged();
        // One is due after a revocation (its base leaves the revoked
        // node's history behind, signing.rs) or over unsigned history,
        // once the peers are in step: nobody's writes need carrying then.
        let waited_ms = self.epochs.cut_waited_ms(self.now);
        let wanted = waited_ms.is_some();
        // Peers that applied a revoked node's changes before its revocation
        // and peers that never will can never be in step: past a claim
        // timeout the cut goes ahead (carrying what it must).
        let overdue = waited_ms.is_some_and(|w| w >= self.config.claim_timeout_ms);
        if limit == 0 && !damaged && !wanted {
            return;
        }
        // The change graph's length: a walk of every change's metadata
        // here was 8% of a 10 × 10,000 run once epochs grew with the
        // backlog.
        let changes = self.doc.automerge().stats().num_changes;
        if changes < limit && !damaged && !wanted {
            return;
        }
        let ours = self.doc.epoch();
        // Only with a peer to compare with, and none ahead of us. A server
        // restored from a backup taken before its last cut holds an epoch
        // the cluster already left: cutting it again would make a second
        // base of an epoch that exists, which every node refuses (the
        // cluster split for good). The peer's base is on its way instead.
        let linked: Vec<Option<u64>> =
            self.peers.established().map(|(conn, _)| self.peers.conn(conn).and_then(|c| c.epoch)).collect();
        if linked.is_empty() || linked.iter().any(|e| e.is_none_or(|e| e > ours)) {
            return;
        }
        let mut heads = self.doc.heads();
        heads.sort();
        let in_step = self.peers.established().all(|(conn, _)| {
            self.peers.conn(conn).is_some_and(|c| {
                let mut theirs = c.sync.their_heads.clone().unwrap_or_default();
                theirs.sort();
                c.epoch == Some(ours) && theirs == heads
            })
        });
        if in_step || damaged || overdue || (limit > 0 && changes >= limit.saturating_mul(2)) {
            self.cut_epoch();
        }
    }

    /// The count of changes past which the server cuts: at least
    /// `epoch_after_changes`, and `epoch_changes_per_live_story` for each
    /// story the base would hold (0 stays "never").
    pub(crate) fn cut_limit(&self) -> u64 {
        let floor = self.config.epoch_after_changes;
        if floor == 0 {
            return 0;
        }
        let live = self.index.len() as u64;
        floor.max(live.saturating_mul(self.config.epoch_changes_per_live_story))
    }

    /// Builds, signs and adopts the next epoch's base from our state.
    fn cut_epoch(&mut self) {
        let Some(ca_secret) = self.creds.ca_secret else { return };
        let epoch = self.doc.epoch() + 1;
        let change = self.build_base(epoch);
        let Ok(parsed) = automerge::Change::from_bytes(change.clone()) else {
            panic!("a base we built does not parse");
        };
        let hash = parsed.hash();
        let sig = identity::sign_epoch(&ca_secret, epoch, &hash.0);
        let adopted = self.adopt_base(EpochBase { epoch, hash, sig, change });
        assert!(adopted, "our own base of epoch {epoch} was refused");
    }

    /// The live state as one change: the base of `epoch`.
    fn build_base(&mut self, epoch: u64) -> Vec<u8> {
        let (mut clocks, mut archived) = base_memory(self.doc.automerge(), epoch);
        clocks.insert(epoch - 1, encode_clock(&clock_of(self.doc.automerge())));
        #[allow(clippy::disallowed_methods)] // a fixed actor per epoch: one writer, the CA holder
        let mut am =
            AutoCommit::new().with_actor(ActorId::from([BASE_ACTOR_PREFIX, epoch.to_string().as_bytes()].concat()));
        // Writes to a fresh in-memory document cannot fail.
        am.put(automerge::ROOT, EPOCH_KEY, epoch).expect("base");
        let stories = am.put_object(automerge::ROOT, "stories", ObjType::Map).expect("base");
        let nodes = am.put_object(automerge::ROOT, "nodes", ObjType::Map).expect("base");
        let (old_stories, old_nodes) = (self.doc.stories_obj().clone(), self.doc.nodes_obj().clone());
        let old = self.doc.automerge();
        for (id, view) in self.index.stories() {
            if view.state.stage == crate::Stage::Archived || view.state.removed {
                archived.insert(id.as_str().to_owned(), epoch);
                continue;
            }
            // A story whose map a peer replaced with something else
            // (schema.rs refused it) is rebuilt from our index.
            let dst = match map_of(old, &old_stories, id.as_str()) {
                Some(src) => copy_map(old, &src, &mut am, &stories, id.as_str()),
                None => am.put_object(&stories, id.as_str(), ObjType::Map).expect("base"),
            };
            // The index's values: the winner by our precedence, not
            // Automerge's pick, and the last valid ones where a peer wrote
            // something the schema refused.
            am.put(&dst, "title", view.title.as_str()).expect("base");
            am.put(&dst, "priority", view.priority).expect("base");
            am.put(&dst, "created", view.created.0).expect("base");
            am.put(&dst, "state", view.state.encode()).expect("base");
        }
        for id in old.keys(&old_nodes).collect::<Vec<_>>() {
            if let Some(src) = map_of(old, &old_nodes, &id) {
                copy_map(old, &src, &mut am, &nodes, &id);
            }
        }
        for (k, v, _) in scalars(old, &automerge::ROOT) {
            if is_root_entry(&k) && k != crate::doc::SETTINGS_KEY {
                am.put(automerge::ROOT, k.as_str(), v).expect("base");
            }
        }
        if let Some(s) = self.settings.current()
            && let Some(ca_secret) = &self.creds.ca_secret
        {
            am.put(automerge::ROOT, crate::doc::SETTINGS_KEY, s.encode_signed(ca_secret)).expect("base");
        }
        let clocks_obj = am.put_object(automerge::ROOT, CLOCKS_KEY, ObjType::Map).expect("base");
        for (e, c) in &clocks {
            am.put(&clocks_obj, e.to_string(), c.as_str()).expect("base");
        }
        let archived_obj = am.put_object(automerge::ROOT, ARCHIVED_KEY, ObjType::Map).expect("base");
        for (id, e) in &archived {
            am.put(&archived_obj, id.as_str(), *e).expect("base");
        }
        am.commit_with(CommitOptions::default().with_time(0));
        let change = am.get_last_local_change().expect("the base change");
        assert_eq!(am.get_heads(), vec![change.hash()], "a base is one change");
        change.raw_bytes().to_vec()
    }

    /// A peer sent epoch `epoch`'s base.
    pub(crate) fn handle_epoch(&mut self, conn: ConnId, epoch: u64, sig: Sig, base: Vec<u8>) {
        let ours = self.doc.epoch();
        if let Some(c) = self.peers.conn_mut(conn) {
            c.epoch = Some(epoch);
        }
        if epoch < ours {
            // Behind us: they get ours (they may have sent theirs first).
            return self.send_base(conn);
        }
        if epoch == ours {
            if self.epochs.base().is_some_and(|b| b.change != base) {
                return self.reject(conn, RejectKind::Protocol, format!("a second base for epoch {epoch}"));
            }
            self.peers.owe_sync(conn);
            return;
        }
        let hash = match automerge::Change::from_bytes(base.clone()) {
            Ok(c) => c.hash(),
            Err(e) => return self.reject(conn, RejectKind::Sync, format!("epoch {epoch} base does not parse: {e}")),
        };
        if !identity::verify_epoch(&self.creds.ca, epoch, &hash.0, &sig) {
            return self.reject(conn, RejectKind::Identity, format!("epoch {epoch} base not signed by the CA"));
        }
        if !self.adopt_base(EpochBase { epoch, hash, sig, change: base }) {
            self.reject(conn, RejectKind::Sync, format!("epoch {epoch} base is not a base"));
        }
    }

    pub(crate) fn send_base(&mut self, conn: ConnId) {
        let Some(b) = self.epochs.base() else { return };
        let Some(c) = self.peers.conn_mut(conn) else { return };
        if c.sent_base == Some(b.epoch) {
            return;
        }
        c.sent_base = Some(b.epoch);
        let bytes = b.envelope();
        self.outbox.push(Output::Send { conn, bytes });
    }

    /// Moves this node to `base`'s epoch: a fresh document from the base,
    /// our unseen writes carried over, the old document to cold storage.
    /// False when the base is not a well-formed base of that epoch.
    pub(crate) fn adopt_base(&mut self, base: EpochBase) -> bool {
        #[allow(clippy::disallowed_methods)] // only loaded into; `from_loaded` sets our actor before any write
        let mut am = AutoCommit::new();
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| am.load_incremental(&base.change)));
        if !matches!(loaded, Ok(Ok(_))) || am.get_heads() != vec![base.hash] {
            return false;
        }
        let Some(mut new) = Doc::from_loaded(am, self.actor_for(base.epoch)) else { return false };
        if new.epoch() != base.epoch {
            return false;
        }
        let from = self.doc.epoch();
        assert!(base.epoch > from, "epochs only move forward");
        let gap = from + EPOCH_MEMORY < base.epoch;
        let admin = self.signs_as_admin();
        let carried = if gap { Carried::default() } else { carry(&mut self.doc, &mut new, &self.node.clone(), admin) };
        new.automerge()
            .put(automerge::ROOT, EPOCH_SIG_KEY, format!("{}:{}", hex(&base.hash.0), hex(&base.sig)))
            .expect("put epoch sig");
        new.automerge().commit_with(CommitOptions::default().with_time(0));
        // What the old document still owes storage goes there first, so
        // cold storage holds all of it.
        if self.doc.unpersisted() {
            let bytes = self.doc.save_incremental();
            if !bytes.is_empty() {
                self.persist(PersistKind::Append, bytes);
            }
        }
        let before: BTreeSet<StoryId> = self.index.story_ids().cloned().collect();
        self.doc = new;
        // The old history and its signatures stay behind; the base is the
        // CA's, and what we write on top of it is signed as we persist.
        self.sigs.clear_history();
        self.epochs.moved_to(base.clone());
        self.reindex();
        self.write_own_record();
        let snapshot = self.doc.save_snapshot();
        self.persist(PersistKind::Epoch { epoch: base.epoch }, snapshot);
        self.doc.mark_persisted();
        self.saved.snapshot_taken();
        let archived = before.iter().filter(|id| !self.index.contains(id)).count();
        // Sync starts over with everyone: a peer in this epoch syncs, a peer
        // behind is sent the base, a peer ahead sends us its own.
        let conns: Vec<ConnId> = self.peers.established().map(|(c, _)| c).collect();
        for conn in conns {
            if let Some(c) = self.peers.conn_mut(conn) {
                c.restart_sync();
            }
            self.send_base(conn);
        }
        self.emit(Event::EpochStarted { epoch: base.epoch, carried: carried.writes, archived, gap });
        true
    }

    /// After a restart: the base of the epoch our document is in, from the
    /// signature every adopter writes.
    pub(crate) fn read_base(&mut self) -> Option<EpochBase> {
        let epoch = self.doc.epoch();
        if epoch == 0 {
            return None;
        }
        let am = self.doc.automerge();
        let values: Vec<ScalarValue> = am
            .get_all(automerge::ROOT, EPOCH_SIG_KEY)
            .unwrap_or_default()
            .iter()
            .filter_map(|(v, _)| scalar(v))
            .collect();
        for v in values {
            let ScalarValue::Str(s) = v else { continue };
            let Some((h, sig)) = s.split_once(':') else { continue };
            let (Some(h), Some(sig)) = (unhex(h), unhex(sig)) else { continue };
            let (Ok(h), Ok(sig)) = (<[u8; 32]>::try_from(h), Sig::try_from(sig)) else { continue };
            let hash = automerge::ChangeHash(h);
            if !identity::verify_epoch(&self.creds.ca, epoch, &h, &sig) {
                continue;
            }
            if let Some(change) = am.get_change_by_hash(&hash) {
                return Some(EpochBase { epoch, hash, sig, change: change.raw_bytes().to_vec() });
            }
        }
        None
    }
}
