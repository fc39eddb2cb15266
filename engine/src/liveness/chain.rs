//! Heartbeats checked with one hash instead of one signature.
//!
//! Every node hears every other node's beat, so signed beats cost each node
//! N signature checks per beat interval: the largest cost of a big fleet
//! (issue 23). Instead, a node signs a hash chain once and then reveals
//! one link of it per beat, S/KEY style:
//!
//! - From a secret seed it computes `CHAIN_LEN + 1` links, each the hash of
//!   the next: `root = H(l1)`, `l1 = H(l2)`, and so on. It signs (node,
//!   incarnation, start seq, free slots, root) once.
//! - Beat `start + k` carries the signed chain and link `lk`. Hashing `lk`
//!   k times gives the root.
//! - A receiver checks the chain's signature the first time it sees the
//!   chain. After that it hashes a new link down to the last link it
//!   verified, which is one hash per beat.
//!
//! Nobody but the node can make a later beat: that needs a preimage of the
//! newest link revealed, so no relay can keep a dead node alive. Free slots
//! are part of what is signed, so a relay cannot change them either. A node
//! keeps one chain per count of free slots it advertises: the first change
//! to a count starts a chain (one signature for it, one check for each
//! receiver, who then keep it too); going back to a count reveals the next
//! link of its chain, which costs receivers the hashes of the beats in
//! between (a chain unused for 64 beats is replaced instead). A relay that
//! saw a later link of a count's chain can make that count's beats for
//! seqs before it: it can say the node had those free slots a little
//! earlier than it did, no more. Its leaving beat is signed by
//! itself.
//!
//! Each beat carries its chain (104 bytes more than a signed beat). A
//! receiver that missed the chain's first beat, or hears a relay first,
//! still checks the beat on its own.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::NodeId;
use crate::identity::Sig;
use crate::wire::{BeatChain, Heartbeat};

/// Beats per chain: about 17 minutes at one beat a second. Building one
/// costs this many hashes (a fraction of a millisecond). Checking a
/// beat's link from the root, when a receiver first meets a chain
/// mid-way, costs at most this many.
pub const CHAIN_LEN: u64 = 1_024;

const LINK_CONTEXT: &[u8] = b"huskies-beat-link-v1\0";
const SEED_CONTEXT: &[u8] = b"huskies-beat-seed-v1\0";

fn step(link: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LINK_CONTEXT);
    h.update(link);
    h.finalize().into()
}

/// `link` hashed `times` times.
fn walk(mut link: [u8; 32], times: u64) -> [u8; 32] {
    for _ in 0..times {
        link = step(&link);
    }
    link
}

/// Our own chain: its signed statement and every link, root first.
#[derive(Debug, Clone)]
pub(crate) struct OwnChain {
    chain: BeatChain,
    free_slots: u32,
    links: Vec<[u8; 32]>,
}

impl OwnChain {
    /// A chain for our beats `start_seq + 1 ..= start_seq + CHAIN_LEN`,
    /// all advertising `free_slots`. The seed is derived from our secret
    /// key, so the chain is ours alone and the same inputs build the
    /// same chain (determinism). `sign` signs the statement.
    pub fn new(
        secret: &[u8; 32],
        node: &NodeId,
        incarnation: u64,
        start_seq: u64,
        free_slots: u32,
        sign: impl FnOnce(&[u8]) -> Sig,
    ) -> OwnChain {
        let mut h = Sha256::new();
        h.update(SEED_CONTEXT);
        h.update(secret);
        h.update(node.as_str().as_bytes());
        h.update([0]);
        h.update(incarnation.to_be_bytes());
        h.update(start_seq.to_be_bytes());
        h.update(free_slots.to_be_bytes());
        let mut link: [u8; 32] = h.finalize().into();
        let mut links = Vec::with_capacity(CHAIN_LEN as usize + 1);
        links.push(link);
        for _ in 0..CHAIN_LEN {
            link = step(&link);
            links.push(link);
        }
        links.reverse();
        let root = links[0];
        let sig = sign(&crate::identity::chain_message(node, incarnation, start_seq, free_slots, &root));
        OwnChain { chain: BeatChain { start_seq, root, sig }, free_slots, links }
    }

    /// Whether beat `seq` falls in this chain.
    pub fn covers(&self, seq: u64) -> bool {
        seq.checked_sub(self.chain.start_seq).is_some_and(|k| (1..=CHAIN_LEN).contains(&k))
    }

    /// The chain and link proving beat `seq` with `free_slots`, if this
    /// chain can.
    pub fn proof(&self, seq: u64, free_slots: u32) -> Option<(BeatChain, [u8; 32])> {
        if free_slots != self.free_slots {
            return None;
        }
        let k = seq.checked_sub(self.chain.start_seq).filter(|k| (1..=CHAIN_LEN).contains(k))?;
        Some((self.chain, self.links[k as usize]))
    }
}

