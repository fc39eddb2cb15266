//! Sync envelopes signed as an honest peer signs them (`signing.rs`), for
//! peers that speak the protocol without an engine: benches, hostile-peer
//! tests and fuzzers.

use crate::NodeId;

/// A sync envelope from a peer that speaks the protocol without an engine
/// (benches, hostile-peer tests): every change in `msg` signed with
/// `creds` as `node`'s. Its actors must name `node` (`node ‖ 0 ‖ …`), or
/// an engine refuses them.
pub fn signed_sync(node: &NodeId, creds: &crate::Credentials, msg: automerge::sync::Message) -> Vec<u8> {
    use crate::wire::{ChangeSigs, Envelope, Signer};
    let mut sigs = ChangeSigs { certs: vec![(node.clone(), creds.cert)], sigs: Vec::new() };
    let signer = crate::identity::ChangeSigner::new(&creds.secret);
    for chunk in msg.changes.iter() {
        let sig = match automerge::Change::from_bytes(chunk.to_vec()) {
            Ok(c) => signer.sign(&c.hash().0),
            Err(_) => [0; 64],
        };
        sigs.sigs.push((Signer::Cert(0), sig));
    }
    Envelope::Sync { sigs, message: msg.encode() }.encode()
}

/// A sync envelope whose every change is signed with the dev credentials
/// of the node its actor names (dev credentials derive from the node id),
/// so fuzzers reach Automerge with whatever they mutated. A change whose
/// actor names no node goes unsigned.
pub fn dev_signed_sync(msg: automerge::sync::Message) -> Vec<u8> {
    use crate::wire::{ChangeSigs, Envelope, Signer};
    let mut sigs = ChangeSigs::default();
    for chunk in msg.changes.iter() {
        let change = automerge::Change::from_bytes(chunk.to_vec()).ok();
        let author = change.as_ref().and_then(|c| crate::signing::node_of_actor(c.actor_id()).map(|n| (n, c.hash())));
        let Some((node, hash)) = author else {
            sigs.sigs.push((Signer::None, [0; 64]));
            continue;
        };
        let creds = crate::Credentials::dev(&node);
        let i = match sigs.certs.iter().position(|(n, _)| *n == node) {
            Some(i) => i,
            None => {
                sigs.certs.push((node, creds.cert));
                sigs.certs.len() - 1
            }
        };
        sigs.sigs.push((Signer::Cert(i as u16), crate::identity::sign_change(&creds.secret, &hash.0)));
    }
    Envelope::Sync { sigs, message: msg.encode() }.encode()
}
