//! Node identity: every node has its own ed25519 key, certified by the
//! cluster's CA key (held by the server, which signs a node's key when the
//! node joins with a one-time token).
//!
//! What is signed, each with its own context string so no signature can be
//! replayed as another kind:
//! - a certificate: `cert-v1 ‖ node ‖ 0 ‖ key`, by the CA;
//! - a handshake proof: `auth-v1 ‖ their nonce ‖ our nonce ‖ our id ‖ 0 ‖
//!   their id`, by the node. Binding both nonces and both ids means a proof
//!   can neither be replayed nor relayed to a third node;
//! - a heartbeat: `beat-v1 ‖ node ‖ 0 ‖ incarnation ‖ seq ‖ free slots`, by
//!   its node, so no node can keep another alive;
//! - a revocation: `revoke-v1 ‖ node ‖ 0 ‖ key`, by the CA; it lives in the
//!   document and every node checks it;
//! - a change of the document: `change-v1 ‖ change hash`, by its author's
//!   node key, or by the CA for the server's (`signing.rs`). The hash
//!   covers the change's actor, so a signature binds the change to a node.
//!
//! Tests and simulations that give no credentials get dev credentials: keys
//! derived from the node id and a CA whose secret is public (in this file).
//! The production driver always passes real ones.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::NodeId;

const CERT_CONTEXT: &[u8] = b"huskies-cert-v1\0";
const AUTH_CONTEXT: &[u8] = b"huskies-auth-v1\0";
const BEAT_CONTEXT: &[u8] = b"huskies-beat-v1\0";
const BEAT_CHAIN_CONTEXT: &[u8] = b"huskies-beat-chain-v1\0";
const REVOKE_CONTEXT: &[u8] = b"huskies-revoke-v1\0";
const SETTINGS_CONTEXT: &[u8] = b"huskies-settings-v1\0";
const EPOCH_CONTEXT: &[u8] = b"huskies-epoch-v1\0";
const CHANGE_CONTEXT: &[u8] = b"huskies-change-v1\0";
const DEV_CA_SEED: [u8; 32] = *b"huskies-dev-ca-not-for-real-use!";

pub type PublicKey = [u8; 32];
pub type Sig = [u8; 64];

/// A node's proof of membership: its public key, signed by the cluster CA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cert {
    pub key: PublicKey,
    pub sig: Sig,
}

impl Cert {
    /// `key ‖ sig`, hex encoded (192 characters), as kept in the document.
    pub fn to_hex(&self) -> String {
        hex(&[self.key.as_slice(), self.sig.as_slice()].concat())
    }

    pub fn from_hex(s: &str) -> Option<Cert> {
        let b = unhex(s)?;
        Some(Cert { key: b.get(..32)?.try_into().ok()?, sig: b.get(32..)?.try_into().ok()? })
    }
}

