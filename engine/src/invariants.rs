//! Invariants checked after every input in debug builds (every test and
//! simulation): a broken one panics at the input that broke it, not at the
//! end of a run when an oracle notices its consequences.
//!
//! The checks after each input cost O(1) or O(what the input touched); the
//! full comparison of the index with the document is O(stories), so it runs
//! every [`FULL_CHECK_EVERY`] inputs.

use crate::Engine;

/// Inputs between two full index checks.
const FULL_CHECK_EVERY: u64 = 1_024;

/// Counts inputs, so the costly whole-index check runs every
/// [`FULL_CHECK_EVERY`] of them.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    inputs_handled: u64,
}

impl Checks {
    /// One more input; whether the full check is due.
    fn full_due(&mut self) -> bool {
        self.inputs_handled += 1;
        self.inputs_handled.is_multiple_of(FULL_CHECK_EVERY)
    }
}

impl Engine {
    /// After an input: all its outputs released, the mesh within its cap,
    /// bounded maps within their bounds, and now and then the whole index
    /// equal to a fresh read of the document.
    pub(crate) fn check_invariants(&mut self) {
        self.outbox.check_invariants();
        let members = &self.members;
        self.peers.check(self.config.max_peers, self.config.max_mesh_peers, |n| members.knows(n));
        self.members.check();
        // Liveness records: nodes heard (their beats were verified against a
        // key) plus grace periods of current holders, nothing else.
        let holders = self.index.holders().count();
        assert!(self.liveness.heard_count() <= self.members.count(), "beats heard from nodes without a key");
        assert!(self.liveness.chains_known() <= self.members.count(), "beat chains of nodes without a key");
        assert!(self.liveness.len() <= self.members.count() + holders, "{} liveness records", self.liveness.len());
        self.claims.check(self.index.len());
        self.check_train();
        if self.checks.full_due() {
            self.check_index();
        }
    }

    /// The index against a fresh read of the whole document, and its
    /// derived sets against its entries.
    pub(crate) fn check_index(&mut self) {
        let drift = self.index_drift();
        assert!(drift.is_empty(), "index differs from the document for {drift:?}");
        self.index.check();
    }
}
