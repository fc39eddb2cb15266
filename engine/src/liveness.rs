//! Who is alive, judged only by the local clock.
//!
//! A node is alive while its heartbeat `(incarnation, seq)` keeps advancing
//! within `claim_timeout_ms` as measured here. Wall clocks of other machines
//! are never compared, so clock skew cannot kill a node.

use std::collections::{BTreeMap, BTreeSet};

pub mod chain;

use crate::wire::Heartbeat;
use crate::{Millis, NodeId};

#[derive(Debug, Clone)]
struct Beat {
    /// `None` until a heartbeat arrives: the node was only seen in the
    /// document and is on its grace period.
    incarnation: Option<u64>,
    seq: u64,
    /// The incarnation before the current one. Late relays of its beats are
    /// ignored, or they would look new and flip the record back.
    previous_incarnation: Option<u64>,
    advanced_at: Millis,
    free_slots: u32,
    /// The node said it is leaving (its last beat): dead at once, until a
    /// new incarnation beats.
    left: bool,
}

/// The sequence number of a node's last beat: "I am leaving". Signed like
/// any beat, so no node can make another leave.
pub const LEAVING_SEQ: u64 = u64::MAX;

/// Our own heartbeat: its sequence, the free slots it last advertised (a
/// change goes out at once), and when the next periodic one is due.
#[derive(Debug, Clone)]
pub(crate) struct OwnBeat {
    seq: u64,
    free_slots: u32,
    next_at: Millis,
    /// The hash chains our beats reveal, one per count of free slots
    /// advertised (a chain's statement signs its free slots): going back
    /// to a count reuses its chain, so a change of free slots costs a
    /// signature only the first time (sims: slots change several times a
    /// second, and rebuilding a chain each time was 4% of a run).
    /// With the last seq each proved.
    chains: std::collections::BTreeMap<u32, (chain::OwnChain, u64)>,
}

/// Most chains of our own kept (one per count of free slots).
const MAX_OWN_CHAINS: usize = 8;
/// Most beats since a chain was last used for it to be used again: a
/// receiver hashes a link down to the last one it verified, one hash a
/// beat in between, and past this many a new chain's one signature check
/// is cheaper.
const MAX_REUSE_GAP: u64 = 64;

impl OwnBeat {
    /// The first beat is due at once, and advertises any free slots as a
    /// change.
    pub fn new(now: Millis) -> OwnBeat {
        OwnBeat { seq: 0, free_slots: u32::MAX, next_at: now, chains: std::collections::BTreeMap::new() }
    }

    pub fn next_at(&self) -> Millis {
        self.next_at
    }

    pub fn is_due(&self, now: Millis) -> bool {
        now >= self.next_at
    }

    /// The periodic beat went out: the next one is due `interval_ms` later.
    pub fn schedule(&mut self, now: Millis, interval_ms: u64) {
        self.next_at = now.saturating_add_ms(interval_ms);
    }

    /// The next periodic beat comes at `at` at the latest.
    pub fn no_later_than(&mut self, at: Millis) {
        self.next_at = self.next_at.min(at);
    }

    /// The free slots our last beat advertised.
    pub fn advertised_slots(&self) -> u32 {
        self.free_slots
    }

    /// The sequence and free slots of the beat to send now; `None` after
    /// our goodbye.
    pub fn next(&mut self, free_slots: u32) -> Option<(u64, u32)> {
        if self.seq == LEAVING_SEQ {
            return None;
        }
        self.seq += 1;
        self.free_slots = free_slots;
        Some((self.seq, free_slots))
    }

    /// The proof of our beat `seq` with `free_slots`: a link of our chain
    /// for those free slots, a new chain when there is none or it is
    /// exhausted, and a signature for the goodbye (`sign` signs the beat).
    /// `new_chain` builds and signs a chain starting at the given seq.
    pub fn proof(
        &mut self,
        seq: u64,
        free_slots: u32,
        sign: impl FnOnce() -> crate::identity::Sig,
        new_chain: impl FnOnce(u64) -> chain::OwnChain,
    ) -> crate::wire::BeatProof {
        use crate::wire::BeatProof;
        if seq == LEAVING_SEQ {
            return BeatProof::Signed(sign());
        }
        if let Some((c, last)) = self.chains.get_mut(&free_slots)
            && seq.saturating_sub(*last) <= MAX_REUSE_GAP
            && let Some((chain, link)) = c.proof(seq, free_slots)
        {
            *last = seq;
            return BeatProof::Chain { chain, link };
        }
        let c = new_chain(seq - 1);
        let (chain, link) = c.proof(seq, free_slots).expect("a new chain proves its first beat");
        self.chains.insert(free_slots, (c, seq));
        // Exhausted chains go; past the bound, the one used longest ago.
        self.chains.retain(|_, (c, _)| c.covers(seq));
        while self.chains.len() > MAX_OWN_CHAINS {
            let oldest = self.chains.iter().min_by_key(|(_, (_, last))| *last).map(|(f, _)| *f);
            if let Some(f) = oldest.filter(|f| *f != free_slots) {
                self.chains.remove(&f);
            } else {
                break;
            }
        }
        BeatProof::Chain { chain, link }
    }

