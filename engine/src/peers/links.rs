//! The `Peers` part: this node's connections and dial targets, the sync
//! messages it owes, and the heartbeats it will relay. Local, never
//! replicated.
//!
//! The protocol rules (peers.rs) decide what to do with a message; this part
//! keeps the bookkeeping consistent: a conn is open once, a sync is owed
//! only to an open conn, a target points at one conn at a time, and
//! outbound conn ids never repeat.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync;

use crate::identity::PublicKey;
use crate::wire::Heartbeat;
use crate::{ConnId, Millis, NodeId};

/// Why we keep an outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    Rendezvous,
    /// A supplementary connection to this node.
    Mesh(NodeId),
}

/// An address we keep dialing until told otherwise.
#[derive(Debug, Clone)]
pub(crate) struct DialTarget {
    pub purpose: Purpose,
    pub conn: Option<ConnId>,
    /// Consecutive failures, for exponential backoff.
    pub failures: u32,
    pub next_at: Millis,
}

impl DialTarget {
    pub fn new(purpose: Purpose, now: Millis) -> DialTarget {
        DialTarget { purpose, conn: None, failures: 0, next_at: now }
    }
}

pub(crate) struct Conn {
    /// The address key in `targets` for outbound conns.
    pub target: Option<String>,
    /// Known once the peer proved its key (hello, then auth); only then do
    /// we sync or take its heartbeats.
    pub node: Option<NodeId>,
    /// The challenge we sent in our hello.
    pub our_nonce: [u8; 32],
    /// The peer's hello, certificate checked, until its auth arrives:
    /// node, key, its nonce.
    pub hello: Option<(NodeId, PublicKey, [u8; 32])>,
    /// The key the peer proved.
    pub peer_key: Option<PublicKey>,
    /// The epoch of the peer's document, from its hello or its last base:
    /// we sync only when it is ours.
    pub epoch: Option<u64>,
    /// The epoch whose base we last sent on this conn: a base is large,
    /// so a peer that keeps claiming to be behind gets it once, not once
    /// per message (no amplification).
    pub sent_base: Option<u64>,
    /// Fresh per connection: reusing sync state across reconnects can stop
    /// peers from converging.
    pub sync: sync::State,
    /// Sync messages to this peer are paced: at most one per
    /// `sync_interval_ms`, carrying everything that changed meanwhile.
    pub next_sync_at: Millis,
    /// What this peer may still send (bytes and messages per second).
    pub budget: crate::defence::PeerBudget,
    /// Bytes of sync messages from this peer since the document last held
    /// no change whose dependencies are missing (bounded by
    /// `max_held_bytes`).
    pub held_bytes: u64,
    /// Heads-first on a mesh link (peers.rs): what we told it, what it
    /// told us we lack, whether a sync is under way.
    pub mesh: MeshHeads,
}

impl Conn {
    /// The document changed under this link's feet (a rebuild, an
    /// epoch): sync starts over.
    pub fn restart_sync(&mut self) {
        self.sync = sync::State::new();
        self.mesh = MeshHeads::default();
    }
}

/// A mesh link, while a rendezvous link carries the changes, sends only
/// its heads when they change. A peer that heard of heads it lacks, and
/// still lacks them a mesh interval later, pulls: it sends sync messages
/// (at the mesh pace) until it has them, and the other side answers each
/// one. Neither side syncs its own new changes on the link: under churn
/// a sync kept going by new changes never ended.
#[derive(Debug, Default)]
pub(crate) struct MeshHeads {
    /// The heads we last sent on this link.
    pub sent: Vec<automerge::ChangeHash>,
    /// The peer's heads (and their dependencies) we lacked when we last
    /// looked: we pull while this is not empty.
    pub lacking: Vec<automerge::ChangeHash>,
    /// The peer pulled from us: one sync message answers it.
    pub answer_owed: bool,
}

/// How a dial target waits after its conn ended.
pub(crate) struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
    /// A random draw for the jitter.
    pub jitter: u64,
    /// Wait exactly this long instead (misbehaving peers get the longest).
    pub fixed_ms: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Peers {
    conns: BTreeMap<ConnId, Conn>,
    targets: BTreeMap<String, DialTarget>,
    next_conn: u64,
    /// The node that answered at the rendezvous address, once it proved it.
    rendezvous_node: Option<NodeId>,
    /// Heartbeats heard since our last beat, to relay with it (latest per
    /// node, with the conn it came from).
    relay: BTreeMap<NodeId, (Heartbeat, ConnId)>,
    /// Conns owed a sync message, sent once their pacing interval allows.
    sync_due: BTreeSet<ConnId>,
    /// Sync messages sent, by path.
    sent: SyncSent,
}

