//! Which stories and nodes a merge touched, from the ops of the changes
//! that arrived.
//!
//! Every change a peer sends is decoded anyway, for its signature and its
//! schema check (signing.rs); where its ops write is noted then, by change
//! hash, and read back once Automerge has applied the change (it may wait
//! in Automerge's queue for a dependency). Automerge's own answer, patches
//! from its diff cursor, kept a patch log on every apply and resolved each
//! patch's path from the root: 13–14% of a 10-node run, most of it in
//! `PatchBuilder::get_path`. Here an object's owner is looked up once per
//! document and remembered (an object never moves).
//!
//! Reporting more than changed costs a re-read, never a wrong view (a
//! story read is a function of the history). Reporting less would leave
//! the index stale, so the count of changes the document gained is held
//! against the notes read: a change that applied without a note (one that
//! waited in a queue a rebuilt document dropped, then came again) turns
//! the merge into a full re-read.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ChangeHash, ObjId, Prop, ReadDoc};

use super::{Doc, SETTINGS_KEY, SignedKind};
use crate::{NodeId, StoryId};

/// How much of a story a merge must read again. Ordered: of two changes
/// to one story, the one that needs more decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reread {
    /// Only run records changed: nothing the index holds.
    Nothing,
    /// Only the state key of the map the story was read from.
    State,
    /// Anything else: the whole story, as if new.
    Whole,
}

/// What a merge touched.
pub struct Touched {
    pub stories: BTreeMap<StoryId, Reread>,
    pub nodes: BTreeSet<NodeId>,
    /// An enrollment or revocation arrived.
    pub signed: bool,
    /// Cluster settings arrived.
    pub settings: bool,
}

impl Touched {
    fn story(&mut self, id: StoryId, what: Reread) {
        let e = self.stories.entry(id).or_insert(what);
        *e = (*e).max(what);
    }

    fn whole(&mut self, ids: impl IntoIterator<Item = StoryId>) {
        for id in ids {
            self.story(id, Reread::Whole);
        }
    }
}

/// The object an op writes in: the root, or the object made by op
/// (counter, actor).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum In {
    Root,
    Obj(u64, automerge::ActorId),
}

/// Where one change writes: each (object, map key) once. A list op's key
/// is empty (only its object matters).
#[derive(Clone, Debug, Default)]
pub(crate) struct Writes(BTreeSet<(In, String)>);

impl Writes {
    pub(crate) fn of(change: &automerge::ExpandedChange) -> Writes {
        use automerge::legacy::{Key, ObjectId};
        let mut at = BTreeSet::new();
        for op in &change.operations {
            let key = match &op.key {
                Key::Map(k) => k.to_string(),
                Key::Seq(_) => String::new(),
            };
            let obj = match &op.obj {
                ObjectId::Root => In::Root,
                ObjectId::Id(id) => In::Obj(id.0, id.1.clone()),
            };
            at.insert((obj, key));
        }
        Writes(at)
    }
}

/// Whose an object is: the story or node whose map it is or lies in.
#[derive(Clone, Debug)]
pub(super) enum Owner {
    Story(StoryId),
    Node(NodeId),
    Neither,
}

impl Doc {
    /// Notes where the change `hash`, checked and about to be applied,
    /// writes.
    pub(crate) fn note_writes(&mut self, hash: ChangeHash, writes: Writes) {
        self.notes.insert(hash, writes);
    }

    /// The stories and nodes touched since the last call (or
    /// [`Doc::skip_touched`]).
    pub fn take_touched(&mut self) -> Touched {
        let mut t = Touched { stories: BTreeMap::new(), nodes: BTreeSet::new(), signed: false, settings: false };
        let total = self.am.stats().num_changes;
        let gained = total.saturating_sub(self.changes_known);
        self.changes_known = total;
        let applied = self.take_applied_notes();
        if (applied.len() as u64) < gained {
            // A change applied that nobody noted: read everything.
            self.full_reads += 1;
            tracing::debug!(noted = applied.len(), gained, "a change applied unnoted: the merge is read whole");
            t.whole(self.story_ids());
            t.nodes.extend(self.am.keys(&self.nodes_obj).filter_map(|k| NodeId::new(k).ok()));
            t.signed = true;
            t.settings = true;
        }
        for writes in applied {
            for (obj, key) in writes.0 {
                self.classify(&mut t, obj, key);
            }
        }
        // A peer that deleted or replaced a root map cut our maps off the
        // root. Until the next epoch puts fresh maps in place (the server
        // cuts one at once), every story and node counts as touched.
        if self.root_damaged() {
            t.whole(self.story_ids());
            t.nodes.extend(self.am.keys(&self.nodes_obj).filter_map(|k| NodeId::new(k).ok()));
        }
        t.whole(self.hidden.iter().cloned());
        t
    }

