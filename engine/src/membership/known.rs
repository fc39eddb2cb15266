//! The keys a node believes: certified by the cluster CA for a node id,
//! and not revoked. Revocations are kept for good: a revoked key is never
//! believed again, whatever certificate comes with it.

use std::collections::{BTreeMap, BTreeSet};

use crate::NodeId;
use crate::identity::PublicKey;

#[derive(Debug, Default)]
pub(crate) struct Members {
    /// Believed keys by node; a node with none has no entry.
    keys: BTreeMap<NodeId, BTreeSet<PublicKey>>,
    /// Keys with a valid CA revocation in the document.
    revoked: BTreeSet<(NodeId, PublicKey)>,
    /// Signed entries of the document whose CA signature failed, so a
    /// forged entry costs one check, not one per merge (bounded: past it
    /// the set starts over, and a forged entry costs a check again).
    refused: BTreeSet<SignedEntry>,
}

/// A signed entry as written: enrolment (`true`) or revocation, the node,
/// the key and the CA's signature.
pub(crate) type SignedEntry = (bool, NodeId, PublicKey, crate::identity::Sig);

/// Refused signed entries remembered at most.
const MAX_REFUSED: usize = 4_096;

impl Members {
    pub(crate) fn is_revoked(&self, node: &NodeId, key: &PublicKey) -> bool {
        self.revoked.contains(&(node.clone(), *key))
    }

    /// Any key of `node` was ever revoked.
    pub(crate) fn ever_revoked(&self, node: &NodeId) -> bool {
        self.revoked.iter().any(|(n, _)| n == node)
    }

    /// `entry` failed its CA check before.
    pub(crate) fn was_refused(&self, entry: &SignedEntry) -> bool {
        self.refused.contains(entry)
    }

    pub(crate) fn refuse(&mut self, entry: SignedEntry) {
        if self.refused.len() >= MAX_REFUSED {
            self.refused.clear();
        }
        self.refused.insert(entry);
    }

    pub(crate) fn believes(&self, node: &NodeId, key: &PublicKey) -> bool {
        self.keys.get(node).is_some_and(|k| k.contains(key))
    }

    /// Believed keys of `node`, if any.
    pub(crate) fn keys_of(&self, node: &NodeId) -> Option<&BTreeSet<PublicKey>> {
        self.keys.get(node)
    }

    /// A node with at least one believed key.
    pub(crate) fn knows(&self, node: &NodeId) -> bool {
        self.keys.contains_key(node)
    }

    /// Nodes with a believed key.
    pub(crate) fn count(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn keys(&self) -> &BTreeMap<NodeId, BTreeSet<PublicKey>> {
        &self.keys
    }

    pub(crate) fn revoked(&self) -> &BTreeSet<(NodeId, PublicKey)> {
        &self.revoked
    }

    /// Believes `key` for `node` (its certificate checked by the caller);
    /// true when it is new. A revoked key is never believed again, however
    /// it comes back (a handshake begun before the revocation arrived).
    pub(crate) fn believe(&mut self, node: &NodeId, key: PublicKey) -> bool {
        if self.is_revoked(node, &key) {
            return false;
        }
        self.keys.entry(node.clone()).or_default().insert(key)
    }

    /// Revokes `key` of `node` for good; true when it was believed and
    /// `node` has no believed key left (it is dead to the cluster now).
    pub(crate) fn revoke(&mut self, node: &NodeId, key: PublicKey) -> bool {
        self.revoked.insert((node.clone(), key));
        let believed = self.keys.get_mut(node).is_some_and(|k| k.remove(&key));
        if self.keys.get(node).is_some_and(BTreeSet::is_empty) {
            self.keys.remove(node);
        }
        assert!(!self.believes(node, &key), "a revoked key of {node} still believed");
        believed && !self.knows(node)
    }

    /// No node has an empty key set, and no believed key is revoked.
    pub(crate) fn check(&self) {
        for (node, keys) in &self.keys {
            assert!(!keys.is_empty(), "{node} listed without a key");
            for key in keys {
                assert!(!self.is_revoked(node, key), "{node} has a revoked key believed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_revocation_is_for_good_and_kills_only_the_last_key() {
        let mut m = Members::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(m.believe(&n("x"), a));
        assert!(!m.believe(&n("x"), a), "not new the second time");
        assert!(m.believe(&n("x"), b));
        assert!(!m.revoke(&n("x"), a), "one key left: not dead");
        assert!(m.knows(&n("x")) && m.is_revoked(&n("x"), &a));
        assert!(m.revoke(&n("x"), b), "the last key: dead");
        assert!(!m.knows(&n("x")) && m.ever_revoked(&n("x")));
        assert!(!m.revoke(&n("x"), b), "revoked twice: nothing more dies");
        assert!(!m.believe(&n("x"), b) && !m.knows(&n("x")), "a revoked key offered again is not believed");
        m.check();
    }
}
