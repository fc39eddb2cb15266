//! Membership: which node keys we believe, enrollments and revocations.
//!
//! A key is believed when the cluster CA signed it for that node id (its
//! certificate: in the enrollment the server writes when the node joins, in
//! the node's record, or in its handshake) and no CA-signed revocation of
//! it is in the document. A node may have several believed keys (it joined
//! again); its heartbeats may be signed by any of them. Revoking a node hangs up its
//! connections on every node that learns of it, makes it dead at once (its
//! stories are reclaimed on the next scan, without waiting for the claim
//! timeout), and stops its own runs if it hears of it itself.

use crate::doc::{NodeRecord, Signed, SignedKind};
use crate::identity::Cert;
use crate::identity::{self, PublicKey};
use crate::{CommandError, Engine, Event, NodeId, RejectKind, Reply};

mod known;

pub(crate) use known::Members;

impl Engine {
    /// Is `key` a believed key of `node`?
    pub(crate) fn is_revoked(&self, node: &NodeId, key: &PublicKey) -> bool {
        self.members.is_revoked(node, key)
    }

    /// Records a node's record, and its key when the certificate checks.
    pub(crate) fn learn_node(&mut self, id: NodeId, rec: NodeRecord) {
        if let Some(cert) = &rec.cert
            && identity::verify_cert(&self.creds.ca, &id, cert)
            && !self.is_revoked(&id, &cert.key)
        {
            self.learn_key(&id, cert.key);
        }
        self.index.put_node(id.clone(), Some(rec));
        assert!(self.index.node(&id).is_some());
    }

    pub(crate) fn learn_key(&mut self, id: &NodeId, key: PublicKey) {
        if self.members.believe(id, key) {
            // A new, unrevoked key: a node that re-enrolled after a
            // revocation of its old key lives again.
            self.liveness.unrevoke(id);
        }
    }

    /// Reads the enrollments and revocations in the document and applies
    /// the new valid ones (enrollments first, so a revocation of a key
    /// enrolled in the same merge wins).
    pub(crate) fn absorb_signed(&mut self) {
        for Signed { kind, node, key, sig } in self.doc.read_signed() {
            // Checked once: a key already believed or revoked was proven,
            // and an entry that failed stays refused. Checking every entry
            // on every merge cost N signature checks per change per node:
            // 57% of all CPU with 200 agents on one machine.
            let enrolled = kind == SignedKind::Enrolled;
            if self.is_revoked(&node, &key) || (enrolled && self.members.believes(&node, &key)) {
                continue;
            }
            let entry = (enrolled, node, key, sig);
            if self.members.was_refused(&entry) {
                continue;
            }
            let (_, node, key, sig) = entry;
            let valid = match kind {
                SignedKind::Enrolled => identity::verify_cert(&self.creds.ca, &node, &Cert { key, sig }),
                SignedKind::Revoked => identity::verify_revocation(&self.creds.ca, &node, &key, &sig),
            };
            match (valid, kind) {
                (false, _) => self.members.refuse((enrolled, node, key, sig)),
                (true, SignedKind::Enrolled) => self.learn_key(&node, key),
                (true, SignedKind::Revoked) => self.apply_revocation(node, key),
            }
        }
    }

    /// Records, at the server, that `node` joined with `cert`: every node
    /// learns the key before the node connects, and it can be revoked even
    /// if it never does.
    pub(crate) fn enroll_node(&mut self, node: NodeId, cert: Cert) -> Result<Reply, CommandError> {
        if crate::schema::is_reserved(&node) {
            return Err(CommandError::ReservedNodeId(node));
        }
        if !identity::verify_cert(&self.creds.ca, &node, &cert) {
            return Err(CommandError::BadCertificate(node));
        }
        let known = self.members.believes(&node, &cert.key);
        if !known && !self.is_revoked(&node, &cert.key) {
            let entry = Signed { kind: SignedKind::Enrolled, node: node.clone(), key: cert.key, sig: cert.sig };
            self.doc.put_signed(&entry);
            self.learn_key(&node, cert.key);
        }
        assert!(self.is_revoked(&node, &cert.key) || self.members.believes(&node, &cert.key));
        Ok(Reply::Enrolled { node })
    }

    fn apply_revocation(&mut self, node: NodeId, key: PublicKey) {
        // Dead at once when no believed key is left.
        if self.members.revoke(&node, key) {
            self.liveness.revoke(&node);
            self.liveness.mark_dead(&node);
            self.peers.drop_relay(&node);
            // Sooner than the next scan: the revoked node's stories are
            // free for the taking now.
            self.scan.run_now(self.now);
            // Peers that still lack some of its changes could never get
            // them now (signing.rs): a new epoch leaves them behind.
            self.epochs.want_cut();
        }
        let conns: Vec<_> = self
            .peers
            .conns()
            .filter(|(_, c)| c.peer_key == Some(key) && c.node.as_ref() == Some(&node))
            .map(|(id, _)| id)
            .collect();
        for conn in conns {
            self.reject(conn, RejectKind::Revoked, format!("node {node} was revoked"));
        }
        if node == self.node && key == self.creds.cert.key {
            self.lifecycle = crate::engine::Lifecycle::Revoked;
            self.drop_all_runs();
        }
        self.emit(Event::NodeRevoked { node });
    }

    /// Signs and writes a revocation of every believed key of `node`. Only
    /// a node holding the CA secret (the server) can.
    pub(crate) fn revoke_node(&mut self, node: NodeId) -> Result<Reply, CommandError> {
        let Some(ca_secret) = self.creds.ca_secret else { return Err(CommandError::NotAuthority) };
        if node == self.node {
            return Err(CommandError::RevokeSelf);
        }
        let keys = self.members.keys_of(&node).cloned().unwrap_or_default();
        if keys.is_empty() && !self.members.ever_revoked(&node) {
            return Err(CommandError::UnknownNode(node));
        }
        for key in keys {
            let sig = identity::sign_revocation(&ca_secret, &node, &key);
            self.doc.put_signed(&Signed { kind: SignedKind::Revoked, node: node.clone(), key, sig });
            self.apply_revocation(node.clone(), key);
        }
        Ok(Reply::Revoked { node })
    }
}
