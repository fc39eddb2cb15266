//! The index: what this replica's document says of every story and node,
//! kept in step with the document input by input, with the sets claims are
//! decided on (free stories in claim order, stories by holder, stories with
//! concurrent states). Only [`Index::put_story`] changes a story's entry,
//! so the derived sets cannot drift from it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::doc::{NodeRecord, StoryView};
use crate::{NodeId, Stage, StoryId};

/// The order free stories are claimed in: later stages first (finish work
/// before starting work), then higher priority, then older, then by id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FreeKey {
    pub stage: Reverse<Stage>,
    pub priority: Reverse<i64>,
    pub created: crate::UnixMs,
    pub id: StoryId,
}

impl FreeKey {
    pub fn of(id: &StoryId, v: &StoryView) -> FreeKey {
        FreeKey { stage: Reverse(v.state.stage), priority: Reverse(v.priority), created: v.created, id: id.clone() }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    stories: BTreeMap<StoryId, StoryView>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    by_holder: BTreeMap<NodeId, BTreeSet<StoryId>>,
    /// Stories in an active stage, not failed, held by nobody, in claim
    /// order.
    free: BTreeSet<FreeKey>,
    /// Bumped whenever a story or node entry changes: drivers watch it to
    /// refresh what they show.
    version: u64,
    /// The highest merge-queue place any story was seen at: a story moved
    /// to the merge stage queues behind it (`StoryState::queued`).
    max_queued: u64,
    /// Set while the index is rebuilt from a replaced document (a new
    /// epoch, a reload after a panic): a story's state may then
    /// legitimately differ from anything it was, token included.
    rebuilding: bool,
}

impl Index {
    /// The merge-queue place of a story entering the merge stage now: behind
    /// every place seen so far.
    pub fn next_queue_place(&self) -> u64 {
        self.max_queued.saturating_add(1)
    }

    /// From here to [`Index::end_rebuild`] the index is rebuilt from a
    /// replaced document: the token check is off.
    pub fn begin_rebuild(&mut self) {
        assert!(!self.rebuilding, "rebuilds do not nest");
        self.rebuilding = true;
    }

    pub fn end_rebuild(&mut self) {
        assert!(self.rebuilding, "a rebuild ends once, after it began");
        self.rebuilding = false;
    }

    pub fn story(&self, id: &StoryId) -> Option<&StoryView> {
        self.stories.get(id)
    }

    /// A story the caller knows is indexed (it just read or wrote it).
    ///
    /// # Panics
    /// If it is not: a broken invariant of the caller.
    pub fn known(&self, id: &StoryId) -> &StoryView {
        self.stories.get(id).unwrap_or_else(|| panic!("story {id} is not indexed"))
    }

    pub fn contains(&self, id: &StoryId) -> bool {
        self.stories.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.stories.len()
    }

    /// Every story, in id order.
    pub fn stories(&self) -> impl Iterator<Item = (&StoryId, &StoryView)> {
        self.stories.iter()
    }

    pub fn story_ids(&self) -> impl Iterator<Item = &StoryId> {
        self.stories.keys()
    }

    /// Nodes that hold at least one story, in id order.
    pub fn holders(&self) -> impl Iterator<Item = &NodeId> {
        self.by_holder.keys()
    }

    /// The stories `node` holds, in id order.
    pub fn held_by(&self, node: &NodeId) -> impl Iterator<Item = &StoryId> {
        self.by_holder.get(node).into_iter().flatten()
    }

    /// Free stories in claim order.
    pub fn free(&self) -> impl Iterator<Item = &FreeKey> {
        self.free.iter()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets a story's entry (`None`: gone); returns the one it replaces.
    /// `replaced` says the story's map itself was replaced (the same id
    /// added on both sides of a partition): only then may its token go
    /// back.
    pub fn put_story(&mut self, id: &StoryId, view: Option<StoryView>, replaced: bool) -> Option<StoryView> {
        let replaced = replaced || self.rebuilding;
        if let Some(v) = &view {
            self.max_queued = self.max_queued.max(v.state.queued);
        }
        let old = match &view {
            Some(v) => self.stories.insert(id.clone(), v.clone()),
            None => self.stories.remove(id),
        };
        if old == view {
            return old;
        }
        self.version += 1;
        if let (Some(o), Some(n)) = (&old, &view) {
            assert!(
                replaced || n.state.token >= o.state.token,
                "story {id}: token went back from {} to {}",
                o.state.token.0,
                n.state.token.0
            );
        }
        if let Some(old) = &old {
            if let Some(holder) = &old.state.holder
                && let Some(set) = self.by_holder.get_mut(holder)
            {
                set.remove(id);
                if set.is_empty() {
                    self.by_holder.remove(holder);
                }
            }
            self.free.remove(&FreeKey::of(id, old));
        }
        match &view {
            None => {}
            Some(view) => match &view.state.holder {
                Some(h) => {
                    self.by_holder.entry(h.clone()).or_default().insert(id.clone());
                }
                None if view.state.is_claimable_stage() => {
                    self.free.insert(FreeKey::of(id, view));
                }
                None => {}
            },
        }
        old
    }

    pub fn node(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    /// Durable membership, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeRecord)> {
        self.nodes.iter()
    }

    pub fn put_node(&mut self, id: NodeId, rec: Option<NodeRecord>) {
        let changed = match rec {
            Some(rec) => self.nodes.insert(id, rec.clone()).as_ref() != Some(&rec),
            None => self.nodes.remove(&id).is_some(),
        };
        if changed {
            self.version += 1;
        }
    }

    /// The derived sets against the entries (O(stories): for checkers).
    pub fn check(&self) {
        for (holder, held) in &self.by_holder {
            assert!(!held.is_empty(), "empty holder set for {holder}");
            for id in held {
                let holder_now = self.stories.get(id).and_then(|v| v.state.holder.as_ref());
                assert_eq!(holder_now, Some(holder), "by_holder out of step for {id}");
            }
        }
        let held: usize = self.by_holder.values().map(|s| s.len()).sum();
        let holders = self.stories.values().filter(|v| v.state.holder.is_some()).count();
        assert_eq!(held, holders, "by_holder misses held stories");
        for key in &self.free {
            let v = self.stories.get(&key.id).unwrap_or_else(|| panic!("free story {} not indexed", key.id));
            assert!(v.state.holder.is_none() && v.state.is_claimable_stage(), "{} is not free", key.id);
            assert_eq!(*key, FreeKey::of(&key.id, v), "free key of {} is stale", key.id);
        }
        let free =
            self.stories.iter().filter(|(_, v)| v.state.holder.is_none() && v.state.is_claimable_stage()).count();
        assert_eq!(free, self.free.len(), "free set misses stories");
    }
}
