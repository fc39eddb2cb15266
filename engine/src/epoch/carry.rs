//! Carrying a node's unseen writes into a new epoch's document (the rules
//! are in the module docs of `epoch.rs`).

use std::collections::BTreeSet;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue};

use super::{Carried, Clock, covered, decode_clock, is_root_entry, map_of, scalar, scalars};
use crate::StoryId;
use crate::doc::{ARCHIVED_KEY, CLOCKS_KEY, Doc, SETTINGS_KEY};
use crate::story::StoryState;

/// The old document, the new one, and what the new one's base has seen.
struct Carry<'a> {
    old: &'a AutoCommit,
    new: &'a mut AutoCommit,
    seen: Clock,
    archived: BTreeSet<String>,
    writes: usize,
    /// Us: a carried state is our write, and a node may claim only in its
    /// own name (schema.rs), so another node's unseen claim is carried
    /// released, at its token (no view goes back); the holder, alive,
    /// carries its claim itself.
    me: crate::NodeId,
    /// Whether we are the server: a node may not write stories' maps or
    /// other nodes' records (`schema::change_not_authorized`), so only the
    /// server carries a story the base lacks, and a node only its own
    /// record.
    admin: bool,
}

/// Carries the writes of `old` that `new`'s base has not seen.
pub(super) fn carry(old: &mut Doc, new: &mut Doc, me: &crate::NodeId, admin: bool) -> Carried {
    let (old_stories, old_nodes) = (old.stories_obj().clone(), old.nodes_obj().clone());
    let (new_stories, new_nodes) = (new.stories_obj().clone(), new.nodes_obj().clone());
    // A story whose map a peer replaced or deleted (schema.rs refused it)
    // is carried from the map we last read: our unseen writes to it count.
    let known = old.known_story_objs();
    let mut c = Carry {
        old: old.automerge(),
        new: new.automerge(),
        seen: Clock::new(),
        archived: BTreeSet::new(),
        writes: 0,
        me: me.clone(),
        admin,
    };
    c.read_base();
    let mut ids: BTreeSet<String> = c.old.keys(&old_stories).collect();
    ids.extend(known.keys().map(|id| id.as_str().to_owned()));
    for id in ids {
        let Ok(story) = StoryId::new(id.clone()) else { continue };
        let Some(src) = map_of(c.old, &old_stories, &id).or_else(|| known.get(&story).cloned()) else { continue };
        match map_of(c.new, &new_stories, &id) {
            None if !c.admin => {}
            None => c.story_added(&new_stories, &story, &src),
            Some(dst) => c.story_changed(&story, &src, &dst),
        }
    }
    c.nodes(&old_nodes, &new_nodes);
    c.root();
    let writes = c.writes;
    new.automerge().commit_with(CommitOptions::default().with_time(0));
    Carried { writes }
}

