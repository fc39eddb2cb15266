//! The envelope spoken over `/crdt-sync`: one binary frame per envelope.
//!
//! ```text
//! byte 0      protocol version (6)
//! byte 1      kind: 1 hello, 2 sync, 3 heartbeat, 4 auth, 5 epoch, 6 heads,
//!             7 pull
//! hello       u8 len, node id, 32-byte nonce, 32-byte public key, 64-byte
//!             CA signature of the key (the node's certificate), u64 epoch
//! epoch       u64 epoch, 64-byte CA signature, then the epoch's base
//!             change (an Automerge change chunk)
//! auth        64-byte signature proving the key (see `identity.rs`)
//! sync        u16 count of certificates, each: u8 len, node id, 32-byte
//!             key, 64-byte CA signature; u32 count of change signatures
//!             (one per change chunk of the message, in order), each: u16
//!             signer (index into the certificates, 0xffff the CA, 0xfffe
//!             none), 64-byte signature; then the Automerge sync message
//! heartbeats  u16 count (1..=MAX_HEARTBEATS), then per beat: u8 len, node
//!             id, u64 incarnation, u64 seq, u32 free slots (big endian),
//!             then its proof: u8 0 and a 64-byte signature by the beat's
//!             node, or u8 1 and a hash chain: u64 start seq, 32-byte root,
//!             64-byte signature of the chain by the node, 32-byte link
//! heads       u16 count (at most MAX_HEADS), then 32-byte change hashes:
//!             the sender's document heads (mesh links, see peers.rs)
//! pull        as sync: a sync message on a mesh link that asks for an
//!             answer (the sender lacks heads the receiver announced)
//! ```
//!
//! Versions 1 (unsigned hellos and beats), 2 (one document forever, no
//! epochs), 3 (unsigned changes), 4 (every beat signed) and 5 (mesh links
//! syncing every change) are refused with a clear error.
//!
//! Every length is checked before it is used; decoding never panics.

use thiserror::Error;

use crate::NodeId;
use crate::identity::{Cert, Sig};

pub const PROTOCOL_VERSION: u8 = 6;

const KIND_HELLO: u8 = 1;
const KIND_SYNC: u8 = 2;
const KIND_HEARTBEAT: u8 = 3;
const KIND_AUTH: u8 = 4;
const KIND_EPOCH: u8 = 5;
const KIND_HEADS: u8 = 6;
const KIND_PULL: u8 = 7;

/// Most beats one envelope may carry (one per node of a large fleet).
pub const MAX_HEARTBEATS: usize = 4_096;
/// Most certificates one sync envelope may carry (one per author).
pub const MAX_CERTS: usize = 4_096;
/// Most heads one heads envelope may carry: a document has one head per
/// concurrent writer since the last merge, a handful in practice.
pub const MAX_HEADS: usize = 1_024;

/// Who signed a change (see `signing.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signer {
    /// The node key of the certificate at this index of the envelope.
    Cert(u16),
    /// The cluster CA (the server signs with it: its writes are the admin's).
    Ca,
    /// Unsigned: only for a change the receiver already holds (a base).
    None,
}

const SIGNER_CA: u16 = 0xffff;
const SIGNER_NONE: u16 = 0xfffe;

/// The signatures that travel beside the changes of one sync message.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ChangeSigs {
    /// Certificates of the authors the signatures name.
    pub certs: Vec<(NodeId, Cert)>,
    /// One per change chunk of the message, in order.
    pub sigs: Vec<(Signer, Sig)>,
}

/// One liveness beat of `node`, relayed by everyone who hears it first.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Heartbeat {
    pub node: NodeId,
    /// Random per process start, so a restarted node's beats count as new.
    pub incarnation: u64,
    pub seq: u64,
    /// How many more runs the node would take; ranks candidates for claims.
    pub free_slots: u32,
    /// That the node sent it.
    pub proof: BeatProof,
}

