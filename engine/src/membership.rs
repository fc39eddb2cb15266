//! Membership: which node keys we believe, and revocations.
//!
//! A key is believed when the cluster CA signed it for that node id (its
//! certificate, in the node's record or its handshake) and no CA-signed
//! revocation of it is in the document. Revoking a node hangs up its
//! connections on every node that learns of it, makes it dead at once (its
//! stories are reclaimed on the next scan, without waiting for the claim
//! timeout), and stops its own runs if it hears of it itself.

use crate::doc::{NodeRecord, Revocation};
use crate::identity::{self, PublicKey};
use crate::{CommandError, Engine, Event, NodeId, Output, Reply};

impl Engine {
    /// Is `key` a believed key of `node`?
    pub(crate) fn is_revoked(&self, node: &NodeId, key: &PublicKey) -> bool {
        self.revoked.contains(&(node.clone(), *key))
    }

    /// Records a node's record, and its key when the certificate checks.
    pub(crate) fn learn_node(&mut self, id: NodeId, rec: NodeRecord) {
        if let Some(cert) = &rec.cert
            && identity::verify_cert(&self.creds.ca, &id, cert)
            && !self.is_revoked(&id, &cert.key)
        {
            self.learn_key(&id, cert.key);
        }
        self.nodes.insert(id, rec);
    }

    pub(crate) fn learn_key(&mut self, id: &NodeId, key: PublicKey) {
        if self.keys.insert(id.clone(), key) != Some(key) {
            // A new, unrevoked key: a node that re-enrolled after a
            // revocation of its old key lives again.
            self.liveness.unrevoke(id);
        }
    }

    /// Reads the revocations in the document and applies new valid ones.
    pub(crate) fn absorb_revocations(&mut self) {
        for r in self.doc.read_revocations() {
            if self.is_revoked(&r.node, &r.key) || !identity::verify_revocation(&self.creds.ca, &r.node, &r.key, &r.sig)
            {
                continue;
            }
            self.apply_revocation(r.node, r.key);
        }
    }

    fn apply_revocation(&mut self, node: NodeId, key: PublicKey) {
        self.revoked.insert((node.clone(), key));
        let current = self.keys.get(&node) == Some(&key);
        if current {
            self.keys.remove(&node);
            self.liveness.revoke(&node);
            self.dead.insert(node.clone());
            self.relay.remove(&node);
            // Sooner than the next scan: the revoked node's stories are
            // free for the taking now.
            self.next_scan_at = self.now;
        }
        let conns: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer_key == Some(key) && c.node.as_ref() == Some(&node))
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.reject(conn, format!("node {node} was revoked"));
        }
        if node == self.node && key == self.creds.cert.key {
            self.self_revoked = true;
            let runs = std::mem::take(&mut self.runs);
            for (story, run) in runs {
                if run.phase == crate::engine::Phase::Running {
                    self.pending.push(Output::StopRun { story, token: run.token });
                }
            }
        }
        self.emit(Event::NodeRevoked { node });
    }

    /// Signs and writes a revocation of `node`'s current key. Only a node
    /// holding the CA secret (the server) can.
    pub(crate) fn revoke_node(&mut self, node: NodeId) -> Result<Reply, CommandError> {
        let Some(ca_secret) = self.creds.ca_secret else { return Err(CommandError::NotAuthority) };
        // The key it proved to us, else the one its record certifies.
        let key = self.keys.get(&node).copied().or_else(|| {
            let cert = self.nodes.get(&node).and_then(|r| r.cert)?;
            identity::verify_cert(&self.creds.ca, &node, &cert).then_some(cert.key)
        });
        let Some(key) = key else { return Err(CommandError::UnknownNode(node)) };
        if node == self.node {
            return Err(CommandError::RevokeSelf);
        }
        if !self.is_revoked(&node, &key) {
            let sig = identity::sign_revocation(&ca_secret, &node, &key);
            self.doc.put_revocation(&Revocation { node: node.clone(), key, sig });
            self.doc.skip_touched();
            self.dirty = true;
            self.apply_revocation(node.clone(), key);
        }
        Ok(Reply::Revoked { node })
    }
}