/// What a node needs to prove who it is, and whom to believe.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster CA's public key.
    pub ca: PublicKey,
    /// This node's secret key (ed25519 seed).
    pub secret: [u8; 32],
    /// This node's certificate.
    pub cert: Cert,
    /// The CA's secret, on the server only: lets it write revocations.
    pub ca_secret: Option<[u8; 32]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_struct("Credentials")
            .field("ca", &hex(&self.ca))
            .field("key", &hex(&self.cert.key))
            .field("ca_secret", &self.ca_secret.map(|_| "<secret>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials for `node` issued by the CA whose secret is `ca_secret`.
    pub fn issue(ca_secret: &[u8; 32], node: &NodeId, node_secret: [u8; 32]) -> Credentials {
        let key = SigningKey::from_bytes(&node_secret).verifying_key().to_bytes();
        Credentials {
            ca: public_key(ca_secret),
            secret: node_secret,
            cert: certify(ca_secret, node, &key),
            ca_secret: None,
        }
    }

    /// Test and simulation credentials: derived from the node id under a
    /// CA whose secret is public. Never accepted by the production driver.
    pub fn dev(node: &NodeId) -> Credentials {
        let seed = crate::hash::stable_hash(&[b"huskies-dev-node", node.as_str().as_bytes()]);
        let mut secret = [0u8; 32];
        for (i, chunk) in secret.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&(seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
        }
        Credentials { ca_secret: Some(DEV_CA_SEED), ..Credentials::issue(&DEV_CA_SEED, node, secret) }
    }

    pub fn is_dev(&self) -> bool {
        self.ca == public_key(&DEV_CA_SEED)
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Sig {
        SigningKey::from_bytes(&self.secret).sign(msg).to_bytes()
    }
}

/// The peer side of the handshake, for drivers and tests that speak the
/// protocol without an engine (fake peers, hostile-peer tests, fuzzers).
pub struct PeerHandshake {
    pub node: NodeId,
    pub creds: Credentials,
    pub nonce: [u8; 32],
}

impl PeerHandshake {
    /// Our hello envelope.
    pub fn hello(&self) -> Vec<u8> {
        crate::wire::Envelope::Hello { node: self.node.clone(), nonce: self.nonce, cert: self.creds.cert, epoch: 0 }
            .encode()
    }

    /// Our beats `seqs` of one hash chain starting at `start_seq`, as an
    /// engine sends them (`liveness/chain.rs`).
    pub fn chain_heartbeats(
        &self,
        incarnation: u64,
        start_seq: u64,
        free_slots: u32,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Vec<crate::wire::Heartbeat> {
        let chain = crate::liveness::chain::OwnChain::new(
            &self.creds.secret,
            &self.node,
            incarnation,
            start_seq,
            free_slots,
            |m| self.creds.sign(m),
        );
        seqs.filter_map(|seq| {
            let (chain, link) = chain.proof(seq, free_slots)?;
            let proof = crate::wire::BeatProof::Chain { chain, link };
            Some(crate::wire::Heartbeat { node: self.node.clone(), incarnation, seq, free_slots, proof })
        })
        .collect()
    }

    /// Answers the other side's hello envelope with our auth envelope.
    pub fn answer(&self, their_hello: &[u8]) -> Option<Vec<u8>> {
        let crate::wire::Envelope::Hello { node, nonce, .. } =
            crate::wire::Envelope::decode(their_hello, 1 << 16).ok()?
        else {
            return None;
        };
        let sig = self.creds.sign(&auth_message(&nonce, &self.nonce, &self.node, &node));
        Some(crate::wire::Envelope::Auth { sig }.encode())
    }

    /// A heartbeat of ours, signed.
    pub fn heartbeat(&self, incarnation: u64, seq: u64, free_slots: u32) -> crate::wire::Heartbeat {
        let sig = self.creds.sign(&beat_message(&self.node, incarnation, seq, free_slots));
        crate::wire::Heartbeat {
            node: self.node.clone(),
            incarnation,
            seq,
            free_slots,
            proof: crate::wire::BeatProof::Signed(sig),
        }
    }
}

pub fn public_key(secret: &[u8; 32]) -> PublicKey {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

fn verify(key: &PublicKey, msg: &[u8], sig: &Sig) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| k.verify(msg, &Signature::from_bytes(sig)).is_ok())
}

fn cert_message(node: &NodeId, key: &PublicKey) -> Vec<u8> {
    [CERT_CONTEXT, node.as_str().as_bytes(), &[0], key].concat()
}

/// The CA signs `node`'s `key`.
pub fn certify(ca_secret: &[u8; 32], node: &NodeId, key: &PublicKey) -> Cert {
    let sig = SigningKey::from_bytes(ca_secret).sign(&cert_message(node, key)).to_bytes();
    Cert { key: *key, sig }
}

/// Is `cert` the CA's signature on `node`'s key?
pub fn verify_cert(ca: &PublicKey, node: &NodeId, cert: &Cert) -> bool {
    verify(ca, &cert_message(node, &cert.key), &cert.sig)
}

pub(crate) fn auth_message(their_nonce: &[u8; 32], our_nonce: &[u8; 32], us: &NodeId, them: &NodeId) -> Vec<u8> {
    [AUTH_CONTEXT, their_nonce, our_nonce, us.as_str().as_bytes(), &[0], them.as_str().as_bytes()].concat()
}

pub(crate) fn verify_auth(
    key: &PublicKey,
    sig: &Sig,
    their_nonce: &[u8; 32],
    our_nonce: &[u8; 32],
    us: &NodeId,
    them: &NodeId,
) -> bool {
    // The peer signed with our nonce as "their nonce" and its id as "us".
    verify(key, &auth_message(our_nonce, their_nonce, them, us), sig)
}

pub(crate) fn beat_message(node: &NodeId, incarnation: u64, seq: u64, free_slots: u32) -> Vec<u8> {
    [
        BEAT_CONTEXT,
        node.as_str().as_bytes(),
        &[0],
        &incarnation.to_be_bytes(),
        &seq.to_be_bytes(),
        &free_slots.to_be_bytes(),
    ]
    .concat()
}

pub(crate) fn verify_beat(key: &PublicKey, hb: &crate::wire::Heartbeat, sig: &Sig) -> bool {
    verify(key, &beat_message(&hb.node, hb.incarnation, hb.seq, hb.free_slots), sig)
}

/// What a node signs for a hash chain of its beats (`liveness/chain.rs`).
pub(crate) fn chain_message(
    node: &NodeId,
    incarnation: u64,
    start_seq: u64,
    free_slots: u32,
    root: &[u8; 32],
) -> Vec<u8> {
    [
        BEAT_CHAIN_CONTEXT,
        node.as_str().as_bytes(),
        &[0],
        &incarnation.to_be_bytes(),
        &start_seq.to_be_bytes(),
        &free_slots.to_be_bytes(),
        root,
    ]
    .concat()
}

pub(crate) fn verify_beat_chain(key: &PublicKey, hb: &crate::wire::Heartbeat, chain: &crate::wire::BeatChain) -> bool {
    verify(key, &chain_message(&hb.node, hb.incarnation, chain.start_seq, hb.free_slots, &chain.root), &chain.sig)
}

fn revoke_message(node: &NodeId, key: &PublicKey) -> Vec<u8> {
    [REVOKE_CONTEXT, node.as_str().as_bytes(), &[0], key].concat()
}

pub(crate) fn sign_revocation(ca_secret: &[u8; 32], node: &NodeId, key: &PublicKey) -> Sig {
    SigningKey::from_bytes(ca_secret).sign(&revoke_message(node, key)).to_bytes()
}

pub(crate) fn verify_revocation(ca: &PublicKey, node: &NodeId, key: &PublicKey, sig: &Sig) -> bool {
    verify(ca, &revoke_message(node, key), sig)
}

fn epoch_message(epoch: u64, base_hash: &[u8; 32]) -> Vec<u8> {
    [EPOCH_CONTEXT, &epoch.to_be_bytes(), base_hash].concat()
}

/// The CA's signature of epoch `epoch`'s base change (by its hash): only
/// the server starts epochs.
pub(crate) fn sign_epoch(ca_secret: &[u8; 32], epoch: u64, base_hash: &[u8; 32]) -> Sig {
    SigningKey::from_bytes(ca_secret).sign(&epoch_message(epoch, base_hash)).to_bytes()
}

pub(crate) fn verify_epoch(ca: &PublicKey, epoch: u64, base_hash: &[u8; 32], sig: &Sig) -> bool {
    verify(ca, &epoch_message(epoch, base_hash), sig)
}

pub(crate) fn sign_settings(ca_secret: &[u8; 32], json: &[u8]) -> Sig {
    SigningKey::from_bytes(ca_secret).sign(&[SETTINGS_CONTEXT, json].concat()).to_bytes()
}

pub(crate) fn verify_settings(ca: &PublicKey, json: &[u8], sig: &Sig) -> bool {
    verify(ca, &[SETTINGS_CONTEXT, json].concat(), sig)
}

fn change_message(hash: &[u8; 32]) -> Vec<u8> {
    [CHANGE_CONTEXT, hash].concat()
}

/// Signs an Automerge change (by its hash) with `secret`.
pub fn sign_change(secret: &[u8; 32], hash: &[u8; 32]) -> Sig {
    ChangeSigner::new(secret).sign(hash)
}

/// A key ready to sign changes: deriving the public half from the secret
/// costs about as much as a signature, so a node does it once.
#[derive(Clone)]
pub struct ChangeSigner(SigningKey);

impl ChangeSigner {
    pub fn new(secret: &[u8; 32]) -> ChangeSigner {
        ChangeSigner(SigningKey::from_bytes(secret))
    }

    pub fn sign(&self, hash: &[u8; 32]) -> Sig {
        self.0.sign(&change_message(hash)).to_bytes()
    }
}

impl std::fmt::Debug for ChangeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeSigner(<secret>)")
    }
}