impl Carry<'_> {
    /// The clocks the base was cut from and the stories archived at recent cuts.
    fn read_base(&mut self) {
        if let Some(obj) = map_of(self.new, &automerge::ROOT, CLOCKS_KEY) {
            for (_, v, _) in scalars(self.new, &obj) {
                if let ScalarValue::Str(s) = v {
                    decode_clock(&s, &mut self.seen);
                }
            }
        }
        if let Some(obj) = map_of(self.new, &automerge::ROOT, ARCHIVED_KEY) {
            self.archived.extend(self.new.keys(&obj));
        }
    }

    /// A story the base lacks: gone at a cut, unless added after it (then
    /// it comes along whole).
    fn story_added(&mut self, stories: &ObjId, story: &StoryId, src: &ObjId) {
        if self.archived.contains(story.as_str()) || covered(&self.seen, src) {
            return; // archived or removed at a cut
        }
        let dst = self.new.put_object(stories, story.as_str(), ObjType::Map).expect("carry story");
        for (k, v, _) in scalars(self.old, src) {
            if k != "state" {
                self.new.put(&dst, k.as_str(), v).expect("carry");
            }
        }
        if let Some(state) = best_state(self.old, src, story, |_| true).map(|s| self.as_ours(s)) {
            self.new.put(&dst, "state", state.encode()).expect("carry");
        }
        self.writes += 1;
    }

    /// A story both hold: an unseen state that outranks the base's, and
    /// unseen fields nobody wrote in the new epoch yet.
    fn story_changed(&mut self, story: &StoryId, src: &ObjId, dst: &ObjId) {
        let theirs = best_state(self.new, dst, story, |_| true);
        let seen = &self.seen;
        let ours = best_state(self.old, src, story, |op| !covered(seen, op)).map(|s| self.as_ours(s));
        if let Some(ours) = ours
            && theirs.as_ref().is_none_or(|t| ours.precedence(story.as_str(), t).is_gt())
        {
            self.new.put(dst, "state", ours.encode()).expect("carry");
            self.writes += 1;
        }
        let own_run = format!("/{}", self.me);
        for (k, v, op) in scalars(self.old, src) {
            if k == "state" || covered(&self.seen, &op) {
                continue;
            }
            // A node's own run records; the server's fields are the
            // server's to carry (schema.rs).
            let own = k.starts_with("run/") && k.ends_with(&own_run);
            if !self.admin && !own {
                continue;
            }
            let current = self.new.get(dst, k.as_str()).ok().flatten();
            // Still the base's value: nobody wrote it this epoch.
            let untouched = current.as_ref().is_none_or(|(_, cur_op)| written_by_base(cur_op));
            let same = current.as_ref().and_then(|(cv, _)| scalar(cv)).as_ref() == Some(&v);
            if untouched && !same {
                self.new.put(dst, k.as_str(), v).expect("carry");
                self.writes += 1;
            }
        }
    }

    /// A state we may write: another node's claim becomes a release.
    fn as_ours(&self, mut s: StoryState) -> StoryState {
        if s.holder.as_ref().is_some_and(|h| *h != self.me) {
            s.holder = None;
        }
        s
    }

    /// Node records the base lacks (a node writes its own again anyway).
    fn nodes(&mut self, old_nodes: &ObjId, new_nodes: &ObjId) {
        let ids: Vec<String> = self.old.keys(old_nodes).collect();
        for id in ids {
            if !self.admin && id != self.me.as_str() {
                continue; // another node's record: its own to write
            }
            if map_of(self.new, new_nodes, &id).is_some() {
                continue; // the base's, or a newer one written this epoch
            }
            let Some(src) = map_of(self.old, old_nodes, &id) else { continue };
            let dst = self.new.put_object(new_nodes, id.as_str(), ObjType::Map).expect("carry node");
            for (k, v, _) in scalars(self.old, &src) {
                self.new.put(&dst, k.as_str(), v).expect("carry");
            }
            self.writes += 1;
        }
    }

    /// Unseen enrollments and revocations the base lacks. Settings are
    /// written only by the server, which cuts: never unseen.
    fn root(&mut self) {
        for (k, v, op) in scalars(self.old, &automerge::ROOT) {
            if !is_root_entry(&k) || k == SETTINGS_KEY || covered(&self.seen, &op) {
                continue;
            }
            // A node writes only its own lines at the root (schema.rs); the
            // server carries the rest.
            if !self.admin && !k.starts_with(&format!("{}{}/", crate::ledger::LEDGER_PREFIX, self.me)) {
                continue;
            }
            // A ledger line has one writer, its node: a write the base has
            // not seen is newer than the base's, and replaces it.
            let newer = k.starts_with(crate::ledger::LEDGER_PREFIX);
            if newer || self.new.get(automerge::ROOT, k.as_str()).ok().flatten().is_none() {
                self.new.put(automerge::ROOT, k.as_str(), v).expect("carry");
                self.writes += 1;
            }
        }
    }
}

/// Written by the base's own change (its actor's ops), not since.
fn written_by_base(op: &ObjId) -> bool {
    match op {
        ObjId::Root => true,
        ObjId::Id(_, actor, _) => actor.to_bytes().starts_with(super::BASE_ACTOR_PREFIX),
    }
}

/// The highest-precedence state among the values of `obj.state` whose op
/// passes `keep`.
fn best_state(am: &AutoCommit, obj: &ObjId, story: &StoryId, keep: impl Fn(&ObjId) -> bool) -> Option<StoryState> {
    am.get_all(obj, "state")
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, op)| keep(op))
        .filter_map(|(v, _)| match scalar(&v)? {
            ScalarValue::Str(s) => StoryState::decode(&s),
            _ => None,
        })
        .max_by(|a, b| a.precedence(story.as_str(), b))
}