    /// Our next beat says goodbye (`LEAVING_SEQ`); asked again, it says so
    /// again.
    pub fn leave(&mut self) {
        self.seq = LEAVING_SEQ - 1;
    }
}

/// What a heartbeat told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Seen before: drop it.
    Stale,
    /// Only that the node lives: relay with our next beat.
    Routine,
    /// Changes claim ranking: relay now.
    Urgent,
}

#[derive(Debug, Default)]
pub struct Liveness {
    beats: BTreeMap<NodeId, Beat>,
    /// Revoked nodes: dead at once and for good, whatever arrives.
    revoked: BTreeSet<NodeId>,
    /// Holders reported dead (`Event::NodeDead` once per death), until a
    /// beat brings them back or they hold nothing.
    dead: BTreeSet<NodeId>,
    timeout_ms: u64,
    /// The beat chains of the nodes heard, checked once each.
    chains: chain::Chains,
}

impl Liveness {
    pub fn new(timeout_ms: u64) -> Liveness {
        Liveness {
            beats: BTreeMap::new(),
            revoked: BTreeSet::new(),
            dead: BTreeSet::new(),
            timeout_ms,
            chains: chain::Chains::default(),
        }
    }

    /// The cluster's claim timeout changed.
    pub fn set_timeout_ms(&mut self, timeout_ms: u64) {
        assert!(timeout_ms > 0, "a zero claim timeout was validated away");
        self.timeout_ms = timeout_ms;
    }

    /// Would `hb` be news? Checked before its signature is verified, so
    /// the flood of duplicates costs no cryptography.
    pub fn is_news(&self, hb: &Heartbeat) -> bool {
        if self.revoked.contains(&hb.node) {
            return false;
        }
        match self.beats.get(&hb.node) {
            None => true,
            Some(b) => match b.incarnation {
                None => true,
                Some(inc) if inc == hb.incarnation => hb.seq > b.seq,
                Some(_) => b.previous_incarnation != Some(hb.incarnation),
            },
        }
    }

    /// The node is dead from now on: no beat or grace brings it back.
    pub fn revoke(&mut self, node: &NodeId) {
        self.beats.remove(node);
        self.chains.forget(node);
        self.revoked.insert(node.clone());
    }

    /// Reported dead now (a revocation): no `NodeDead` follows.
    pub fn mark_dead(&mut self, node: &NodeId) {
        self.dead.insert(node.clone());
    }

    /// Notes the holders of stories (`holders`, sorted): those never heard
    /// get one timeout of grace, and those that just died are returned,
    /// each once per death. Nodes that hold nothing are forgotten.
    pub fn scan_holders(&mut self, holders: &[NodeId], now: Millis) -> Vec<NodeId> {
        assert!(holders.is_sorted(), "holders come sorted");
        let holds = |n: &NodeId| holders.binary_search(n).is_ok();
        self.forget_unheard(holds);
        self.dead.retain(holds);
        let mut died = Vec::new();
        for h in holders {
            self.note_seen(h, now);
            if !self.is_alive(h, now) && self.dead.insert(h.clone()) {
                died.push(h.clone());
            }
        }
        died
    }

    /// A revoked node re-enrolled with a new key.
    pub fn unrevoke(&mut self, node: &NodeId) {
        self.revoked.remove(node);
    }