/// What checking heartbeats has cost a node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BeatChecks {
    /// Beats checked: each was one signature check before chains.
    pub beats: u64,
    /// Signature checks: of new chains, and of signed (leaving) beats.
    pub signatures: u64,
    /// Hashes of chain links.
    pub hashes: u64,
}

impl std::ops::AddAssign for BeatChecks {
    fn add_assign(&mut self, o: BeatChecks) {
        self.beats += o.beats;
        self.signatures += o.signatures;
        self.hashes += o.hashes;
    }
}

/// What a chain beat is, checked against the chains we know.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainCheck {
    /// Its link hashes down to a link we verified before.
    Verified,
    /// A chain we do not know (or another incarnation's, or other free
    /// slots): its signature decides, then [`Chains::adopt`].
    Unknown,
    /// It cannot be the node's: a forgery or corruption by the sender.
    Forged(&'static str),
}

#[derive(Debug, Clone)]
struct Known {
    incarnation: u64,
    chain: BeatChain,
    free_slots: u32,
    /// The furthest position verified, and its link.
    at: u64,
    link: [u8; 32],
}

/// Most chains kept per node: one per count of free slots it advertised
/// lately. Bounded because the counts are the peer's to choose.
const MAX_CHAINS_PER_NODE: usize = 8;

/// The verified chains of every node heard (of its newest incarnation,
/// one per count of free slots: a node goes back to a count's chain, and
/// a beat on it then costs hashes, not a signature), and what checking
/// beats has cost.
#[derive(Debug, Default)]
pub(crate) struct Chains {
    known: BTreeMap<NodeId, Vec<Known>>,
    /// Beats checked (each one a signature check before chains).
    beats: u64,
    /// Signature checks of beats (chains and signed beats).
    signatures: u64,
    /// Hashes of beat links.
    hashes: u64,
}

impl Chains {
    /// The position of `hb` in `chain`, if it can be in it.
    fn position(hb: &Heartbeat, chain: &BeatChain) -> Option<u64> {
        hb.seq.checked_sub(chain.start_seq).filter(|k| (1..=CHAIN_LEN).contains(k))
    }

    pub fn check(&mut self, hb: &Heartbeat, chain: &BeatChain, link: &[u8; 32]) -> ChainCheck {
        self.beats += 1;
        let Some(k) = Self::position(hb, chain) else { return ChainCheck::Forged("a link outside its chain") };
        let Some(known) = self.known.get_mut(&hb.node).and_then(|all| {
            all.iter_mut()
                .find(|n| n.incarnation == hb.incarnation && n.chain == *chain && n.free_slots == hb.free_slots)
        }) else {
            return ChainCheck::Unknown;
        };
        // Down to the last verified link when this one is newer (one
        // hash for the next beat), else down to the root.
        let (times, expect) = if k > known.at { (k - known.at, known.link) } else { (k, chain.root) };
        self.hashes += times;
        if walk(*link, times) != expect {
            return ChainCheck::Forged("a link that is not of its chain");
        }
        if k > known.at {
            known.at = k;
            known.link = *link;
        }
        ChainCheck::Verified
    }

    /// The chain's signature checked out: its link must lead to its root.
    /// False when it does not (then the beat is forged).
    pub fn adopt(&mut self, hb: &Heartbeat, chain: &BeatChain, link: &[u8; 32]) -> bool {
        let Some(k) = Self::position(hb, chain) else { return false };
        self.hashes += k;
        if walk(*link, k) != chain.root {
            return false;
        }
        // One chain per count of free slots, of the node's newest
        // incarnation only (an older one's beats are stale anyway); a new
        // chain for a count replaces the one before it.
        let all = self.known.entry(hb.node.clone()).or_default();
        all.retain(|n| n.incarnation == hb.incarnation && n.free_slots != hb.free_slots);
        all.push(Known { incarnation: hb.incarnation, chain: *chain, free_slots: hb.free_slots, at: k, link: *link });
        if all.len() > MAX_CHAINS_PER_NODE {
            // The one whose newest verified beat is oldest goes.
            let oldest = all.iter().enumerate().min_by_key(|(_, n)| n.chain.start_seq + n.at).map(|(i, _)| i);
            if let Some(i) = oldest {
                all.swap_remove(i);
            }
        }
        true
    }

    /// One beat signature checked: of a chain, or of a signed beat
    /// (`signed_beat`, which `check` did not count).
    pub fn count_signature(&mut self, signed_beat: bool) {
        self.signatures += 1;
        self.beats += u64::from(signed_beat);
    }