/// Why a beat is believed to come from its node (`liveness/chain.rs`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BeatProof {
    /// The node's signature over the beat.
    Signed(Sig),
    /// Link `seq - chain.start_seq` of the node's hash chain: hashed that
    /// many times it gives the root the node signed. One signature check
    /// per chain, then one hash per beat.
    Chain { chain: BeatChain, link: [u8; 32] },
}

/// A hash chain a node signed for its beats from `start_seq` on, all with
/// the same free slots (a change of free slots starts a new chain).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BeatChain {
    pub start_seq: u64,
    pub root: [u8; 32],
    /// The node's signature over (node, incarnation, start seq, free slots,
    /// root).
    pub sig: Sig,
}

const PROOF_SIGNED: u8 = 0;
const PROOF_CHAIN: u8 = 1;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Envelope {
    /// First message each way: who we are, and a fresh challenge.
    Hello {
        node: NodeId,
        nonce: [u8; 32],
        cert: Cert,
        /// The epoch of the sender's document: peers sync only within one.
        epoch: u64,
    },
    /// An epoch's base, signed by the CA, for a peer still in an older one.
    Epoch { epoch: u64, sig: Sig, base: Vec<u8> },
    /// Answer to the peer's hello: proof we hold the certified key.
    Auth { sig: Sig },
    /// An Automerge sync message and the signatures of its changes.
    Sync { sigs: ChangeSigs, message: Vec<u8> },
    /// Our own beat and the beats we relay, batched per interval.
    Heartbeats(Vec<Heartbeat>),
    /// Our document's heads: what a mesh link sends instead of a sync
    /// message while the rendezvous carries the changes.
    Heads(Vec<[u8; 32]>),
    /// A sync message on a mesh link from a peer that lacks heads we
    /// announced: answered with one sync message. Laid out as `Sync`.
    Pull { sigs: ChangeSigs, message: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("message of {len} bytes exceeds the {max} byte cap")]
    TooLarge { len: usize, max: usize },
    #[error("message is truncated")]
    Truncated,
    #[error("node id is not UTF-8")]
    NotUtf8,
    #[error("protocol version {0} is not supported (this node speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("bad node id in message: {0}")]
    BadNode(#[from] crate::IdError),
    #[error("heartbeat batch of {0} entries (allowed: 1 to {MAX_HEARTBEATS})")]
    BatchSize(usize),
    #[error("unknown heartbeat proof kind {0}")]
    Proof(u8),
    #[error("{what}: {count} entries exceed the cap of {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("a change signature names certificate {0}, which the envelope lacks")]
    NoSuchCert(u16),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        match self {
            Envelope::Hello { node, nonce, cert, epoch } => {
                out.push(KIND_HELLO);
                put_id(&mut out, node);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&cert.key);
                out.extend_from_slice(&cert.sig);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Envelope::Epoch { epoch, sig, base } => {
                out.reserve(base.len() + 72);
                out.push(KIND_EPOCH);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(sig);
                out.extend_from_slice(base);
            }
            Envelope::Auth { sig } => {
                out.push(KIND_AUTH);
                out.extend_from_slice(sig);
            }
            Envelope::Sync { sigs, message } => put_sync(&mut out, KIND_SYNC, sigs, message),
            Envelope::Pull { sigs, message } => put_sync(&mut out, KIND_PULL, sigs, message),
            Envelope::Heartbeats(beats) => {
                assert!((1..=MAX_HEARTBEATS).contains(&beats.len()));
                out.push(KIND_HEARTBEAT);
                out.extend_from_slice(&(beats.len() as u16).to_be_bytes());
                for hb in beats {
                    put_id(&mut out, &hb.node);
                    out.extend_from_slice(&hb.incarnation.to_be_bytes());
                    out.extend_from_slice(&hb.seq.to_be_bytes());
                    out.extend_from_slice(&hb.free_slots.to_be_bytes());
                    match &hb.proof {
                        BeatProof::Signed(sig) => {
                            out.push(PROOF_SIGNED);
                            out.extend_from_slice(sig);
                        }
                        BeatProof::Chain { chain, link } => {
                            out.push(PROOF_CHAIN);
                            out.extend_from_slice(&chain.start_seq.to_be_bytes());
                            out.extend_from_slice(&chain.root);
                            out.extend_from_slice(&chain.sig);
                            out.extend_from_slice(link);
                        }
                    }
                }
            }
            Envelope::Heads(heads) => {
                assert!(heads.len() <= MAX_HEADS, "{} heads", heads.len());
                out.reserve(heads.len() * 32 + 2);
                out.push(KIND_HEADS);
                out.extend_from_slice(&(heads.len() as u16).to_be_bytes());
                for h in heads {
                    out.extend_from_slice(h);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Envelope, WireError> {
        if bytes.len() > max_len {
            return Err(WireError::TooLarge { len: bytes.len(), max: max_len });
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::Version(version));
        }
        let env = match r.u8()? {
            KIND_HELLO => Envelope::Hello {
                node: r.id()?,
                nonce: r.array()?,
                cert: Cert { key: r.array()?, sig: r.array()? },
                epoch: u64::from_be_bytes(r.array()?),
            },
            KIND_EPOCH => {
                let (epoch, sig) = (u64::from_be_bytes(r.array()?), r.array()?);
                return Ok(Envelope::Epoch { epoch, sig, base: r.0.to_vec() });
            }
            KIND_AUTH => Envelope::Auth { sig: r.array()? },
            KIND_SYNC => {
                let (sigs, message) = read_sync(r)?;
                return Ok(Envelope::Sync { sigs, message });
            }
            KIND_PULL => {
                let (sigs, message) = read_sync(r)?;
                return Ok(Envelope::Pull { sigs, message });
            }
            KIND_HEARTBEAT => {
                let count = usize::from(u16::from_be_bytes(r.array()?));
                if !(1..=MAX_HEARTBEATS).contains(&count) {
                    return Err(WireError::BatchSize(count));
                }
                let mut beats = Vec::with_capacity(count);
                for _ in 0..count {
                    beats.push(Heartbeat {
                        node: r.id()?,
                        incarnation: u64::from_be_bytes(r.array()?),
                        seq: u64::from_be_bytes(r.array()?),
                        free_slots: u32::from_be_bytes(r.array()?),
                        proof: match r.u8()? {
                            PROOF_SIGNED => BeatProof::Signed(r.array()?),
                            PROOF_CHAIN => BeatProof::Chain {
                                chain: BeatChain {
                                    start_seq: u64::from_be_bytes(r.array()?),
                                    root: r.array()?,
                                    sig: r.array()?,
                                },
                                link: r.array()?,
                            },
                            other => return Err(WireError::Proof(other)),
                        },
                    });
                }
                Envelope::Heartbeats(beats)
            }
            KIND_HEADS => {
                let count = usize::from(u16::from_be_bytes(r.array()?));
                if count > MAX_HEADS {
                    return Err(WireError::TooMany { what: "heads", count, max: MAX_HEADS });
                }
                let mut heads = Vec::with_capacity(count);
                for _ in 0..count {
                    heads.push(r.array()?);
                }
                Envelope::Heads(heads)
            }
            kind => return Err(WireError::Kind(kind)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(env)
    }
}

fn put_sync(out: &mut Vec<u8>, kind: u8, sigs: &ChangeSigs, message: &[u8]) {
    assert!(sigs.certs.len() <= MAX_CERTS && sigs.sigs.len() <= crate::guard::MAX_CHANGES);
    out.reserve(message.len() + sigs.certs.len() * 97 + sigs.sigs.len() * 66 + 8);
    out.push(kind);
    out.extend_from_slice(&(sigs.certs.len() as u16).to_be_bytes());
    for (node, cert) in &sigs.certs {
        put_id(out, node);
        out.extend_from_slice(&cert.key);
        out.extend_from_slice(&cert.sig);
    }
    out.extend_from_slice(&(sigs.sigs.len() as u32).to_be_bytes());
    for (signer, sig) in &sigs.sigs {
        let code = match *signer {
            Signer::Cert(i) => {
                assert!(usize::from(i) < sigs.certs.len(), "a signer names a certificate we send");
                i
            }
            Signer::Ca => SIGNER_CA,
            Signer::None => SIGNER_NONE,
        };
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(sig);
    }
    out.extend_from_slice(message);
}

fn put_id(out: &mut Vec<u8>, id: &NodeId) {
    let bytes = id.as_str().as_bytes();
    // Node ids are at most MAX_ID_LEN (64) bytes by construction.
    assert!(bytes.len() <= crate::ids::MAX_ID_LEN);
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// The body of a sync or pull envelope: signatures, then the message.
fn read_sync(mut r: Reader<'_>) -> Result<(ChangeSigs, Vec<u8>), WireError> {
    let certs_len = usize::from(u16::from_be_bytes(r.array()?));
    if certs_len > MAX_CERTS {
        return Err(WireError::TooMany { what: "certificates", count: certs_len, max: MAX_CERTS });
    }
    let mut certs = Vec::with_capacity(certs_len);
    for _ in 0..certs_len {
        certs.push((r.id()?, Cert { key: r.array()?, sig: r.array()? }));
    }
    let sigs_len = u32::from_be_bytes(r.array()?) as usize;
    let max = crate::guard::MAX_CHANGES;
    if sigs_len > max || sigs_len.saturating_mul(66) > r.0.len() {
        return Err(WireError::TooMany { what: "change signatures", count: sigs_len, max });
    }
    let mut sigs = Vec::with_capacity(sigs_len);
    for _ in 0..sigs_len {
        let signer = match u16::from_be_bytes(r.array()?) {
            SIGNER_CA => Signer::Ca,
            SIGNER_NONE => Signer::None,
            i if usize::from(i) < certs.len() => Signer::Cert(i),
            i => return Err(WireError::NoSuchCert(i)),
        };
        sigs.push((signer, r.array()?));
    }
    Ok((ChangeSigs { certs, sigs }, r.0.to_vec()))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn id(&mut self) -> Result<NodeId, WireError> {
        let len = usize::from(self.u8()?);
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| WireError::NotUtf8)?;
        Ok(NodeId::new(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn roundtrip() {
        for env in [
            Envelope::Hello {
                node: node("agent-1"),
                nonce: [3; 32],
                cert: Cert { key: [4; 32], sig: [5; 64] },
                epoch: 9,
            },
            Envelope::Epoch { epoch: u64::MAX, sig: [8; 64], base: vec![0x85, 0x6f, 0x4a, 0x83] },
            Envelope::Auth { sig: [6; 64] },
            Envelope::Sync { sigs: ChangeSigs::default(), message: vec![1, 2, 3] },
            Envelope::Sync {
                sigs: ChangeSigs {
                    certs: vec![(node("a"), Cert { key: [1; 32], sig: [2; 64] })],
                    sigs: vec![(Signer::Cert(0), [3; 64]), (Signer::Ca, [4; 64]), (Signer::None, [0; 64])],
                },
                message: vec![0x42],
            },
            Envelope::Heartbeats(vec![
                Heartbeat {
                    node: node("n"),
                    incarnation: 7,
                    seq: u64::MAX,
                    free_slots: 2,
                    proof: BeatProof::Signed([1; 64]),
                },
                Heartbeat {
                    node: node("m"),
                    incarnation: 1,
                    seq: 3,
                    free_slots: 0,
                    proof: BeatProof::Chain {
                        chain: BeatChain { start_seq: 2, root: [5; 32], sig: [6; 64] },
                        link: [7; 32],
                    },
                },
            ]),
            Envelope::Heads(vec![]),
            Envelope::Pull { sigs: ChangeSigs::default(), message: vec![0x42, 1] },
            Envelope::Heads(vec![[1; 32], [2; 32]]),
        ] {
            assert_eq!(Envelope::decode(&env.encode(), 1 << 20), Ok(env));
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(Envelope::decode(&[], 100), Err(WireError::Truncated));
        assert_eq!(Envelope::decode(&[9, 1], 100), Err(WireError::Version(9)));
        assert_eq!(Envelope::decode(&[1, 1, 1, b'a'], 100), Err(WireError::Version(1)), "v1 peers are refused");
        assert_eq!(Envelope::decode(&[2, 4, 1, b'a'], 100), Err(WireError::Version(2)), "v2 peers are refused");
        assert_eq!(
            WireError::Version(2).to_string(),
            "protocol version 2 is not supported (this node speaks 6)",
            "an old peer is told why"
        );
        assert_eq!(Envelope::decode(&[3, 2, 0x42], 100), Err(WireError::Version(3)), "unsigned changes are refused");
        assert_eq!(Envelope::decode(&[4, 4, 0], 100), Err(WireError::Version(4)), "every beat signed: refused");
        assert_eq!(Envelope::decode(&[5, 3, 0, 0], 100), Err(WireError::Version(5)), "mesh syncing every change");
        assert_eq!(Envelope::decode(&[6, 77], 100), Err(WireError::Kind(77)));
        assert_eq!(Envelope::decode(&[6, 1, 5, b'a'], 100), Err(WireError::Truncated));
        assert_eq!(Envelope::decode(&[6, 5, 0, 0], 100), Err(WireError::Truncated), "an epoch without its signature");
        assert!(matches!(Envelope::decode(&[6, 1, 1, b'A'], 100), Err(WireError::BadNode(_))));
        assert_eq!(Envelope::decode(&[6, 1, 1, 0xff], 100), Err(WireError::NotUtf8));
        // A signature naming a certificate that is not there.
        assert_eq!(
            Envelope::decode(&[[6, 2, 0, 0, 0, 0, 0, 1, 0, 3].as_slice(), &[0; 64]].concat(), 200),
            Err(WireError::NoSuchCert(3))
        );
        // A signature count past what the bytes could hold.
        assert!(matches!(Envelope::decode(&[6, 2, 0, 0, 0xff, 0xff, 0xff, 0xff], 100), Err(WireError::TooMany { .. })));
        let mut auth = Envelope::Auth { sig: [0; 64] }.encode();
        auth.push(0);
        assert_eq!(Envelope::decode(&auth, 100), Err(WireError::Trailing(1)));
        assert_eq!(Envelope::decode(&[6, 3, 0, 0], 100), Err(WireError::BatchSize(0)));
        assert!(matches!(Envelope::decode(&[0; 200], 100), Err(WireError::TooLarge { .. })));
        assert_eq!(Envelope::decode(&[6, 6, 0, 1, 7], 100), Err(WireError::Truncated), "a head cut short");
        assert!(
            matches!(Envelope::decode(&[6, 6, 0xff, 0xff], 100), Err(WireError::TooMany { what: "heads", .. })),
            "more heads than a document has"
        );
    }

    #[test]
    fn every_prefix_and_bitflip_is_handled() {
        let hb = Envelope::Heartbeats(vec![Heartbeat {
            node: node("abc"),
            incarnation: 1,
            seq: 2,
            free_slots: 3,
            proof: BeatProof::Chain { chain: BeatChain { start_seq: 1, root: [8; 32], sig: [9; 64] }, link: [3; 32] },
        }]);
        let bytes = hb.encode();
        for cut in 0..bytes.len() {
            let _ = Envelope::decode(&bytes[..cut], 1 << 20);
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = Envelope::decode(&b, 1 << 20);
            }
        }
    }
}
