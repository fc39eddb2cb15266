//! The pieces both simulators share (the engine's in-process harness in
//! `engine/tests/harness` and the madsim chaos simulation in `sim/`), so
//! neither keeps its own copy: node naming, the simulated disk, the trace
//! hash, the fake agent, the model of the git remote, and the one dispatch
//! of outputs to a simulated world (`world.rs`). Pure and deterministic, like the
//! engine; no driver in production uses it.

pub mod agent;
pub mod hostile_doc;
pub mod remote;
pub mod signed;
pub mod trunk;
pub mod world;

pub use agent::{AgentModel, FakeRun};
pub use signed::{dev_signed_sync, signed_sync};

use crate::hash::mix64;
use crate::{NodeId, PersistKind};

/// Node `i` of a simulated cluster: 0 is the rendezvous.
pub fn node_name(i: usize) -> NodeId {
    let s = if i == 0 { "rendezvous".to_owned() } else { format!("agent-{i:03}") };
    NodeId::new(s).expect("simulated node ids are valid")
}

/// A node's disk: the last snapshot and the appends after it, applied as
/// the production storage applies them (all at once: a simulated write is
/// durable when made).
#[derive(Debug, Default, Clone)]
pub struct Disk {
    chunks: Vec<Vec<u8>>,
    /// Cold storage: past epochs' documents, by epoch.
    pub archives: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Cold storage is written nowhere: for a simulated node whose cold
    /// storage nothing reads (a real node keeps it on disk, a simulated
    /// one in memory: 200 agents each holding every past epoch's document
    /// is most of what a 200 × 10,000 simulation grows by).
    pub forget_archives: bool,
}

impl Disk {
    pub fn apply(&mut self, kind: PersistKind, bytes: Vec<u8>) {
        match kind {
            PersistKind::Snapshot => self.chunks.clear(),
            PersistKind::Epoch { epoch } => {
                self.archive(epoch);
                self.chunks.clear();
            }
            PersistKind::Append => {}
        }
        self.chunks.push(bytes);
    }

    /// A crash in the middle of moving to epoch `epoch`: the old document
    /// went to cold storage, the new one never landed.
    pub fn apply_torn_epoch(&mut self, epoch: u64) {
        self.archive(epoch);
    }

    /// The document before epoch `epoch` goes to cold storage.
    fn archive(&mut self, epoch: u64) {
        if !self.forget_archives {
            self.archives.insert(epoch.saturating_sub(1), self.load());
        }
    }

    /// A crash while replacing the snapshot, after the new one was renamed
    /// into place and before the log was cut: the new snapshot, then the old
    /// log (whose changes it already holds).
    pub fn apply_snapshot_over_log(&mut self, snapshot: Vec<u8>) {
        let log = if self.chunks.is_empty() { Vec::new() } else { self.chunks.split_off(1) };
        self.chunks = std::iter::once(snapshot).chain(log).collect();
    }

    /// What a restart loads.
    pub fn load(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The bytes held (for size checks).
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// The bytes of a document holding `stories`, each with a title, a body
/// and a change per stage it went through (about 7 changes a story, as a
/// pipeline makes), as a past epoch's document in cold storage holds
/// them: for cold-storage tests and measurements.
pub fn archive_doc(stories: &[crate::StoryId]) -> Vec<u8> {
    use crate::{Stage, StoryState, Token};
    let mut doc = crate::doc::Doc::new(automerge::ActorId::from(b"huskies-testkit-archive".to_vec()));
    for id in stories {
        let view = crate::StoryView {
            title: format!("story {id}"),
            priority: 0,
            created: crate::UnixMs(0),
            state: StoryState::new(Stage::Backlog),
            concurrent: 1,
        };
        doc.add_story(id, &view, "what was asked, and what was done");
        for (n, stage) in
            [Stage::Current, Stage::Qa, Stage::Merge, Stage::Done, Stage::Archived].into_iter().enumerate()
        {
            doc.put_state(id, &StoryState { token: Token(n as u64 + 1), ..StoryState::new(stage) });
        }
    }
    doc.automerge().save()
}

/// A hash folded over every line of a run's trace: two runs of one seed
/// must end with the same value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceHash(pub u64);

impl TraceHash {
    pub fn fold(&mut self, line: &str) {
        self.fold_parts(&[line.as_bytes()]);
    }

    /// Folds a line given in parts (bytes as they are: formatting a
    /// message's bytes with `{:?}` cost a fifth of a small simulation).
    ///
    /// Eight bytes a step: a trace folds every byte every node sends, and
    /// a byte-wise hash of them was 3% of a 50-node run. Not a hash to
    /// withstand anyone: it tells two runs of one seed apart, that is all.
    pub fn fold_parts(&mut self, parts: &[&[u8]]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(31);
        let mut h = self.0;
        for part in parts {
            let mut words = part.chunks_exact(8);
            for w in &mut words {
                h = step(h, u64::from_le_bytes(w.try_into().expect("chunks of eight")));
            }
            let mut tail = [0u8; 8];
            tail[..words.remainder().len()].copy_from_slice(words.remainder());
            // The length ends the part: ("ab", "c") and ("a", "bc") differ.
            h = step(step(h, u64::from_le_bytes(tail)), part.len() as u64 | 1 << 63);
        }
        self.0 = mix64(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_keeps_the_last_snapshot_and_what_follows() {
        let mut d = Disk::default();
        d.apply(PersistKind::Append, vec![1]);
        d.apply(PersistKind::Snapshot, vec![2, 3]);
        d.apply(PersistKind::Append, vec![4]);
        assert_eq!(d.load(), vec![2, 3, 4]);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn trace_hash_depends_on_every_line_and_their_order() {
        let (mut a, mut b) = (TraceHash::default(), TraceHash::default());
        a.fold("x");
        a.fold("y");
        b.fold("y");
        b.fold("x");
        assert_ne!(a, b);
        // Where a line's parts split counts, and so does every byte.
        let (mut c, mut d) = (TraceHash::default(), TraceHash::default());
        c.fold_parts(&[b"ab", b"c"]);
        d.fold_parts(&[b"a", b"bc"]);
        assert_ne!(c, d);
        let (mut e, mut f) = (TraceHash::default(), TraceHash::default());
        e.fold_parts(&[b"0123456789abcdef0"]);
        f.fold_parts(&[b"0123456789abcdeF0"]);
        assert_ne!(e, f);
        let (mut g, mut z) = (TraceHash::default(), TraceHash::default());
        g.fold_parts(&[b"\0"]);
        z.fold_parts(&[b""]);
        assert_ne!(g, z, "a zero byte is not nothing");
        assert_eq!(node_name(0).as_str(), "rendezvous");
        assert_eq!(node_name(7).as_str(), "agent-007");
    }
}