/// Did `key` sign the change whose hash is `hash`?
pub fn verify_change(key: &PublicKey, hash: &[u8; 32], sig: &Sig) -> bool {
    verify(key, &change_message(hash), sig)
}

/// A key that checks change signatures, its curve point decoded once (the
/// decoding is a field exponentiation: about a sixth of a check).
#[derive(Clone, Debug)]
pub struct ChangeVerifier(VerifyingKey);

impl ChangeVerifier {
    /// `None` when `key` is not a point of the curve.
    pub fn new(key: &PublicKey) -> Option<ChangeVerifier> {
        VerifyingKey::from_bytes(key).ok().map(ChangeVerifier)
    }

    /// Did this key sign the change whose hash is `hash`? As
    /// [`verify_change`].
    pub fn verify(&self, hash: &[u8; 32], sig: &Sig) -> bool {
        self.0.verify(&change_message(hash), &Signature::from_bytes(sig)).is_ok()
    }

    /// As [`ChangeVerifier::verify`], answered from `memo` when another
    /// node of the simulation found the same triple good.
    pub fn verify_memo(&self, hash: &[u8; 32], sig: &Sig, memo: Option<&SigMemo>) -> bool {
        let Some(memo) = memo else { return self.verify(hash, sig) };
        let triple = (self.0.to_bytes(), *hash, *sig);
        if memo.holds(&triple) {
            return true;
        }
        let good = self.verify(hash, sig);
        if good {
            memo.keep(triple);
        }
        good
    }
}