    pub fn forget(&mut self, node: &NodeId) {
        self.known.remove(node);
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// What checking beats cost so far.
    pub fn cost(&self) -> BeatChecks {
        BeatChecks { beats: self.beats, signatures: self.signatures, hashes: self.hashes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::BeatProof;

    fn node() -> NodeId {
        NodeId::new("n").expect("id")
    }

    fn own(start: u64, slots: u32) -> OwnChain {
        OwnChain::new(&[7; 32], &node(), 1, start, slots, |_| [0; 64])
    }

    fn beat(c: &OwnChain, seq: u64, slots: u32) -> (Heartbeat, BeatChain, [u8; 32]) {
        let (chain, link) = c.proof(seq, slots).expect("covered");
        let hb =
            Heartbeat { node: node(), incarnation: 1, seq, free_slots: slots, proof: BeatProof::Chain { chain, link } };
        (hb, chain, link)
    }

    #[test]
    fn one_hash_per_beat_after_the_first() {
        let c = own(10, 2);
        let mut chains = Chains::default();
        let (hb, chain, link) = beat(&c, 11, 2);
        assert_eq!(chains.check(&hb, &chain, &link), ChainCheck::Unknown);
        assert!(chains.adopt(&hb, &chain, &link));
        for seq in 12..40 {
            let (hb, chain, link) = beat(&c, seq, 2);
            let before = chains.cost().hashes;
            assert_eq!(chains.check(&hb, &chain, &link), ChainCheck::Verified);
            assert_eq!(chains.cost().hashes - before, 1, "one hash for the next beat");
        }
        // A beat that skipped some (lost on the way) costs the gap.
        let (hb, chain, link) = beat(&c, 45, 2);
        assert_eq!(chains.check(&hb, &chain, &link), ChainCheck::Verified);
    }

    #[test]
    fn a_relay_can_neither_extend_nor_alter_a_chain() {
        let c = own(0, 1);
        let mut chains = Chains::default();
        let (hb, chain, link) = beat(&c, 5, 1);
        assert!(chains.adopt(&hb, &chain, &link));
        // The next beat needs a preimage of the link revealed: replaying
        // it as a later beat fails.
        let later = Heartbeat { seq: 6, ..hb.clone() };
        assert_eq!(chains.check(&later, &chain, &link), ChainCheck::Forged("a link that is not of its chain"));
        // Another count of free slots is another (unsigned) chain.
        let busier = Heartbeat { free_slots: 0, ..hb.clone() };
        assert_eq!(chains.check(&busier, &chain, &link), ChainCheck::Unknown);
        // Past the chain's end, or at its root.
        let past = Heartbeat { seq: CHAIN_LEN + 1, ..hb.clone() };
        assert_eq!(chains.check(&past, &chain, &link), ChainCheck::Forged("a link outside its chain"));
        let root = Heartbeat { seq: 0, ..hb.clone() };
        assert!(matches!(chains.check(&root, &chain, &chain.root), ChainCheck::Forged(_)));
        // A made-up link for a known position.
        assert!(matches!(chains.check(&hb, &chain, &[9; 32]), ChainCheck::Forged(_)));
        assert!(!chains.adopt(&hb, &chain, &[9; 32]));
    }

    #[test]
    fn chains_differ_by_start_and_slots_and_cover_their_range() {
        let (a, b) = (own(0, 1), own(0, 2));
        assert_ne!(a.proof(1, 1).map(|p| p.1), b.proof(1, 2).map(|p| p.1));
        assert!(a.proof(1, 2).is_none(), "other free slots need another chain");
        assert!(a.proof(0, 1).is_none() && a.proof(CHAIN_LEN + 1, 1).is_none());
        assert!(a.proof(CHAIN_LEN, 1).is_some());
        assert_eq!(walk(a.proof(CHAIN_LEN, 1).expect("last").1, CHAIN_LEN), a.chain.root);
    }

    #[test]
    fn going_back_to_a_count_of_free_slots_costs_hashes_not_a_signature() {
        let (two, one) = (own(0, 2), own(1, 1));
        let mut chains = Chains::default();
        for (c, seq, slots) in [(&two, 1, 2), (&one, 2, 1)] {
            let (hb, chain, link) = beat(c, seq, slots);
            assert_eq!(chains.check(&hb, &chain, &link), ChainCheck::Unknown);
            assert!(chains.adopt(&hb, &chain, &link));
        }
        let (hb, chain, link) = beat(&two, 3, 2);
        assert_eq!(chains.check(&hb, &chain, &link), ChainCheck::Verified, "its chain is still known");
        assert_eq!(chains.len(), 1, "one node");
        // A peer choosing ever new counts keeps a bounded number.
        for slots in 10..30 {
            let c = own(10 + u64::from(slots), slots);
            let (hb, chain, link) = beat(&c, 11 + u64::from(slots), slots);
            assert!(chains.adopt(&hb, &chain, &link));
        }
        assert!(chains.known.values().all(|all| all.len() <= MAX_CHAINS_PER_NODE));
    }
}