    /// Records a heartbeat and says whether it is news to relay.
    /// Duplicates and stale beats are not, which is what bounds the gossip
    /// flood. A beat is urgent when it changes what claim ranking sees (a
    /// node's free slots, or a node we had not heard).
    pub fn handle_heartbeat(&mut self, hb: &Heartbeat, now: Millis) -> News {
        if self.revoked.contains(&hb.node) {
            return News::Stale;
        }
        let Some(beat) = self.beats.get_mut(&hb.node) else {
            self.beats.insert(
                hb.node.clone(),
                Beat {
                    incarnation: Some(hb.incarnation),
                    seq: hb.seq,
                    previous_incarnation: None,
                    advanced_at: now,
                    free_slots: hb.free_slots,
                    left: hb.seq == LEAVING_SEQ,
                },
            );
            if hb.seq != LEAVING_SEQ {
                self.dead.remove(&hb.node);
            }
            return News::Urgent;
        };
        let news = match beat.incarnation {
            None => true,
            Some(inc) if inc == hb.incarnation => hb.seq > beat.seq,
            Some(_) if beat.previous_incarnation == Some(hb.incarnation) => false,
            Some(inc) => {
                beat.previous_incarnation = Some(inc);
                true
            }
        };
        if !news {
            return News::Stale;
        }
        let leaving = hb.seq == LEAVING_SEQ;
        let urgent = beat.incarnation.is_none() || beat.free_slots != hb.free_slots || leaving;
        beat.incarnation = Some(hb.incarnation);
        beat.seq = hb.seq;
        beat.advanced_at = now;
        beat.free_slots = hb.free_slots;
        beat.left = leaving;
        if !leaving {
            self.dead.remove(&hb.node);
        }
        if urgent { News::Urgent } else { News::Routine }
    }

    /// Starts the grace period of a node seen (e.g. holding a claim) but
    /// never heard: it is presumed alive for one timeout from now.
    pub fn note_seen(&mut self, node: &NodeId, now: Millis) {
        if self.revoked.contains(node) {
            return;
        }
        self.beats.entry(node.clone()).or_insert(Beat {
            incarnation: None,
            seq: 0,
            previous_incarnation: None,
            advanced_at: now,
            free_slots: 0,
            left: false,
        });
    }

    /// Drops the grace periods of nodes never heard that no longer hold
    /// anything (`holds` says who does): they are only ever noted for
    /// holding a story, so without this a peer writing made-up holders
    /// would grow the map for ever. Heard nodes keep their record: it is
    /// what makes a replayed old beat stale.
    fn forget_unheard(&mut self, holds: impl Fn(&NodeId) -> bool) {
        self.beats.retain(|n, b| b.incarnation.is_some() || holds(n));
    }

    /// Nodes with a record: heard, or on a grace period.
    pub fn len(&self) -> usize {
        self.beats.len()
    }

    /// Nodes heard from (a verified beat arrived).
    /// The beat chains known, to check chain beats against.
    pub(crate) fn chains(&mut self) -> &mut chain::Chains {
        &mut self.chains
    }

    /// What checking beats has cost so far.
    pub fn beat_check_cost(&self) -> chain::BeatChecks {
        self.chains.cost()
    }

    /// Nodes whose beat chain we hold.
    pub fn chains_known(&self) -> usize {
        self.chains.len()
    }

    pub fn heard_count(&self) -> usize {
        self.beats.values().filter(|b| b.incarnation.is_some()).count()
    }

    pub fn is_alive(&self, node: &NodeId, now: Millis) -> bool {
        self.beats.get(node).is_some_and(|b| self.fresh(b, now))
    }

    fn fresh(&self, b: &Beat, now: Millis) -> bool {
        !b.left && now.saturating_sub(b.advanced_at) < self.timeout_ms
    }

