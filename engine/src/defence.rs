//! The engine's defences against hostile or buggy peers, beyond the checks
//! of [`crate::guard`]: per-peer rate budgets, and the last line of defence
//! for Automerge panics on peer data.
//!
//! Recovery after a caught panic: the engine keeps a copy of exactly what
//! it has made durable (the last snapshot plus the appends since), which is
//! the whole document as of the end of the previous input, because every
//! input ends by persisting what it changed. A panic inside Automerge may
//! leave the in-memory document half-updated, so it is thrown away and
//! rebuilt from that copy, and the rebuilt heads are compared with the
//! heads recorded before the bad input. Equal heads prove the document is
//! the one every peer's sync state refers to; the offending peer alone is
//! disconnected.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::doc::Doc;
use crate::{ConnId, Engine, Event, Millis, PersistKind, RejectKind};

/// A copy of everything persisted (the last snapshot plus the appends
/// after it, without their signature blocks): the document as of the end
/// of the last persist, which a rebuild after a panic reloads.
#[derive(Debug, Default)]
pub(crate) struct Saved {
    bytes: Vec<u8>,
    /// Sorted heads of `bytes`.
    heads: Vec<automerge::ChangeHash>,
    appends_since_snapshot: u32,
    /// Bytes on disk (signature blocks included): the last snapshot, and
    /// the appends after it.
    snapshot_disk_bytes: usize,
    log_disk_bytes: usize,
}

/// Appends on disk since the last snapshot that always make the next
/// persist a snapshot, however small the snapshot (a new document's).
const MIN_LOG_BYTES: usize = 64 << 10;

impl Saved {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The heads of what was persisted, sorted.
    pub(crate) fn heads(&self) -> &[automerge::ChangeHash] {
        &self.heads
    }

    /// What was persisted now has these heads.
    pub(crate) fn set_heads(&mut self, mut heads: Vec<automerge::ChangeHash>) {
        heads.sort();
        self.heads = heads;
    }

    /// Keeps what a persist of `kind` wrote (`bytes`, without its
    /// signature block), `disk_bytes` long on disk.
    pub(crate) fn keep(&mut self, kind: PersistKind, bytes: &[u8], disk_bytes: usize) {
        match kind {
            // A snapshot replaces what was kept, and the memory it held
            // (`clear` would keep the largest log's capacity for good).
            PersistKind::Snapshot | PersistKind::Epoch { .. } => {
                self.bytes = bytes.to_vec();
                self.snapshot_disk_bytes = disk_bytes;
                self.log_disk_bytes = 0;
            }
            PersistKind::Append => {
                self.bytes.extend_from_slice(bytes);
                self.log_disk_bytes = self.log_disk_bytes.saturating_add(disk_bytes);
            }
        }
    }

    /// Counts one more persist of changes: true when it should be a full
    /// snapshot, which starts the count over. One is due every `every`
    /// persists, and as soon as the appends since the last one outweigh
    /// it on disk: what a node keeps (on disk, and this copy in memory)
    /// stays within twice a snapshot, and each byte of a snapshot is paid
    /// for by as many appended. With 200 nodes of 100 stories each, 512
    /// appends had grown to 1.3 MB a node beside snapshots a fraction of
    /// that.
    pub(crate) fn snapshot_due(&mut self, every: u32) -> bool {
        self.appends_since_snapshot += 1;
        let outweighed = self.log_disk_bytes > self.snapshot_disk_bytes.max(MIN_LOG_BYTES);
        let due = self.appends_since_snapshot >= every || outweighed;
        if due {
            self.appends_since_snapshot = 0;
        }
        due
    }

    /// A snapshot was written some other way (a new epoch's).
    pub(crate) fn snapshot_taken(&mut self) {
        self.appends_since_snapshot = 0;
    }
}

/// A token bucket of bytes and messages for one peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerBudget {
    bytes: u64,
    messages: u64,
    refilled_at: Millis,
}

impl PeerBudget {
    pub fn new(now: Millis, bytes_cap: u64, messages_cap: u64) -> PeerBudget {
        PeerBudget { bytes: bytes_cap, messages: messages_cap, refilled_at: now }
    }