/// Change signatures already found good, shared by the nodes of one
/// simulation.
///
/// A signature check is a pure function of (key, change hash, signature),
/// and a simulated cluster makes each of its N nodes check every change:
/// N curve multiplications for one answer, an eighth of a 50-node run. The
/// nodes of one simulation share this memo, so each triple is checked once
/// per cluster. Only good triples are kept, as whole bytes: a forged
/// signature is never in it, and nothing a node decides depends on what
/// the memo holds, only on how long the answer takes. A production node
/// runs alone in its process and never has one.
#[derive(Clone, Debug, Default)]
pub struct SigMemo(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<SigTriple>>>);

type SigTriple = ([u8; 32], [u8; 32], [u8; 64]);

impl SigMemo {
    /// Triples kept at most: the memo starts over beyond it (a 10-node,
    /// 1,000-story run checks about 10,000).
    const MAX: usize = 1 << 18;

    fn holds(&self, triple: &SigTriple) -> bool {
        self.0.lock().map(|set| set.contains(triple)).unwrap_or(false)
    }

    fn keep(&self, triple: SigTriple) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= Self::MAX {
                set.clear();
            }
            set.insert(triple);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn certs_bind_key_to_node_and_ca() {
        let a = Credentials::dev(&id("a"));
        assert!(verify_cert(&a.ca, &id("a"), &a.cert));
        assert!(!verify_cert(&a.ca, &id("b"), &a.cert), "a cert names its node");
        let other_ca = Credentials::issue(&[7; 32], &id("a"), [1; 32]);
        assert!(!verify_cert(&a.ca, &id("a"), &other_ca.cert), "another CA's cert");
        assert_eq!(Cert::from_hex(&a.cert.to_hex()), Some(a.cert));
        assert_eq!(Cert::from_hex("zz"), None);
        assert!(!format!("{a:?}").contains(&hex(&a.secret)), "no secret in Debug");
    }

    #[test]
    fn a_shared_memo_answers_only_the_triples_found_good() {
        let (a, b) = (Credentials::dev(&id("a")), Credentials::dev(&id("b")));
        let memo = SigMemo::default();
        let (va, vb) = (ChangeVerifier::new(&a.cert.key).unwrap(), ChangeVerifier::new(&b.cert.key).unwrap());
        let hash = [9; 32];
        let good = sign_change(&a.secret, &hash);
        assert!(va.verify_memo(&hash, &good, Some(&memo)));
        assert!(va.verify_memo(&hash, &good, Some(&memo)), "answered from the memo");
        assert_eq!(memo.0.lock().unwrap().len(), 1);
        // What the memo holds vouches for nothing else: another key, hash
        // or signature is checked for real, and a forgery is not kept.
        assert!(!vb.verify_memo(&hash, &good, Some(&memo)));
        assert!(!va.verify_memo(&[8; 32], &good, Some(&memo)));
        let mut forged = good;
        forged[0] ^= 1;
        assert!(!va.verify_memo(&hash, &forged, Some(&memo)));
        assert!(!va.verify_memo(&hash, &forged, None));
        assert_eq!(memo.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn auth_proofs_cannot_be_relayed() {
        let (a, b) = (Credentials::dev(&id("a")), Credentials::dev(&id("b")));
        let (na, nb) = ([1; 32], [2; 32]);
        // a answers b's nonce.
        let sig = a.sign(&auth_message(&nb, &na, &id("a"), &id("b")));
        assert!(verify_auth(&a.cert.key, &sig, &na, &nb, &id("b"), &id("a")));
        // The same proof shown to c (relay) or with other nonces fails.
        assert!(!verify_auth(&a.cert.key, &sig, &na, &nb, &id("c"), &id("a")));
        assert!(!verify_auth(&a.cert.key, &sig, &na, &[3; 32], &id("b"), &id("a")));
        assert!(!verify_auth(&b.cert.key, &sig, &na, &nb, &id("b"), &id("a")));
    }
}
