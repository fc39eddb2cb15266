//! What storage has not seen yet, and the bytes to append for it.
//!
//! Automerge 0.12 keeps no change's bytes: `save_incremental` rebuilds
//! every change since the last save from the op set (`ChangeCollector`),
//! which was 5.3% of a 50-node scale run, all of it for changes a peer had
//! just sent us as bytes. Those bytes were checked (their signature is over
//! their hash) and applied as they are, so they are what goes to storage;
//! only our own changes, and any whose bytes we no longer hold, are rebuilt
//! as before. Which changes an append holds is still Automerge's answer
//! (every change not covered by the heads storage holds), so nothing is
//! left out when bytes are missing: they are rebuilt instead.

use std::collections::BTreeMap;

use automerge::ChangeHash;

use super::Doc;

/// Kept by [`Doc`]: where storage stands, and the bytes in hand.
#[derive(Default)]
pub(super) struct Unsaved {
    /// The heads of what storage holds (none: nothing yet).
    cursor: Vec<ChangeHash>,
    /// Bytes of changes peers sent since the last persist, by hash.
    sent: BTreeMap<ChangeHash, Vec<u8>>,
}

impl Doc {
    /// The bytes of a change a peer sent, checked and about to apply: the
    /// next append takes them instead of rebuilding the change.
    pub fn keep_sent_change(&mut self, hash: ChangeHash, bytes: Vec<u8>) {
        self.unsaved.sent.insert(hash, bytes);
    }

    /// Every change storage lacks, as one append (empty: none). Bytes a
    /// peer sent are reused; a change queued for dependencies not yet here
    /// is not applied, so not in it, and rebuilt once it applies.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let hashes: Vec<ChangeHash> =
            self.am.get_changes_meta(&self.unsaved.cursor).into_iter().map(|m| m.hash).collect();
        let mut bytes = Vec::new();
        for hash in &hashes {
            match self.unsaved.sent.remove(hash) {
                Some(sent) => bytes.extend_from_slice(&sent),
                None => match self.am.get_change_by_hash(hash) {
                    Some(change) => bytes.extend_from_slice(change.raw_bytes()),
                    // A change the document lists and cannot rebuild alone
                    // (Automerge's doing, never seen): Automerge's own append.
                    None => {
                        bytes = self.am.save_after(&self.unsaved.cursor);
                        break;
                    }
                },
            }
        }
        self.unsaved.sent.clear();
        if !hashes.is_empty() {
            self.unsaved.cursor = self.am.get_heads();
        }
        bytes
    }

    /// The whole document, compacted, for a snapshot that replaces what
    /// storage held.
    pub fn save_snapshot(&mut self) -> Vec<u8> {
        let bytes = self.am.save();
        self.unsaved.cursor = self.am.get_heads();
        self.unsaved.sent.clear();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{doc, story};

    /// What a node appends, from a peer's bytes or rebuilt, loads into the
    /// same document, byte for byte what Automerge's own append holds.
    #[test]
    fn appends_hold_what_automerge_would_save() {
        let mut a = doc("a");
        let mut b = doc("b");
        let mut stored = b.save_snapshot();
        let mut reference = b.am.clone();
        reference.save();
        let mut synced = a.am.get_heads();
        for k in 0..6 {
            story(&mut a, &format!("s{k}"));
            let sent: Vec<_> = a.am.get_changes(&synced).into_iter().map(|c| c.raw_bytes().to_vec()).collect();
            synced = a.am.get_heads();
            if k % 2 == 0 {
                // Half the time the peer's bytes are in hand.
                for bytes in &sent {
                    let hash = automerge::Change::from_bytes(bytes.clone()).unwrap().hash();
                    b.keep_sent_change(hash, bytes.clone());
                }
            }
            b.am.load_incremental(&sent.concat()).unwrap();
            reference.load_incremental(&sent.concat()).unwrap();
            if k == 3 {
                story(&mut b, "own");
                let own = b.am.get_last_local_change().unwrap();
                reference.apply_changes([own]).unwrap();
            }
            let append = b.save_incremental();
            assert_eq!(append, reference.save_incremental(), "append {k}");
            stored.extend(append);
            assert!(b.save_incremental().is_empty(), "nothing twice");
        }
        #[allow(clippy::disallowed_methods)] // only loaded into
        let mut loaded = automerge::AutoCommit::new();
        loaded.load_incremental(&stored).unwrap();
        assert_eq!(loaded.get_heads(), b.am.get_heads());
    }
}
