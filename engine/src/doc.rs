//! The replicated document: typed reads and writes of the Automerge
//! document, and which stories and nodes a merge touched. (The index of
//! stories built from it lives in the engine.)
//!
//! Layout: `stories/<id>` → map {title, state}, `nodes/<id>` → map
//! {address, label, capacity}. The root maps are created by one genesis
//! change that every node builds byte for byte (fixed actor, fixed time), so
//! no two nodes ever race to create `stories` and hide each other's work.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value};

use crate::identity::{Cert, PublicKey, Sig, hex, unhex};
use crate::schema::Refusal;
use crate::story::StoryState;
use crate::{NodeId, StoryId};

mod touched;
mod unsaved;
mod validity;

pub(crate) use touched::Writes;
pub use touched::{Reread, Touched};

/// Who wrote an op (signing.rs), for the schema's writer rules.
pub type Auth<'a> = &'a dyn Fn(&ObjId) -> crate::schema::Writer;

const GENESIS_ACTOR: &[u8] = b"huskies-genesis";
/// Root keys of an epoch's base (see `epoch.rs`): its number, the clocks of
/// the documents it was cut from, the stories archived at recent cuts, and
/// the CA's signature of the base (written by each node that adopts it).
pub(crate) const EPOCH_KEY: &str = "epoch";
pub(crate) const CLOCKS_KEY: &str = "clocks";
pub(crate) const ARCHIVED_KEY: &str = "archived";
pub(crate) const EPOCH_SIG_KEY: &str = "epoch_sig";
/// Prefix of run-record keys in a story's map: `run/<token>/<node>`.
const RUN_PREFIX: &str = "run/";
/// Root key of the CA-signed cluster settings (a scalar: no map to race on).
pub(crate) const SETTINGS_KEY: &str = "settings";

/// A story as this replica currently sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoryView {
    pub title: String,
    /// Higher is claimed first.
    pub priority: i64,
    /// When it was added (unix ms, from the adding node's clock); older is
    /// claimed first among equal priorities. Only an order, never compared
    /// with this node's time.
    pub created: crate::UnixMs,
    /// The winning state among concurrent writes.
    pub state: StoryState,
    /// How many concurrent state values the document holds right now (1
    /// when there is no conflict).
    pub concurrent: usize,
}

/// Durable membership of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub address: Option<String>,
    pub label: String,
    pub capacity: u32,
    /// The node's key and the CA's signature of it. Checked by every
    /// reader: anyone can write a record, only the CA can sign one.
    pub cert: Option<Cert>,
}

/// A CA-signed statement about one node key, kept at the document root
/// under `<kind>/<node>/<key hex>`: a scalar per key, so concurrent writers
/// never race to create a map (and the genesis change stays as it was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub kind: SignedKind,
    pub node: NodeId,
    pub key: PublicKey,
    /// The CA's signature: a certificate for `Enrolled`, a revocation for
    /// `Revoked`.
    pub sig: Sig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedKind {
    /// The server admitted the node with this key (its certificate), so
    /// every node knows the key before the node ever connects.
    Enrolled,
    /// The key is revoked.
    Revoked,
}

impl SignedKind {
    const ALL: [SignedKind; 2] = [SignedKind::Enrolled, SignedKind::Revoked];

    fn prefix(self) -> &'static str {
        match self {
            SignedKind::Enrolled => "enrolled/",
            SignedKind::Revoked => "revoked/",
        }
    }
}

/// Root keys of landing cars: `train/<node>`.
const TRAIN_PREFIX: &str = "train/";

fn epoch_of(am: &AutoCommit) -> u64 {
    match am.get(automerge::ROOT, EPOCH_KEY) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Uint(n) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

/// A story as read from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoryRead {
    /// No story under that id.
    Absent,
    Valid(StoryView),
    /// Its values break the schema: not believed.
    Refused(Refusal),
}