    /// Charges one message of `len` bytes; `Err` says which budget ran out.
    pub fn charge(
        &mut self,
        now: Millis,
        len: usize,
        (bytes_per_sec, bytes_cap): (u64, u64),
        (messages_per_sec, messages_cap): (u64, u64),
    ) -> Result<(), String> {
        let elapsed_ms = now.saturating_sub(self.refilled_at);
        if elapsed_ms > 0 {
            self.refilled_at = now;
            let refill = |per_sec: u64| per_sec.saturating_mul(elapsed_ms) / 1_000;
            self.bytes = self.bytes.saturating_add(refill(bytes_per_sec)).min(bytes_cap);
            self.messages = self.messages.saturating_add(refill(messages_per_sec)).min(messages_cap);
        }
        let len = len as u64;
        if self.bytes < len {
            return Err(format!("over its budget of {bytes_per_sec} bytes/s"));
        }
        if self.messages == 0 {
            return Err(format!("over its budget of {messages_per_sec} messages/s"));
        }
        self.bytes -= len;
        self.messages -= 1;
        Ok(())
    }
}

/// Text of a caught panic's payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
}

impl Engine {
    /// Byte and message caps of a new peer's budget.
    pub(crate) fn budget_caps(&self) -> ((u64, u64), (u64, u64)) {
        let c = &self.config;
        let bytes_cap = c.peer_bytes_per_sec.saturating_add(c.max_message_bytes as u64);
        ((c.peer_bytes_per_sec, bytes_cap), (c.peer_messages_per_sec, c.peer_messages_per_sec.saturating_mul(2)))
    }

    /// Charges `len` bytes to the peer on `conn`; false if it was refused.
    pub(crate) fn charge_peer(&mut self, conn: ConnId, len: usize) -> bool {
        let (bytes, messages) = self.budget_caps();
        let now = self.now;
        let Some(c) = self.peers.conn_mut(conn) else { return false };
        match c.budget.charge(now, len, bytes, messages) {
            Ok(()) => true,
            Err(why) => {
                self.reject(conn, RejectKind::Budget, format!("peer is {why}"));
                false
            }
        }
    }