    /// Marks everything so far as seen by [`Doc::take_touched`]: after a
    /// read of the whole document.
    pub fn skip_touched(&mut self) {
        self.changes_known = self.am.stats().num_changes;
        self.take_applied_notes();
    }

    /// Counts a change we made: its effect is ours, known to the engine.
    pub(super) fn count_own(&mut self, made: Option<ChangeHash>) {
        if made.is_some() {
            self.changes_known += 1;
        }
    }

    /// How many merges were read whole because a change came unnoted.
    pub fn full_reads(&self) -> u64 {
        self.full_reads
    }

    /// The notes of changes the document now holds. With nothing in
    /// Automerge's queue every noted change applied (notes are taken only
    /// for changes a message applied or queued); otherwise each is looked
    /// up.
    fn take_applied_notes(&mut self) -> Vec<Writes> {
        if self.notes.is_empty() {
            return Vec::new();
        }
        if self.am.get_missing_deps(&[]).is_empty() {
            return std::mem::take(&mut self.notes).into_values().collect();
        }
        let hashes: Vec<ChangeHash> = self.notes.keys().copied().collect();
        let mut out = Vec::new();
        for h in hashes {
            if self.am.get_change_meta_by_hash(&h).is_some()
                && let Some(w) = self.notes.remove(&h)
            {
                out.push(w);
            }
        }
        out
    }

    fn classify(&mut self, t: &mut Touched, obj: In, key: String) {
        let is = |ours: &ObjId, obj: &In| match (ours, obj) {
            (ObjId::Id(c, a, _), In::Obj(counter, actor)) => c == counter && a == actor,
            _ => false,
        };
        match obj {
            In::Root => {
                t.signed |= SignedKind::ALL.iter().any(|k| key.starts_with(k.prefix()));
                t.settings |= key == SETTINGS_KEY;
            }
            obj if is(&self.stories_obj, &obj) => {
                if let Ok(id) = StoryId::new(key) {
                    t.story(id, Reread::Whole);
                }
            }
            obj if is(&self.nodes_obj, &obj) => {
                if let Ok(id) = NodeId::new(key) {
                    t.nodes.insert(id);
                }
            }
            In::Obj(counter, actor) => match self.owner(counter, actor.clone()) {
                Owner::Story(id) => {
                    // A key of the very map the story was read from: only
                    // that key can have changed.
                    let obj = In::Obj(counter, actor);
                    let read_from = self.story_objs.get(&id).is_some_and(|o| is(o, &obj));
                    let what = match key.as_str() {
                        "state" if read_from => Reread::State,
                        k if read_from && k.starts_with(super::RUN_PREFIX) => Reread::Nothing,
                        _ => Reread::Whole,
                    };
                    t.story(id, what);
                }
                Owner::Node(id) => {
                    t.nodes.insert(id);
                }
                Owner::Neither => {}
            },
        }
    }

    /// The story or node whose map object (counter, actor) is or lies in,
    /// from its parents; remembered, as an object's place never changes.
    fn owner(&mut self, counter: u64, actor: automerge::ActorId) -> Owner {
        let key = (counter, actor);
        if let Some(o) = self.owners.get(&key) {
            return o.clone();
        }
        let exid = ObjId::Id(key.0, key.1.clone(), 0);
        let mut owner = Owner::Neither;
        if let Ok(parents) = self.am.parents(&exid) {
            for p in parents {
                let Prop::Map(k) = p.prop else { continue };
                if p.obj == self.stories_obj {
                    owner = StoryId::new(k).map_or(Owner::Neither, Owner::Story);
                    break;
                }
                if p.obj == self.nodes_obj {
                    owner = NodeId::new(k).map_or(Owner::Neither, Owner::Node);
                    break;
                }
            }
        }
        self.owners.insert(key, owner.clone());
        owner
    }
}