pub struct Doc {
    am: AutoCommit,
    stories_obj: ObjId,
    nodes_obj: ObjId,
    story_objs: BTreeMap<StoryId, ObjId>,
    /// Stories whose map was replaced by a concurrent add of the same id
    /// since the engine last asked ([`Doc::take_replaced`]).
    replaced: BTreeSet<StoryId>,
    /// Writes go into one change until [`Doc::end_batch`] (a scan's claims:
    /// one commit instead of one per claim).
    batching: bool,
    /// Stories whose map no key points to any more (a peer put something
    /// else under the story's key): every merge counts them as touched, as
    /// their read looks behind the current value.
    hidden: BTreeSet<StoryId>,
    /// Changes made or merged since the last persist (the engine persists
    /// when this is set, and clears it when it does).
    unpersisted: bool,
    /// What each state op stands for (`doc/validity.rs`).
    state_verdicts: validity::Verdicts,
    /// Where each checked change from a peer writes, until it applies
    /// (`doc/touched.rs`).
    notes: BTreeMap<automerge::ChangeHash, Writes>,
    /// How many changes the document held when the engine last learnt what
    /// they touched.
    changes_known: u64,
    /// Whose each object is (`doc/touched.rs`).
    owners: touched::Owners,
    /// Merges read whole because a change applied unnoted.
    full_reads: u64,
    /// What storage holds, and bytes in hand for what it lacks
    /// (`doc/unsaved.rs`).
    unsaved: unsaved::Unsaved,
}

/// Drops the patches Automerge logged while applying others' changes.
/// Automerge 0.12 logs one for every map value a remote change puts, into
/// the document's patch log, even while that log is inactive (the batch
/// apply path never asks), and only a diff cursor ever empties it: it grew
/// with every change a node received, and nothing here reads it (we keep
/// no diff cursor). Called after every load and apply. Measured: 5.2 of
/// the 14 MB a node held at 10,000 stories just loaded (`bench memory`).
pub(crate) fn forget_patches(am: &mut AutoCommit) {
    am.reset_diff_cursor();
}

/// Things the document holds that we could not read (written by a newer or
/// misbehaving peer). They are skipped, never unwrapped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub keys: Vec<String>,
}

impl Doc {
    /// A document holding only the shared genesis change, writing as `actor`.
    pub fn new(actor: ActorId) -> Doc {
        #[allow(clippy::disallowed_methods)] // the one sanctioned use: fixed genesis actor
        let mut am = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
        // Writes to a fresh in-memory document cannot fail.
        let stories_obj = am.put_object(automerge::ROOT, "stories", ObjType::Map).expect("genesis");
        let nodes_obj = am.put_object(automerge::ROOT, "nodes", ObjType::Map).expect("genesis");
        am.commit_with(CommitOptions::default().with_time(0));
        am.set_actor(actor);
        Doc::wrap(am, stories_obj, nodes_obj)
    }

    /// A document around `am`, whose root maps are `stories_obj` and
    /// `nodes_obj`, nothing read yet.
    fn wrap(mut am: AutoCommit, stories_obj: ObjId, nodes_obj: ObjId) -> Doc {
        forget_patches(&mut am);
        let am_changes = am.stats().num_changes;
        Doc {
            am,
            stories_obj,
            nodes_obj,
            story_objs: BTreeMap::new(),
            replaced: BTreeSet::new(),
            batching: false,
            unpersisted: false,
            hidden: BTreeSet::new(),
            state_verdicts: Default::default(),
            notes: BTreeMap::new(),
            changes_known: am_changes,
            owners: BTreeMap::new(),
            full_reads: 0,
            unsaved: Default::default(),
        }
    }

    /// A document from stored bytes: an epoch's document (its base plus
    /// what followed) as it is, a document of epoch 0 on top of the
    /// genesis change every node shares.
    pub fn load(actor: ActorId, bytes: &[u8]) -> Result<Doc, automerge::AutomergeError> {
        #[allow(clippy::disallowed_methods)] // only loaded into; `from_loaded` sets our actor before any write
        let mut am = AutoCommit::new();
        am.load_incremental(bytes)?;
        if epoch_of(&am) > 0 {
            return Doc::from_loaded(am, actor).ok_or(automerge::AutomergeError::Fail);
        }
        let mut doc = Doc::new(actor);
        doc.am.load_incremental(bytes)?;
        forget_patches(&mut doc.am);
        doc.skip_touched();
        Ok(doc)
    }