    /// Runs `f` (Automerge work on data from `conn`) and catches a panic.
    /// After a panic the peer is rejected and the document is rebuilt from
    /// what was persisted; `None` is returned.
    pub(crate) fn shielded<T>(&mut self, conn: ConnId, what: &str, f: impl FnOnce(&mut Engine) -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(v) => Some(v),
            Err(payload) => {
                let text = panic_text(payload.as_ref());
                // Persisting happens only at the end of an input, so these
                // are still the heads from before the bad message.
                let expected = self.saved.heads().to_vec();
                let verified = self.rebuild_document(&expected);
                self.reject(
                    conn,
                    RejectKind::Sync,
                    format!(
                        "automerge panicked in {what} on its data ({text}); document rebuilt from storage, heads {}",
                        if verified { "verified" } else { "DIFFER" }
                    ),
                );
                None
            }
        }
    }

    /// Replaces the in-memory document by one loaded from the persisted
    /// copy; true when its heads equal `expected`.
    pub(crate) fn rebuild_document(&mut self, expected: &[automerge::ChangeHash]) -> bool {
        let (actor, persisted) = (self.actor.clone(), self.saved.bytes());
        let mut doc = match catch_unwind(AssertUnwindSafe(|| Doc::load(actor, persisted))) {
            Ok(Ok(doc)) => doc,
            _ => {
                self.emit(Event::StorageCorrupt { error: "the persisted copy did not reload after a panic".into() });
                Doc::new(self.actor.clone())
            }
        };
        let epoch = doc.epoch();
        if epoch > 0 {
            doc.automerge().set_actor(self.actor_for(epoch));
        }
        let mut heads = doc.heads();
        heads.sort();
        let verified = heads == expected;
        self.doc = doc;
        // The index is rebuilt from scratch: nothing half-applied survives.
        self.reindex();
        self.doc.mark_persisted();
        if !verified {
            // Not the document peers' sync states describe: start them over.
            for c in self.peers.conns_mut() {
                c.restart_sync();
            }
        }
        verified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot is due once the appends since the last one outweigh it
    /// on disk (or every `every` persists), and the copy kept in memory
    /// holds only the last snapshot and what followed.
    #[test]
    fn a_snapshot_is_due_when_the_log_outweighs_it() {
        let mut saved = Saved::default();
        let snapshot = vec![1u8; 100 << 10];
        saved.keep(PersistKind::Snapshot, &snapshot, snapshot.len());
        let mut appends = 0;
        while !saved.snapshot_due(512) {
            saved.keep(PersistKind::Append, &[2u8; 10 << 10], 30 << 10);
            appends += 1;
        }
        // 100 KiB on disk is outweighed by the fourth append of 30 KiB.
        assert_eq!(appends, 4);
        assert_eq!(saved.bytes().len(), (100 << 10) + 4 * (10 << 10));
        saved.keep(PersistKind::Snapshot, &[3u8; 10], 10);
        assert_eq!(saved.bytes(), &[3u8; 10]);
        // A small snapshot: appends up to 64 KiB come first.
        let mut appends = 0;
        while !saved.snapshot_due(512) {
            saved.keep(PersistKind::Append, &[4u8; 100], 1 << 10);
            appends += 1;
        }
        assert_eq!(appends, 65);
        // And one every `every` persists, whatever the sizes.
        saved.keep(PersistKind::Snapshot, &snapshot, snapshot.len());
        assert!(!saved.snapshot_due(2));
        assert!(saved.snapshot_due(2));
    }

    use crate::{Command, CommandId, Config, Input, NodeId, Output, Stage};
    use automerge::transaction::Transactable;

    /// A panic in the middle of Automerge work leaves a half-made change in
    /// memory; recovery throws it away, proves the heads, and keeps every
    /// acknowledged story.
    #[test]
    fn a_panic_on_peer_data_rebuilds_the_document_from_storage() {
        let mut e = Engine::new(Config::default(), NodeId::new("me").unwrap(), 1, Millis(0));
        e.handle(Millis(0), Input::StorageLoaded { bytes: Vec::new() });
        for i in 0..5 {
            let command = Command::AddStory(crate::NewStory {
                id: None,
                title: format!("story {i}"),
                stage: Stage::Current,
                ..Default::default()
            });
            e.handle(Millis(1), Input::Command { id: CommandId(i), command });
        }
        let _ = e.drain_sync_persist();
        let heads = e.heads();
        let out: Option<()> = e.shielded(ConnId(7), "test", |e| {
            e.doc.automerge().put(automerge::ROOT, "half-applied", "junk").unwrap();
            panic!("boom");
        });
        assert!(out.is_none());
        assert_eq!(e.heads(), heads, "the half-made change is gone");
        assert_eq!(e.stories().count(), 5);
        assert!(e.index_drift().is_empty());
        e.finish_input();
        let outs: Vec<Output> = e.drain_sync_persist();
        let reason = outs.iter().find_map(|o| match o {
            Output::Event(Event::PeerRejected { conn: ConnId(7), reason, .. }) => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.as_deref().is_some_and(|r| r.contains("boom") && r.contains("heads verified")), "{reason:?}");
        assert!(!outs.iter().any(|o| matches!(o, Output::Persist { .. })), "nothing new to persist");
        // The node goes on: a new story persists and reads back.
        let command = Command::AddStory(crate::NewStory {
            id: None,
            title: "after".into(),
            stage: Stage::Current,
            ..Default::default()
        });
        e.handle(Millis(2), Input::Command { id: CommandId(9), command });
        assert_eq!(e.stories().count(), 6);
    }

    #[test]
    fn budget_refills_with_time_and_caps_bursts() {
        let bytes = (1_000, 1_500);
        let msgs = (10, 20);
        let mut b = PeerBudget::new(Millis(0), 1_500, 20);
        assert!(b.charge(Millis(0), 1_500, bytes, msgs).is_ok(), "a full burst");
        assert!(b.charge(Millis(0), 1, bytes, msgs).unwrap_err().contains("bytes/s"));
        assert!(b.charge(Millis(100), 100, bytes, msgs).is_ok(), "100 ms refill 100 bytes");
        assert!(b.charge(Millis(100), 1, bytes, msgs).is_err());
        let mut b = PeerBudget::new(Millis(0), 1_500, 20);
        for _ in 0..20 {
            b.charge(Millis(0), 1, bytes, msgs).unwrap();
        }
        assert!(b.charge(Millis(0), 1, bytes, msgs).unwrap_err().contains("messages/s"));
        assert!(b.charge(Millis(1_000_000), 1, bytes, msgs).is_ok(), "refill stops at the cap");
        assert_eq!(b.bytes, 1_499);
        assert_eq!(b.messages, 19);
    }
}
