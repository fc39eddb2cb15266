//! Accessors for drivers, status pages and checkers. None changes what the
//! engine decides on; a few take `&mut self` only because Automerge needs
//! it to read heads, save, or walk the history.

use automerge::{ChangeHash, ReadDoc};

use crate::{Engine, Millis, NodeId, NodeRecord, Stage, StoryId, StoryView, Token};

impl Engine {
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    pub fn is_ready(&self) -> bool {
        self.lifecycle != crate::engine::Lifecycle::Loading
    }

    /// Every story as this replica sees it, in id order.
    pub fn stories(&self) -> impl Iterator<Item = (&StoryId, &StoryView)> {
        self.index.stories()
    }

    pub fn story(&self, id: &StoryId) -> Option<&StoryView> {
        self.index.story(id)
    }

    /// Durable membership, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeRecord)> {
        self.index.nodes()
    }

    /// Nodes whose heartbeat advanced within the claim timeout, as of the
    /// last input, plus this node.
    pub fn alive_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.liveness.alive(self.now).map(|(n, _)| n.clone()).collect();
        v.push(self.node.clone());
        v.sort();
        v
    }

    /// Changes whenever a story or node record this replica shows changed
    /// (locally or by merge); compare it across inputs to know when to
    /// refresh a view.
    pub fn index_version(&self) -> u64 {
        self.index.version()
    }

    /// Nodes heard from: when their newest heartbeat arrived (this node's
    /// clock) and the free slots it advertised, in id order.
    pub fn heartbeats(&self) -> impl Iterator<Item = (&NodeId, Millis, u32)> + '_ {
        self.liveness.heard()
    }

    /// Changes in the document's history.
    pub fn change_count(&mut self) -> usize {
        self.doc.automerge().stats().num_changes as usize
    }

    /// Stories this node holds a claim on, with token and stage.
    pub fn runs(&self) -> impl Iterator<Item = (&StoryId, Token, Stage)> {
        self.claims.runs().map(|(id, r)| (id, r.token, r.stage))
    }

    /// Connections that finished the handshake.
    pub fn peer_count(&self) -> usize {
        self.peers.established().count()
    }

    /// The nodes at the other end of finished handshakes, in id order.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.peers.established().map(|(_, n)| n.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Keys this node believes (certified, not revoked), by node.
    pub fn node_keys(
        &self,
    ) -> &std::collections::BTreeMap<NodeId, std::collections::BTreeSet<crate::identity::PublicKey>> {
        self.members.keys()
    }

    /// Node keys with a valid revocation in the document.
    pub fn revoked_keys(&self) -> std::collections::BTreeSet<(NodeId, crate::identity::PublicKey)> {
        self.members.revoked().clone()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        let mut h = self.doc.heads();
        h.sort();
        h
    }

    /// Whether the document holds the change `hash` (applied, not queued).
    pub fn has_change(&mut self, hash: &automerge::ChangeHash) -> bool {
        self.doc.automerge().get_change_meta_by_hash(hash).is_some()
    }

    /// How many changes of this epoch we hold a signature of (signing.rs).
    pub fn signed_changes(&self) -> usize {
        self.sigs.len()
    }

    /// Sync messages and bytes sent since start, main path and mesh.
    pub fn sync_sent(&self) -> crate::SyncSent {
        self.peers.sync_sent()
    }

    /// What checking heartbeats has cost since start (`liveness/chain.rs`):
    /// the cost of hearing the fleet.
    pub fn beat_checks(&self) -> crate::BeatChecks {
        self.liveness.beat_check_cost()
    }

    /// Landing batches this node called off, by why.
    pub fn call_offs(&self) -> crate::landing::CallOffs {
        self.train.call_offs
    }

    /// Merges read whole because a change applied without a note of where
    /// it writes (`doc/touched.rs`): a cost, never a wrong view.
    pub fn full_reads(&self) -> u64 {
        self.doc.full_reads()
    }

    /// Sync messages not applied because they held a revoked node's change.
    pub fn revoked_changes_dropped(&self) -> u64 {
        self.sigs.dropped(crate::signing::Dropped::Revoked)
    }

    /// A full save of the document (for size checks and snapshots).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.automerge().save()
    }

    /// Compares the incremental index with a fresh read of the whole
    /// document; returns the stories that differ. Checkers call this: the
    /// index is what every decision is made on. The fresh read checks
    /// values as the incremental one does, falling back on the index's
    /// view where a value is refused (schema.rs): a refused story is kept,
    /// not drift.
    pub fn index_drift(&mut self) -> Vec<StoryId> {
        let in_doc: Vec<StoryId> = self.doc.story_ids();
        let ids: std::collections::BTreeSet<StoryId> =
            in_doc.into_iter().chain(self.index.story_ids().cloned()).collect();
        let mut drift = Vec::new();
        for id in ids {
            let known = self.index.story(&id).cloned();
            match (self.read_story_checked(&id).0, known) {
                (crate::doc::StoryRead::Valid(v), Some(k)) if v == k => {}
                (crate::doc::StoryRead::Absent | crate::doc::StoryRead::Refused(_), _) => {}
                (v, k) => {
                    eprintln!("DRIFT {id}: doc {v:?}\n   index {k:?}");
                    drift.push(id)
                }
            }
        }
        drift
    }
}