    /// Every node with a beat on record: when its newest beat arrived here
    /// and the free slots it advertised, in id order. A node seen only in
    /// the document has no beat (its grace period starts at `advanced_at`
    /// but nothing was heard).
    pub fn heard(&self) -> impl Iterator<Item = (&NodeId, Millis, u32)> + '_ {
        self.beats.iter().filter(|(_, b)| b.incarnation.is_some()).map(|(n, b)| (n, b.advanced_at, b.free_slots))
    }

    /// Live nodes that have heartbeated, with their advertised free slots,
    /// in id order.
    pub fn alive(&self, now: Millis) -> impl Iterator<Item = (&NodeId, u32)> + '_ {
        self.beats
            .iter()
            .filter(move |(_, b)| b.incarnation.is_some() && self.fresh(b, now))
            .map(|(n, b)| (n, b.free_slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(inc: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            node: NodeId::new("n").unwrap(),
            incarnation: inc,
            seq,
            free_slots: 1,
            proof: crate::wire::BeatProof::Signed([0; 64]),
        }
    }

    #[test]
    fn alive_while_seq_advances_on_local_clock() {
        let n = NodeId::new("n").unwrap();
        let mut l = Liveness::new(1_000);
        assert!(!l.is_alive(&n, Millis(0)));
        assert_eq!(l.handle_heartbeat(&hb(1, 1), Millis(0)), News::Urgent);
        assert_eq!(l.handle_heartbeat(&hb(1, 1), Millis(500)), News::Stale, "duplicate is not news");
        assert!(l.is_alive(&n, Millis(999)));
        assert!(!l.is_alive(&n, Millis(1_000)), "a repeated seq does not extend life");
        assert_eq!(l.handle_heartbeat(&hb(1, 2), Millis(1_500)), News::Routine);
        let mut busy = hb(1, 3);
        busy.free_slots = 0;
        assert_eq!(l.handle_heartbeat(&busy, Millis(1_600)), News::Urgent, "free slots changed");
        assert!(l.is_alive(&n, Millis(2_000)));
    }

    #[test]
    fn restart_counts_and_late_relays_of_old_incarnation_do_not() {
        let n = NodeId::new("n").unwrap();
        let mut l = Liveness::new(1_000);
        assert_ne!(l.handle_heartbeat(&hb(1, 50), Millis(0)), News::Stale);
        assert_ne!(l.handle_heartbeat(&hb(2, 1), Millis(10)), News::Stale, "new incarnation with low seq is news");
        assert_eq!(l.handle_heartbeat(&hb(1, 51), Millis(20)), News::Stale, "old incarnation is ignored");
        assert_ne!(l.handle_heartbeat(&hb(2, 2), Millis(30)), News::Stale);
        assert!(l.is_alive(&n, Millis(1_029)));
    }

    /// Grace periods of holders that hold nothing any more are dropped;
    /// nodes heard keep their record (it makes replayed beats stale).
    #[test]
    fn unheard_non_holders_are_forgotten() {
        let mut l = Liveness::new(1_000);
        for i in 0..100 {
            l.note_seen(&NodeId::new(format!("made-up-{i}")).unwrap(), Millis(0));
        }
        assert_eq!(l.handle_heartbeat(&hb(1, 1), Millis(0)), News::Urgent);
        assert_eq!(l.len(), 101);
        let kept = NodeId::new("made-up-7").unwrap();
        l.forget_unheard(|n| *n == kept);
        assert_eq!(l.len(), 2, "the heard node and the one still holding");
        assert_eq!(l.heard_count(), 1);
        assert_eq!(l.handle_heartbeat(&hb(1, 1), Millis(10)), News::Stale, "its record still makes replays stale");
    }

    #[test]
    fn seen_nodes_get_one_timeout_of_grace() {
        let n = NodeId::new("n").unwrap();
        let mut l = Liveness::new(1_000);
        l.note_seen(&n, Millis(100));
        assert!(l.is_alive(&n, Millis(1_099)));
        assert!(!l.is_alive(&n, Millis(1_100)));
        assert_eq!(l.alive(Millis(200)).count(), 0, "grace nodes are not ranked for claims");
    }

    #[test]
    fn a_count_of_free_slots_reuses_its_chain_until_a_long_gap() {
        let node = NodeId::new("n").unwrap();
        let mut own = OwnBeat::new(Millis(0));
        let built = std::cell::Cell::new(0);
        let root_of = |own: &mut OwnBeat, seq: u64, slots: u32| {
            let proof = own.proof(
                seq,
                slots,
                || [0; 64],
                |start| {
                    built.set(built.get() + 1);
                    chain::OwnChain::new(&[7; 32], &node, 1, start, slots, |_| [0; 64])
                },
            );
            match proof {
                crate::wire::BeatProof::Chain { chain, .. } => chain.root,
                crate::wire::BeatProof::Signed(_) => panic!("a chain beat"),
            }
        };
        let two = root_of(&mut own, 1, 2);
        let one = root_of(&mut own, 2, 1);
        assert_ne!(two, one);
        assert_eq!(root_of(&mut own, 3, 2), two, "back to two free slots: the same chain");
        assert_eq!(root_of(&mut own, 4, 1), one);
        // A chain unused for more beats than a receiver should hash is
        // replaced.
        assert_ne!(root_of(&mut own, 4 + MAX_REUSE_GAP + 1, 2), two);
        assert_eq!(built.get(), 3);
    }
}
