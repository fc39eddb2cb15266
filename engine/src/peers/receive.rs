//! Receiving a sync message: Automerge 0.12's `receive_sync_message`, step
//! for step, but for the one step that walked the whole history.
//!
//! Automerge trims the hashes it sent to a peer (`State::sent_hashes`) to
//! those the peer's heads do not cover with `ChangeGraph::remove_ancestors`:
//! a depth-first walk, with a `BTreeSet` insert per change, over every
//! ancestor of the peer's heads, on every message, whatever is left to
//! trim. Within an epoch of a few thousand changes that walk was the
//! largest single cost of a node (16% of a 5-node run, 28% of a 20-node
//! claim storm). Automerge answers the same question with a vector clock
//! in `get_changes_meta`, from cached clocks and in time linear in the
//! number of actors plus the answer; this module asks it that way.
//!
//! Everything else is Automerge's own code path (`load_incremental` is the
//! call its sync makes, patches included), and a test below holds the
//! resulting [`sync::State`] equal to Automerge's on random histories. To
//! upstream: `Automerge::filter_changes` could do the same with
//! `ChangeGraph::seq_clock_for_heads`, as automerge PR #377 once did.

use std::collections::BTreeSet;

use automerge::{AutoCommit, AutomergeError, ChangeHash, sync};

/// Applies `msg` to `doc` and updates the link's sync state, as
/// `SyncDoc::receive_sync_message` does for a message without flags. The
/// flags are ignored, as `peers.rs` drops them anyway (so Automerge takes
/// every peer for a v1 speaker): their handling is not reproduced here.
pub fn receive_sync_message(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    msg: sync::Message,
) -> Result<(), AutomergeError> {
    state.in_flight = false;
    let before_heads = doc.get_heads();
    let sync::Message { heads, need, have, changes, .. } = msg;
    let changes_is_empty = changes.is_empty();
    if !changes_is_empty && !state.read_only {
        let bytes: Vec<u8> = changes.iter().flatten().copied().collect();
        doc.load_incremental(&bytes)?;
        crate::doc::forget_patches(doc);
        let after: BTreeSet<ChangeHash> = doc.get_heads().into_iter().collect();
        state.shared_heads = advance_heads(&before_heads, &after, &state.shared_heads);
    }
    let known: Vec<ChangeHash> = heads.iter().filter(|h| has_change(doc, h)).copied().collect();
    forget_covered(doc, &known, &mut state.sent_hashes);
    if changes_is_empty && heads == before_heads {
        state.last_sent_heads.clone_from(&heads);
    }
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        // A peer with no heads lost its data: everything goes again.
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = BTreeSet::new();
        }
    } else {
        let mut shared: BTreeSet<ChangeHash> = state.shared_heads.iter().copied().collect();
        shared.extend(known);
        state.shared_heads = shared.into_iter().collect();
    }
    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(())
}

fn has_change(doc: &mut AutoCommit, hash: &ChangeHash) -> bool {
    doc.get_change_meta_by_hash(hash).is_some()
}

/// Drops from `sent` every change the heads `known` (all in `doc`) cover:
/// the peer has those. Kept: the changes `doc` holds past those heads. A
/// sent hash `doc` no longer holds (it was rebuilt from storage) is
/// dropped too, where Automerge would keep it; dropping only ever lets a
/// change be offered again, which the bloom filter then decides.
fn forget_covered(doc: &mut AutoCommit, known: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    // No heads cover nothing (and `get_changes_meta(&[])` is every change).
    if known.is_empty() || sent.is_empty() {
        return;
    }
    let past: BTreeSet<ChangeHash> = doc.get_changes_meta(known).into_iter().map(|m| m.hash).collect();
    sent.retain(|h| past.contains(h));
}

/// The heads both sides now share, after changes from the peer moved ours
/// from `before` to `after`: our new heads (the peer sent their history)
/// and the old shared heads still among ours. Automerge's `advance_heads`.
fn advance_heads(before: &[ChangeHash], after: &BTreeSet<ChangeHash>, shared: &[ChangeHash]) -> Vec<ChangeHash> {
    let new = after.iter().filter(|h| !before.contains(h));
    let kept = shared.iter().filter(|h| after.contains(h));
    let advanced: BTreeSet<ChangeHash> = new.chain(kept).copied().collect();
    advanced.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};
    use proptest::prelude::*;

    /// One of two peers' moves: `Some(k)` writes `k` local changes, `None`
    /// sends a sync message to the other side.
    fn step() -> impl Strategy<Value = (bool, Option<u8>)> {
        (any::<bool>(), prop_oneof![Just(None), (1u8..4).prop_map(Some)])
    }

    struct Side {
        doc: AutoCommit,
        state: sync::State,
    }

    // The actor is set at once, fixed per side: both pairs make the same changes.
    #[allow(clippy::disallowed_methods)]
    fn side(actor: u8) -> Side {
        Side { doc: AutoCommit::new().with_actor(ActorId::from(vec![actor; 4])), state: sync::State::new() }
    }

    fn write(s: &mut Side, k: u8, n: &mut u64) {
        for _ in 0..k {
            *n += 1;
            s.doc.put(ROOT, format!("k{}", *n % 7), *n).unwrap();
            // A fixed time: both pairs must make the same changes.
            s.doc.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        }
    }

    fn same_state(a: &sync::State, b: &sync::State) -> bool {
        a.shared_heads == b.shared_heads
            && a.last_sent_heads == b.last_sent_heads
            && a.their_heads == b.their_heads
            && a.their_need == b.their_need
            && a.sent_hashes == b.sent_hashes
            && a.in_flight == b.in_flight
            && a.their_have.as_ref().map(|h| h.len()) == b.their_have.as_ref().map(|h| h.len())
    }

    proptest! {
        /// Two pairs of peers take the same moves; one pair receives with
        /// Automerge, the other with this module. Their documents and sync
        /// states stay equal, and the messages they send too.
        #[test]
        fn receives_as_automerge_does(steps in proptest::collection::vec(step(), 1..60)) {
            let (mut am, mut ours) = ([side(1), side(2)], [side(1), side(2)]);
            let mut n = 0;
            for (from_a, op) in steps {
                let (from, to) = if from_a { (0, 1) } else { (1, 0) };
                match op {
                    Some(k) => {
                        let mut m = n;
                        write(&mut am[from], k, &mut m);
                        write(&mut ours[from], k, &mut n);
                    }
                    None => {
                        let sent_am = am[from].doc.sync().generate_sync_message(&mut am[from].state);
                        let sent_ours = ours[from].doc.sync().generate_sync_message(&mut ours[from].state);
                        prop_assert_eq!(sent_am.as_ref().map(|m| m.clone().encode()), sent_ours.as_ref().map(|m| m.clone().encode()));
                        if let (Some(mut x), Some(mut y)) = (sent_am, sent_ours) {
                            // As peers.rs does on both ends.
                            (x.flags, y.flags) = (None, None);
                            let [a0, a1] = &mut am;
                            let r = if to == 1 { a1 } else { a0 };
                            r.doc.sync().receive_sync_message(&mut r.state, x).unwrap();
                            let [o0, o1] = &mut ours;
                            let r = if to == 1 { o1 } else { o0 };
                            receive_sync_message(&mut r.doc, &mut r.state, y).unwrap();
                        }
                    }
                }
                for i in 0..2 {
                    prop_assert_eq!(am[i].doc.get_heads(), ours[i].doc.get_heads());
                    prop_assert!(same_state(&am[i].state, &ours[i].state), "sync states differ on side {}", i);
                }
            }
        }
    }
}