    /// Wraps a document that holds an epoch's base; `None` if its root
    /// lacks the maps a base has.
    pub fn from_loaded(mut am: AutoCommit, actor: ActorId) -> Option<Doc> {
        let map = |am: &AutoCommit, key: &str| match am.get(automerge::ROOT, key) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
            _ => None,
        };
        let stories_obj = map(&am, "stories")?;
        let nodes_obj = map(&am, "nodes")?;
        am.set_actor(actor);
        Some(Doc::wrap(am, stories_obj, nodes_obj))
    }

    /// The epoch this document belongs to (0 before the first cut).
    pub fn epoch(&self) -> u64 {
        epoch_of(&self.am)
    }

    pub fn stories_obj(&self) -> &ObjId {
        &self.stories_obj
    }

    pub fn nodes_obj(&self) -> &ObjId {
        &self.nodes_obj
    }

    pub fn automerge(&mut self) -> &mut AutoCommit {
        &mut self.am
    }

    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.am.get_heads()
    }

    /// Commits what was written through [`Doc::automerge`], left for
    /// [`Doc::take_touched`] to report as a peer's change would be.
    /// (Hostile writes in tests.)
    #[cfg(any(test, feature = "testkit"))]
    pub fn commit_now(&mut self) {
        if !self.batching
            && let Some(hash) = self.am.commit_with(CommitOptions::default().with_time(0))
            && let Some(change) = self.am.get_change_by_hash(&hash)
        {
            self.note_writes(hash, Writes::of(&change.decode()));
        }
        self.unpersisted = true;
    }

    /// Merges the changes of `other` that we lack, noted as a peer's
    /// would be when they arrive (tests).
    #[cfg(test)]
    pub(crate) fn merge_noted(&mut self, other: &mut Doc) {
        let changes = self.am.get_changes_added(&mut other.am);
        for c in &changes {
            self.note_writes(c.hash(), Writes::of(&c.decode()));
        }
        self.am.apply_changes(changes).expect("changes of a well-formed document");
        forget_patches(&mut self.am);
    }

    /// Commits one of our typed writes. Its effect is ours, known to the
    /// engine: counted as seen by [`Doc::take_touched`], and unpersisted.
    fn commit(&mut self) {
        if !self.batching {
            let made = self.am.commit_with(CommitOptions::default().with_time(0));
            self.count_own(made);
        }
        self.unpersisted = true;
    }

    /// Whether changes were made or merged since the last persist.
    pub fn unpersisted(&self) -> bool {
        self.unpersisted
    }

    /// Changes arrived from a peer (merged through [`Doc::automerge`]).
    pub fn mark_unpersisted(&mut self) {
        self.unpersisted = true;
    }

    /// Everything so far is in storage.
    pub fn mark_persisted(&mut self) {
        self.unpersisted = false;
    }

    /// Until [`Doc::end_batch`], writes share one change. Nothing may read
    /// heads or merge meanwhile (those would close the change at an
    /// unfixed time).
    pub fn begin_batch(&mut self) {
        assert!(!self.batching, "batches do not nest");
        self.batching = true;
    }

    /// Commits the batch's writes as one change, marked seen.
    pub fn end_batch(&mut self) {
        assert!(self.batching, "end of a batch never begun");
        self.batching = false;
        // A scan that claimed nothing made no change: nothing to persist.
        let made = self.am.commit_with(CommitOptions::default().with_time(0));
        if made.is_some() {
            self.unpersisted = true;
        }
        self.count_own(made);
    }

    /// The ids of the stories in the document (keys that are not valid ids
    /// left out).
    pub fn story_ids(&mut self) -> Vec<StoryId> {
        self.am.keys(&self.stories_obj).filter_map(|k| StoryId::new(k).ok()).collect()
    }

    /// Every story and node, each writer taken for the admin (cold
    /// storage and tests; the engine reads with [`Doc::read_all_as`]).
    pub fn read_all(&mut self) -> (BTreeMap<StoryId, StoryView>, BTreeMap<NodeId, NodeRecord>, Unreadable) {
        self.read_all_as(&|_| crate::schema::Writer::Admin)
    }

    /// Every story and node, values checked against what their writers
    /// may write (`auth`: who wrote an op).
    pub fn read_all_as(
        &mut self,
        auth: Auth<'_>,
    ) -> (BTreeMap<StoryId, StoryView>, BTreeMap<NodeId, NodeRecord>, Unreadable) {
        let mut bad = Unreadable::default();
        let mut stories = BTreeMap::new();
        let keys: Vec<String> = self.am.keys(&self.stories_obj).collect();
        for key in keys {
            match StoryId::new(key.clone()) {
                Ok(id) => match self.read_story_checked(&id, auth).0 {
                    StoryRead::Valid(v) => {
                        stories.insert(id, v);
                    }
                    StoryRead::Absent | StoryRead::Refused(_) => bad.keys.push(format!("stories/{key}")),
                },
                Err(_) => bad.keys.push(format!("stories/{key}")),
            }
        }
        let mut nodes = BTreeMap::new();
        let keys: Vec<String> = self.am.keys(&self.nodes_obj).collect();
        for key in keys {
            match NodeId::new(key.clone()).ok().and_then(|id| self.read_node(&id).map(|r| (id, r))) {
                Some((id, r)) => {
                    nodes.insert(id, r);
                }
                None => bad.keys.push(format!("nodes/{key}")),
            }
        }
        (stories, nodes, bad)
    }

    /// Whether the root's `stories` or `nodes` is no longer the map this
    /// document's base made (a peer deleted or replaced it).
    pub fn root_damaged(&self) -> bool {
        let at = |key: &str| self.am.get(automerge::ROOT, key).ok().flatten().map(|(_, obj)| obj);
        at("stories").as_ref() != Some(&self.stories_obj) || at("nodes").as_ref() != Some(&self.nodes_obj)
    }

    /// Every well-formed signed entry, enrollments first (signatures are
    /// checked by the caller).
    pub fn read_signed(&mut self) -> Vec<Signed> {
        let mut out = Vec::new();
        for kind in SignedKind::ALL {
            let keys: Vec<String> = self.am.keys(automerge::ROOT).filter(|k| k.starts_with(kind.prefix())).collect();
            for k in keys {
                if let Some(entry) = self.read_signed_entry(kind, &k) {
                    out.push(entry);
                }
            }
        }
        out
    }

    fn read_signed_entry(&mut self, kind: SignedKind, k: &str) -> Option<Signed> {
        let (node, key) = k[kind.prefix().len()..].split_once('/')?;
        let node = NodeId::new(node).ok()?;
        let key = unhex(key).and_then(|b| PublicKey::try_from(b).ok())?;
        let sig = match self.am.get(automerge::ROOT, k) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(t) => unhex(t).and_then(|b| Sig::try_from(b).ok()),
                _ => None,
            },
            _ => None,
        }?;
        Some(Signed { kind, node, key, sig })
    }

    /// Every value at root `settings` (concurrent writes included);
    /// signatures are checked by the caller.
    pub fn read_settings(&mut self) -> Vec<String> {
        let values = self.am.get_all(automerge::ROOT, SETTINGS_KEY).unwrap_or_default();
        values
            .into_iter()
            .filter_map(|(v, _)| match v {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(t) => Some(t.to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    pub fn put_settings(&mut self, value: &str) {
        self.am.put(automerge::ROOT, SETTINGS_KEY, value).expect("put settings");
        self.commit();
    }

    pub fn put_signed(&mut self, e: &Signed) {
        let key = format!("{}{}/{}", e.kind.prefix(), e.node.as_str(), hex(&e.key));
        self.am.put(automerge::ROOT, key, hex(&e.sig)).expect("put signed entry");
        self.commit();
    }

    /// Every node's landing car (`train/<node>` at the root), as written:
    /// the caller parses and checks them.
    /// Every node's car, as that node wrote it: a car is the node's own
    /// word on what it is testing, and others stack their batches on it,
    /// so a value another node put under its key is not believed (what it
    /// replaced is read instead). The admin's writes are believed
    /// whichever car they are (a server that lands writes its own as the
    /// admin, and `auth` calls our own writes the admin's when we sign as
    /// the CA).
    pub fn read_trains(&mut self, auth: Auth<'_>) -> Vec<(NodeId, String)> {
        let keys: Vec<String> = self.am.keys(automerge::ROOT).filter(|k| k.starts_with(TRAIN_PREFIX)).collect();
        let text = |v: &Value<'_>| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) => Ok(t.to_string()),
                _ => Err("a car that is no text".to_owned()),
            },
            _ => Err("a car that is no text".to_owned()),
        };
        let mut out = Vec::new();
        for k in keys {
            let Ok(node) = NodeId::new(&k[TRAIN_PREFIX.len()..]) else { continue };
            let owns = |w: &crate::schema::Writer| match w {
                crate::schema::Writer::Node(n) => *n == node,
                // The server signs as the admin, and its car is its own
                // word like any node's; the admin may write anything.
                crate::schema::Writer::Admin => true,
                crate::schema::Writer::Unknown => false,
            };
            let (car, _) = self.owned_value(&automerge::ROOT, &k, auth, &owns, "a car written by another node", text);
            if let Some((_, t)) = car {
                out.push((node, t));
            }
        }
        out
    }

    pub fn put_train(&mut self, node: &NodeId, value: &str) {
        self.put_own(&automerge::ROOT, &format!("{TRAIN_PREFIX}{node}"), ScalarValue::Str(value.into()));
        self.commit();
    }

    /// Every ledger line at the root (`ledger/<node>/<period>`), as
    /// written: the caller parses and checks them.
    pub fn read_ledger(&mut self) -> Vec<(String, String)> {
        let keys: Vec<String> =
            self.am.keys(automerge::ROOT).filter(|k| k.starts_with(crate::ledger::LEDGER_PREFIX)).collect();
        keys.into_iter().filter_map(|k| self.read_ledger_key(&k).map(|v| (k, v))).collect()
    }

    pub fn read_ledger_key(&mut self, key: &str) -> Option<String> {
        match self.am.get(automerge::ROOT, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(t) => Some(t.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// One of our own ledger lines: a scalar of our own key, so writers
    /// never race.
    pub fn put_ledger_key(&mut self, key: &str, value: &str) {
        self.put_own(&automerge::ROOT, key, ScalarValue::Str(value.into()));
        self.commit();
    }

    pub fn delete_ledger_key(&mut self, key: &str) {
        self.am.delete(automerge::ROOT, key).expect("delete ledger line");
        self.commit();
    }

    /// The maps of every story as we last read them, including those a
    /// peer has since replaced or deleted (the objects stay readable).
    pub fn known_story_objs(&self) -> BTreeMap<StoryId, ObjId> {
        self.story_objs.clone()
    }

    /// The story's map as its last read resolved it (`read_story_checked`),
    /// else the current one.
    fn story_obj(&mut self, id: &StoryId) -> Option<ObjId> {
        if let Some(obj) = self.story_objs.get(id) {
            return Some(obj.clone());
        }
        match self.am.get(&self.stories_obj, id.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
            _ => None,
        }
    }

    /// The map our writes to a story go to: the one reading resolved
    /// (`doc/validity.rs`), which every replica resolves alike, even when a
    /// peer put something else under the story's key.
    fn story_obj_for_write(&mut self, id: &StoryId, why: &str) -> ObjId {
        self.story_obj(id).unwrap_or_else(|| panic!("{why} on story {id}, which this node never read"))
    }

    /// Whether the story's map was replaced (the same id added on two sides
    /// of a partition, and the other add won) since the last call: its
    /// state starts over, token and all.
    pub fn take_replaced(&mut self, id: &StoryId) -> bool {
        self.replaced.remove(id)
    }

    pub fn read_story(&mut self, id: &StoryId) -> Option<StoryView> {
        match self.read_story_checked(id, &|_| crate::schema::Writer::Admin).0 {
            StoryRead::Valid(v) => Some(v),
            StoryRead::Absent | StoryRead::Refused(_) => None,
        }
    }

    /// A story's values, each checked against the schema and its writer's
    /// rights (schema.rs). A value that breaks them is refused whole and
    /// the valid value it overwrote stands (doc/validity.rs); with none,
    /// the story is refused. A function of the document's history alone:
    /// replicas with the same heads read the same story. Every refusal is
    /// returned with its writer.
    pub fn read_story_checked(&mut self, id: &StoryId, auth: Auth<'_>) -> (StoryRead, Vec<Refusal>) {
        let mut refused = Vec::new();
        let refusal = |field: &str, what: String, op: Option<&ObjId>| {
            let key = if field.is_empty() { format!("stories/{id}") } else { format!("stories/{id}/{field}") };
            Refusal { key, what, writer: op.and_then(crate::schema::writer_of) }
        };
        // Stories are the admin's to create (user commands run on the
        // server): the story's map is the newest the server made, looking
        // behind anything a node put in its place (doc/validity.rs).
        let map = |v: &Value<'_>| match v {
            Value::Object(ObjType::Map) => Ok(()),
            v => Err(format!("the story is {}", crate::schema::kind_of(v))),
        };
        let stories = self.stories_obj.clone();
        let (obj, map_refused) =
            self.admin_value(&stories, id.as_str(), auth, "a story only the server may create", map);
        for (op, why) in map_refused {
            refused.push(refusal("", why, Some(&op)));
        }
        let Some((obj, ())) = obj else {
            return match refused.pop() {
                Some(r) => (StoryRead::Refused(r), refused),
                None => (StoryRead::Absent, refused),
            };
        };
        if self.story_objs.insert(id.clone(), obj.clone()).is_some_and(|old| old != obj) {
            self.replaced.insert(id.clone());
        }
        match self.am.get(&stories, id.as_str()) {
            Ok(Some((_, current))) if current == obj => self.hidden.remove(id),
            _ => self.hidden.insert(id.clone()),
        };
        // Title, priority and creation time are the server's to write: the
        // newest it wrote stands, whatever a node put over it.
        let text = |v: &Value<'_>| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) if t.len() <= crate::MAX_TITLE_LEN => Ok(t.to_string()),
                ScalarValue::Str(t) => Err(format!("title of {} bytes", t.len())),
                _ => Err(format!("title is {}", crate::schema::kind_of(v))),
            },
            v => Err(format!("title is {}", crate::schema::kind_of(v))),
        };
        let (title, title_refused) = self.admin_value(&obj, "title", auth, "a title only the server may write", text);
        for (op, why) in title_refused {
            refused.push(refusal("title", why, Some(&op)));
        }
        let Some((_, title)) = title else {
            let r = refused.pop().unwrap_or_else(|| refusal("title", "no title".into(), None));
            return (StoryRead::Refused(r), refused);
        };
        // The state: judged op by op against what each writer saw
        // (doc/validity.rs), never against our own last view, so replicas
        // with the same heads agree.
        let (state, concurrent) = match self.read_state_checked(id, &obj, auth, &mut refused) {
            Ok(s) => s,
            Err(r) => return (StoryRead::Refused(r), refused),
        };
        let mut int = |doc: &mut Doc, key: &str| {
            let number = |v: &Value<'_>| match v {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Int(n) => Ok(*n),
                    ScalarValue::Uint(n) => i64::try_from(*n).map_err(|_| format!("{key} {n} is out of range")),
                    _ => Err(format!("{key} is {}", crate::schema::kind_of(v))),
                },
                v => Err(format!("{key} is {}", crate::schema::kind_of(v))),
            };
            let (value, why) = doc.admin_value(&obj, key, auth, &format!("a {key} only the server may write"), number);
            for (op, why) in why {
                refused.push(refusal(key, why, Some(&op)));
            }
            value.map_or(0, |(_, n)| n)
        };
        let priority = int(self, "priority");
        let created = int(self, "created");
        let created = crate::UnixMs(u64::try_from(created).unwrap_or(0));
        (StoryRead::Valid(StoryView { title, priority, created, state, concurrent }), refused)
    }

    /// The story as `known` last read it, its state read again from the map
    /// it was read from: what a merge that wrote that key and nothing else
    /// the view holds may have changed (`doc/touched.rs`). The same state,
    /// refusals and count of concurrent values as
    /// [`Doc::read_story_checked`]; `None` when the story was never read.
    pub fn reread_state(
        &mut self,
        id: &StoryId,
        known: &StoryView,
        auth: Auth<'_>,
    ) -> Option<(StoryRead, Vec<Refusal>)> {
        let obj = self.story_objs.get(id)?.clone();
        let mut refused = Vec::new();
        Some(match self.read_state_checked(id, &obj, auth, &mut refused) {
            Ok((state, concurrent)) => (StoryRead::Valid(StoryView { state, concurrent, ..known.clone() }), refused),
            Err(r) => (StoryRead::Refused(r), refused),
        })
    }

    /// The state of the story whose map is `obj`, and how many values the
    /// key holds; each value refused is added to `refused`. With no valid
    /// state, the refusal that stands for the story (the last one).
    fn read_state_checked(
        &mut self,
        id: &StoryId,
        obj: &ObjId,
        auth: Auth<'_>,
        refused: &mut Vec<Refusal>,
    ) -> Result<(StoryState, usize), Refusal> {
        let (state, refused_ops, concurrent) = self.resolve_state(id.as_str(), obj, auth);
        let refusal = |what: String, op: Option<&ObjId>| Refusal {
            key: format!("stories/{id}/state"),
            what,
            writer: op.and_then(crate::schema::writer_of),
        };
        refused.extend(refused_ops.iter().map(|(op, why)| refusal(why.clone(), Some(op))));
        match state {
            Some(state) => Ok((state, concurrent)),
            None => Err(refused.pop().unwrap_or_else(|| refusal("no state".into(), None))),
        }
    }

    /// The story's body (markdown), empty when it has none. The body goes
    /// into an agent's prompt: only a body the admin wrote is read (`auth`),
    /// never one another node put there.
    pub fn read_body(&mut self, id: &StoryId, auth: Auth<'_>) -> String {
        let Some(obj) = self.story_obj(id) else { return String::new() };
        let text = |v: &Value<'_>| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) => Ok(t.to_string()),
                _ => Err(String::new()),
            },
            _ => Err(String::new()),
        };
        self.admin_value(&obj, "body", auth, "", text).0.map(|(_, t)| t).unwrap_or_default()
    }

    /// Sets some of a story's user fields in one change.
    pub fn put_fields(&mut self, id: &StoryId, title: Option<&str>, body: Option<&str>, priority: Option<i64>) {
        let obj = self.story_obj_for_write(id, "put_fields");
        if let Some(t) = title {
            self.am.put(&obj, "title", t).expect("put title");
        }
        if let Some(b) = body {
            self.am.put(&obj, "body", b).expect("put body");
        }
        if let Some(p) = priority {
            self.am.put(&obj, "priority", p).expect("put priority");
        }
        self.commit();
    }

    /// The run records of a story, oldest first (malformed ones skipped).
    pub fn read_runs(&mut self, id: &StoryId) -> Vec<crate::runs::RunRecord> {
        let Some(obj) = self.story_obj(id) else { return Vec::new() };
        let keys: Vec<String> = self.am.keys(&obj).filter(|k| k.starts_with(RUN_PREFIX)).collect();
        keys.iter()
            .filter_map(|k| match self.am.get(&obj, k.as_str()) {
                Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                    ScalarValue::Str(t) => crate::runs::RunRecord::decode(t),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Adds a run record, and deletes our oldest beyond `keep`, in one
    /// change. Keys sort by token, so "oldest" is the same on every replica.
    pub fn put_run(&mut self, id: &StoryId, record: &crate::runs::RunRecord, keep: usize) {
        let obj = self.story_obj_for_write(id, "put_run");
        let key = format!("{RUN_PREFIX}{:020}/{}", record.token.0, record.node.as_str());
        self.put_own(&obj, key.as_str(), ScalarValue::Str(record.encode().into()));
        // Only our own: another node's records are its to write (a node
        // that deleted them would be refused, schema.rs), so each node keeps
        // at most `keep` per story.
        let own = format!("/{}", record.node.as_str());
        let keys: Vec<String> = self.am.keys(&obj).filter(|k| k.starts_with(RUN_PREFIX) && k.ends_with(&own)).collect();
        for old in keys.iter().take(keys.len().saturating_sub(keep)) {
            self.am.delete(&obj, old.as_str()).expect("delete run");
        }
        self.commit();
    }

    pub fn read_node(&mut self, id: &NodeId) -> Option<NodeRecord> {
        let obj = match self.am.get(&self.nodes_obj, id.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => obj,
            _ => return None,
        };
        let text = |am: &AutoCommit, key: &str| match am.get(&obj, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(t) => Some(t.to_string()),
                _ => None,
            },
            _ => None,
        };
        let capacity = match self.am.get(&obj, "capacity") {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Uint(n) => u32::try_from(*n).ok()?,
                _ => return None,
            },
            _ => return None,
        };
        let cert = text(&self.am, "cert").and_then(|c| Cert::from_hex(&c));
        Some(NodeRecord { address: text(&self.am, "address"), label: text(&self.am, "label")?, capacity, cert })
    }

    /// Creates `stories/<id>` in one change. Caller checked it is new.
    pub fn add_story(&mut self, id: &StoryId, view: &StoryView, body: &str) {
        // Writes to our own in-memory document with valid object ids cannot fail.
        let obj = self.am.put_object(&self.stories_obj, id.as_str(), ObjType::Map).expect("put story");
        self.am.put(&obj, "title", view.title.as_str()).expect("put title");
        self.am.put(&obj, "state", view.state.encode()).expect("put state");
        if !body.is_empty() {
            self.am.put(&obj, "body", body).expect("put body");
        }
        if view.priority != 0 {
            self.am.put(&obj, "priority", view.priority).expect("put priority");
        }
        self.am.put(&obj, "created", view.created.0).expect("put created");
        self.story_objs.insert(id.clone(), obj);
        self.commit();
    }

    /// Overwrites the story's state with one value, which also resolves any
    /// conflict the key held.
    pub fn put_state(&mut self, id: &StoryId, state: &StoryState) {
        let obj = self.story_obj_for_write(id, "put_state");
        self.put_own(&obj, "state", ScalarValue::Str(state.encode().into()));
        self.commit();
    }

    pub fn put_node(&mut self, id: &NodeId, rec: &NodeRecord) {
        let obj = self.am.put_object(&self.nodes_obj, id.as_str(), ObjType::Map).expect("put node");
        if let Some(a) = &rec.address {
            self.am.put(&obj, "address", a.as_str()).expect("put address");
        }
        self.am.put(&obj, "label", rec.label.as_str()).expect("put label");
        self.am.put(&obj, "capacity", u64::from(rec.capacity)).expect("put capacity");
        if let Some(c) = &rec.cert {
            self.am.put(&obj, "cert", c.to_hex()).expect("put cert");
        }
        self.commit();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::{Stage, Token};

    pub(in crate::doc) fn doc(name: &str) -> Doc {
        Doc::new(ActorId::from(name.as_bytes()))
    }

    /// Adds a story with title `t` and a fresh state, as the server does.
    pub(in crate::doc) fn story(d: &mut Doc, id: &str) -> StoryId {
        let id = StoryId::new(id).unwrap();
        let view = StoryView {
            title: "t".into(),
            priority: 0,
            created: crate::UnixMs(0),
            state: StoryState::new(Stage::Current),
            concurrent: 1,
        };
        d.add_story(&id, &view, "");
        id
    }

    /// A car is believed only as its own node wrote it: a value another
    /// node put under its key is looked behind, and a car for a node that
    /// wrote none is no car.
    #[test]
    fn a_car_is_read_as_its_node_wrote_it() {
        use crate::schema::Writer;
        let by_actor = |op: &ObjId| match crate::schema::writer_of(op) {
            Some(n) if n == "server" => Writer::Admin,
            Some(n) => NodeId::new(n).map_or(Writer::Unknown, Writer::Node),
            None => Writer::Admin,
        };
        let node = |n: &str| NodeId::new(n).unwrap();
        let mut a = doc("a");
        a.put_train(&node("a"), "a's car");
        let mut m = doc("mallory");
        m.am.merge(&mut a.am).unwrap();
        m.put_train(&node("a"), "forged over a's");
        m.put_train(&node("b"), "forged for b");
        m.put_train(&node("mallory"), "mallory's car");
        // A server that also lands writes its car as the admin; every
        // node believes it, not only the server itself.
        let mut server = doc("server");
        server.put_train(&node("server"), "the server's car");
        a.am.merge(&mut m.am).unwrap();
        a.am.merge(&mut server.am).unwrap();
        let cars = a.read_trains(&by_actor);
        let want = vec![
            (node("a"), "a's car".to_owned()),
            (node("mallory"), "mallory's car".to_owned()),
            (node("server"), "the server's car".to_owned()),
        ];
        assert_eq!(cars, want);
    }

    /// A concurrent write that loses Automerge's own ordering still marks
    /// the story touched, so the engine re-reads it and applies its own
    /// precedence. Without this a claim conflict can go unnoticed.
    #[test]
    fn concurrent_losing_write_is_touched() {
        let mut a = doc("a");
        let id = story(&mut a, "s");
        let mut b = doc("b");
        b.am.merge(&mut a.am).unwrap();
        b.read_all();
        a.skip_touched();
        for (d, n) in [(&mut a, "a"), (&mut b, "b")] {
            let mut s = StoryState::new(Stage::Current);
            s.token = Token(1);
            s.holder = Some(NodeId::new(n).unwrap());
            d.put_state(&id, &s);
            d.skip_touched();
        }
        b.merge_noted(&mut a);
        a.merge_noted(&mut b);
        let ta = a.take_touched().stories;
        let tb = b.take_touched().stories;
        assert!(ta.contains_key(&id), "a sees the conflict");
        assert!(tb.contains_key(&id), "b sees the conflict");
        assert_eq!(a.read_story(&id).unwrap().concurrent, 2);
        assert_eq!(a.read_story(&id), b.read_story(&id));
        assert_eq!((a.full_reads(), b.full_reads()), (0, 0), "every change came noted");
    }
}