/// The owners of objects, by the op that made them.
pub(super) type Owners = BTreeMap<super::validity::OpKey, Owner>;

#[cfg(test)]
mod tests {
    use automerge::ObjType;
    use automerge::transaction::Transactable;

    use super::*;
    use crate::story::{Stage, StoryState};

    use crate::doc::tests::{doc, story};

    /// A write deep inside a story's map (an object a node made there)
    /// touches that story, and nothing else; our own writes touch nothing.
    #[test]
    fn writes_are_traced_to_their_story() {
        let mut server = doc("server");
        let (s1, s2) = (story(&mut server, "s1"), story(&mut server, "s2"));
        let mut node = doc("node");
        node.merge_noted(&mut server);
        let t = node.take_touched();
        let whole = |ids: &[&StoryId]| ids.iter().map(|id| ((*id).clone(), Reread::Whole)).collect::<BTreeMap<_, _>>();
        assert_eq!(t.stories, whole(&[&s1, &s2]), "both stories arrived");
        assert!(node.take_touched().stories.is_empty(), "nothing new");
        let obj = node.read_story(&s2).map(|_| node.story_objs[&s2].clone()).unwrap();
        let am = node.automerge();
        let inner = am.put_object(&obj, "junk", ObjType::Map).unwrap();
        let deeper = am.put_object(&inner, "x", ObjType::List).unwrap();
        am.insert(&deeper, 0, 7).unwrap();
        node.commit_now();
        let mut other = doc("other");
        other.merge_noted(&mut server);
        other.take_touched();
        other.merge_noted(&mut node);
        let t = other.take_touched();
        assert_eq!(t.stories, whole(&[&s2]));
        assert!(t.nodes.is_empty() && !t.signed && !t.settings);
        assert_eq!(other.full_reads(), 0);
    }

    /// A merge that wrote only the state of a story's map, as read, asks
    /// for the state alone; one that wrote only run records, for nothing.
    #[test]
    fn state_and_run_records_are_told_apart() {
        let mut server = doc("server");
        let (s1, s2) = (story(&mut server, "s1"), story(&mut server, "s2"));
        let mut node = doc("node");
        node.merge_noted(&mut server);
        node.take_touched();
        node.read_all();
        let mut state = StoryState::new(Stage::Current);
        state.token = crate::Token(1);
        state.holder = Some(NodeId::new("server").unwrap());
        server.put_state(&s1, &state);
        let record = crate::runs::RunRecord {
            node: NodeId::new("server").unwrap(),
            token: crate::Token(1),
            stage: Stage::Current,
            attempt: 1,
            outcome: crate::runs::RunOutcomeKind::Succeeded,
            reason: None,
            report: Default::default(),
        };
        server.put_run(&s2, &record, 8);
        node.merge_noted(&mut server);
        let t = node.take_touched();
        assert_eq!(t.stories.get(&s1), Some(&Reread::State));
        assert_eq!(t.stories.get(&s2), Some(&Reread::Nothing));
        server.put_fields(&s1, Some("new"), None, None);
        server.put_state(&s1, &state);
        node.merge_noted(&mut server);
        assert_eq!(node.take_touched().stories.get(&s1), Some(&Reread::Whole), "the title changed too");
    }

    /// A change that applied without a note (it came some other way) makes
    /// the merge read whole, never a stale index.
    #[test]
    fn an_unnoted_change_reads_everything() {
        let mut server = doc("server");
        let (s1, s2) = (story(&mut server, "s1"), story(&mut server, "s2"));
        let mut node = doc("node");
        node.merge_noted(&mut server);
        node.take_touched();
        server.put_fields(&s1, Some("new title"), None, None);
        node.am.merge(&mut server.am).unwrap();
        let t = node.take_touched();
        assert_eq!(t.stories, [(s1, Reread::Whole), (s2, Reread::Whole)].into());
        assert!(t.signed && t.settings);
        assert_eq!(node.full_reads(), 1);
    }
}