/// Sync messages and their bytes sent since start, on the main path (the
/// rendezvous link, or any link without one) and on mesh links; and the
/// heartbeat envelopes beside them (own beats and relays, every link).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncSent {
    pub main_messages: u64,
    pub main_bytes: u64,
    pub mesh_messages: u64,
    pub mesh_bytes: u64,
    pub beat_messages: u64,
    pub beat_bytes: u64,
    /// Heads envelopes on mesh links (beside their sync messages).
    pub heads_messages: u64,
    pub heads_bytes: u64,
}

impl std::ops::AddAssign for SyncSent {
    fn add_assign(&mut self, o: SyncSent) {
        self.main_messages += o.main_messages;
        self.main_bytes += o.main_bytes;
        self.mesh_messages += o.mesh_messages;
        self.mesh_bytes += o.mesh_bytes;
        self.beat_messages += o.beat_messages;
        self.beat_bytes += o.beat_bytes;
        self.heads_messages += o.heads_messages;
        self.heads_bytes += o.heads_bytes;
    }
}

impl Peers {
    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    pub fn conns(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.conns.iter().map(|(id, c)| (*id, c))
    }

    pub fn conns_mut(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.conns.values_mut()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Conns whose peer proved who it is, in conn order.
    pub fn established(&self) -> impl Iterator<Item = (ConnId, &NodeId)> {
        self.conns.iter().filter_map(|(id, c)| Some((*id, c.node.as_ref()?)))
    }

    pub fn open(&mut self, id: ConnId, conn: Conn) {
        assert!(!self.conns.contains_key(&id), "{id:?} opened twice");
        assert_eq!(id.is_outbound(), conn.target.is_some(), "outbound conns, and only they, have a target");
        self.conns.insert(id, conn);
    }

    /// Forgets `id`, and any sync owed to it.
    pub fn close(&mut self, id: ConnId) -> Option<Conn> {
        self.sync_due.remove(&id);
        self.conns.remove(&id)
    }

    /// The address of the target whose dial made `conn`.
    pub fn target_of(&self, conn: ConnId) -> Option<&String> {
        self.targets.iter().find(|(_, t)| t.conn == Some(conn)).map(|(a, _)| a)
    }

    pub fn target(&self, address: &str) -> Option<&DialTarget> {
        self.targets.get(address)
    }

    pub fn targets(&self) -> impl Iterator<Item = (&String, &DialTarget)> {
        self.targets.iter()
    }

    pub fn has_target(&self, address: &str) -> bool {
        self.targets.contains_key(address)
    }

    pub fn add_target(&mut self, address: String, target: DialTarget) {
        assert!(target.conn.is_none(), "a new target is not dialed yet");
        self.targets.insert(address, target);
    }

    /// Stops dialing `address`; the conn it held, if any, is closed here
    /// and returned for hanging up.
    pub fn remove_target(&mut self, address: &str) -> Option<ConnId> {
        let conn = self.targets.remove(address)?.conn?;
        self.close(conn);
        Some(conn)
    }

    /// The handshake on the conn of `address` finished: its failures reset,
    /// and a rendezvous target tells us the rendezvous node.
    pub fn target_reached(&mut self, address: &str, node: &NodeId) {
        let Some(t) = self.targets.get_mut(address) else { return };
        if t.purpose == Purpose::Rendezvous {
            self.rendezvous_node = Some(node.clone());
        }
        t.failures = 0;
    }

    pub fn rendezvous_node(&self) -> Option<&NodeId> {
        self.rendezvous_node.as_ref()
    }

    /// The outbound `conn` ended (failed dial, close or rejection): schedule
    /// the next dial of its target with exponential backoff and jitter.
    pub fn back_off(&mut self, conn: ConnId, now: Millis, b: Backoff) {
        let Some(t) = self.targets.values_mut().find(|t| t.conn == Some(conn)) else { return };
        t.conn = None;
        t.failures = t.failures.saturating_add(1);
        let backoff = b.min_ms.saturating_mul(1 << t.failures.min(20)).min(b.max_ms);
        // Jitter in [backoff/2, backoff) spreads reconnect storms.
        let wait = b.fixed_ms.unwrap_or(backoff / 2 + b.jitter % (backoff / 2).max(1));
        t.next_at = now.saturating_add_ms(wait);
    }

    /// Targets due a dial: each gets a fresh outbound conn id.
    pub fn dial_due(&mut self, now: Millis) -> Vec<(ConnId, String)> {
        let mut dials = Vec::new();
        for (address, t) in self.targets.iter_mut().filter(|(_, t)| t.conn.is_none() && t.next_at <= now) {
            self.next_conn += 1;
            let conn = ConnId::outbound(self.next_conn);
            assert!(!self.conns.contains_key(&conn), "outbound conn id {conn:?} reused");
            t.conn = Some(conn);
            dials.push((conn, address.clone()));
        }
        dials
    }

    /// When a target without a connection is next dialed.
    pub fn next_dial_at(&self) -> Option<Millis> {
        self.targets.values().filter(|t| t.conn.is_none()).map(|t| t.next_at).min()
    }

    /// Supplementary outbound connections held or being dialed.
    pub fn mesh_peer_count(&self) -> usize {
        self.targets.values().filter(|t| matches!(t.purpose, Purpose::Mesh(_))).count()
    }

    /// Is `conn` a finished handshake on our rendezvous target?
    pub fn is_rendezvous_link(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else { return false };
        c.node.is_some()
            && c.target.as_ref().and_then(|a| self.targets.get(a)).is_some_and(|t| t.purpose == Purpose::Rendezvous)
    }

    pub fn has_rendezvous_link(&self) -> bool {
        self.conns.keys().any(|c| self.is_rendezvous_link(*c))
    }

    pub fn owe_sync(&mut self, conn: ConnId) {
        assert!(self.conns.contains_key(&conn), "sync owed to unknown {conn:?}");
        self.sync_due.insert(conn);
    }

    pub fn count_sync(&mut self, main: bool, bytes: usize) {
        let s = &mut self.sent;
        let (messages, total) =
            if main { (&mut s.main_messages, &mut s.main_bytes) } else { (&mut s.mesh_messages, &mut s.mesh_bytes) };
        *messages += 1;
        *total += bytes as u64;
    }

    pub fn count_heads(&mut self, bytes: usize) {
        self.sent.heads_messages += 1;
        self.sent.heads_bytes += bytes as u64;
    }

    pub fn count_beats(&mut self, bytes: usize) {
        self.sent.beat_messages += 1;
        self.sent.beat_bytes += bytes as u64;
    }

    pub fn sync_sent(&self) -> SyncSent {
        self.sent
    }

    /// Every established peer is owed a sync.
    pub fn owe_sync_all(&mut self) {
        let ids: Vec<ConnId> = self.established().map(|(id, _)| id).collect();
        self.sync_due.extend(ids);
    }

    /// The owed syncs whose pacing allows one now; they are no longer owed.
    pub fn take_due_syncs(&mut self, now: Millis) -> Vec<ConnId> {
        let due: Vec<ConnId> =
            self.sync_due.iter().filter(|c| self.conns.get(c).is_none_or(|c| c.next_sync_at <= now)).copied().collect();
        for c in &due {
            self.sync_due.remove(c);
        }
        due
    }

    /// When the next paced sync message is due.
    pub fn next_sync_at(&self) -> Option<Millis> {
        self.sync_due.iter().filter_map(|c| self.conns.get(c)).map(|c| c.next_sync_at).min()
    }

    /// Keeps `hb` (the latest of its node) to relay with our next beat.
    pub fn relay_later(&mut self, hb: Heartbeat, from: ConnId) {
        self.relay.insert(hb.node.clone(), (hb, from));
    }

    pub fn drop_relay(&mut self, node: &NodeId) {
        self.relay.remove(node);
    }

    pub fn take_relays(&mut self) -> BTreeMap<NodeId, (Heartbeat, ConnId)> {
        std::mem::take(&mut self.relay)
    }

    /// This part's invariants, for the debug checks after each input.
    pub fn check(&self, max_peers: usize, max_mesh_peers: usize, has_key: impl Fn(&NodeId) -> bool) {
        let mesh = self.mesh_peer_count();
        assert!(mesh <= max_mesh_peers, "mesh of {mesh} over its cap {max_mesh_peers}");
        // Dial targets: the rendezvous and the mesh, nothing else.
        assert!(self.targets.len() <= 1 + max_mesh_peers, "{} dial targets", self.targets.len());
        // Inbound conns are refused at max_peers; outbound ones are ours.
        let inbound = self.conns.keys().filter(|c| !c.is_outbound()).count();
        assert!(inbound <= max_peers, "{inbound} inbound conns over the peer limit {max_peers}");
        assert!(self.conns.len() <= max_peers + self.targets.len(), "{} conns", self.conns.len());
        // A target's conn is open or being dialed; no two targets share one.
        let dialed: BTreeSet<ConnId> = self.targets.values().filter_map(|t| t.conn).collect();
        assert_eq!(dialed.len(), self.targets.values().filter(|t| t.conn.is_some()).count(), "two targets, one conn");
        assert!(dialed.iter().all(|c| c.0 <= ConnId::outbound(self.next_conn).0), "a target's conn id not issued");
        // Beats to relay come only from nodes whose key we verified.
        assert!(self.relay.keys().all(has_key), "relaying a beat of an unknown key");
        assert!(self.sync_due.iter().all(|c| self.conns.contains_key(c)), "sync owed to a closed conn");
    }
}
