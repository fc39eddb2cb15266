//! Every change of the document is signed by the node that made it, and no
//! change without a valid signature is applied (`docs/design/authority.md`).
//!
//! - A node signs the hash of each change it makes with its certified key;
//!   the server signs with the cluster CA's key, which makes its changes
//!   the admin's: the schema gives user commands to those alone.
//! - The signatures travel beside the changes, in the sync envelope
//!   (`wire::ChangeSigs`), with the certificates of their authors, so a
//!   relayed change proves its author on its own.
//! - A receiver parses every change of a message before Automerge sees it:
//!   the change's actor names a node (`node ‖ 0 ‖ incarnation ‖ epoch`), the
//!   certificate must be the CA's for that node, and the signature that
//!   key's. Anything else rejects the peer: an honest peer relays only
//!   changes it checked. A change by a revoked key is not applied, and the
//!   peer is not blamed for it (it may hold it from before the
//!   revocation); the server cuts an epoch after a revocation, whose base
//!   leaves that history behind.
//! - Signatures are persisted beside the document (`guard::SIG_BLOCK_MAGIC`
//!   blocks between its chunks) and checked again when loaded. A change
//!   of ours that storage holds unsigned (written before signing existed)
//!   is signed at load: we are its author.
//! - Whole-document sync messages (Automerge's v2) are never sent: their
//!   changes cannot be checked one by one. The capability flags of
//!   incoming messages are dropped, so Automerge believes every peer
//!   speaks v1.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync;
use automerge::{ActorId, ChangeHash};

use crate::identity::{self, Cert, PublicKey, Sig};
use crate::schema::Writer;
use crate::wire::{ChangeSigs, Signer};
use crate::{Engine, NodeId};

/// Who signed a change we hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Author {
    Node(PublicKey),
    Ca,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ChangeSig {
    pub author: Author,
    pub sig: Sig,
}

/// The signatures of the changes of our epoch, and the certificates of
/// their authors.
#[derive(Default, Debug)]
pub(crate) struct Signatures {
    by_hash: BTreeMap<ChangeHash, ChangeSig>,
    /// Certificates of the authors we hold signatures of: sent with their
    /// changes, and checked once.
    certs: BTreeMap<PublicKey, (NodeId, Cert)>,
    /// Actors whose changes the CA signed: the admin's writes.
    admin_actors: BTreeSet<ActorId>,
    /// Signatures not yet handed to storage, in the order they were made.
    unpersisted: Vec<ChangeHash>,
    /// Changes left out of sync messages, by why (`Dropped`).
    dropped: [u64; 3],
    /// What each author (but the admin) may still add, refilled with time.
    quotas: BTreeMap<NodeId, Quota>,
    /// Our signing key, derived once.
    signer: Option<(Author, identity::ChangeSigner)>,
    /// The keys changes were checked with, decoded once: the CA's and
    /// those of certificates the CA signed (one per enrolled key).
    verifiers: BTreeMap<PublicKey, identity::ChangeVerifier>,
    /// Checks the other nodes of a simulation made (`SigMemo`).
    pub(crate) memo: Option<identity::SigMemo>,
}

/// Why a change was left out of a sync message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Its author was revoked.
    Revoked = 0,
    /// Its author was past its quota of new bytes.
    Quota = 1,
    /// It wrote where only the server writes
    /// (`schema::change_not_authorized`).
    Structure = 2,
}

#[derive(Debug, Clone, Copy)]
struct Quota {
    bytes: u64,
    refilled_at: crate::Millis,
}

/// Why a sync message's signatures were not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The peer sent what no honest peer sends: it is rejected.
    Peer(String),
    /// A change of a revoked author: the message is not applied, the peer
    /// not blamed.
    Revoked(NodeId),
    /// An author past its quota of new bytes: the message waits (the
    /// peer's next sync offers it again); the author's own link is refused.
    Quota { author: NodeId, per_min: u64 },
}

/// A change whose signature checked, kept once its message applies.
pub(crate) struct Checked {
    hash: ChangeHash,
    actor: ActorId,
    sig: ChangeSig,
    cert: Option<(NodeId, Cert)>,
    /// Where it writes, for what the merge touched (`doc/touched.rs`);
    /// `None` when the document held it already, or the decoder could not
    /// read it (then the merge is read whole).
    writes: Option<crate::doc::Writes>,
    /// Its bytes as sent, for the next append (`doc/unsaved.rs`); `None`
    /// when the document held it already.
    bytes: Option<Vec<u8>>,
}

/// What the signature check of one message decided.
#[derive(Default)]
pub(crate) struct Verdict {
    /// Changes whose signatures checked, to keep once the message applies.
    pub checked: Vec<Checked>,
    /// Chunks (by index) left out: a revoked author's, or one past its quota.
    pub dropped: Vec<usize>,
}

/// The node an actor belongs to: its bytes up to the first zero.
pub(crate) fn node_of_actor(actor: &ActorId) -> Option<NodeId> {
    let bytes = actor.to_bytes();
    let name = bytes.split(|b| *b == 0).next()?;
    NodeId::new(std::str::from_utf8(name).ok()?).ok()
}

impl Signatures {
    pub fn count_dropped(&mut self, why: Dropped) {
        let n = &mut self.dropped[why as usize];
        *n = n.saturating_add(1);
    }

    /// Changes left out of sync messages for `why`.
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize]
    }

    pub fn get(&self, hash: &ChangeHash) -> Option<&ChangeSig> {
        self.by_hash.get(hash)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Is `actor` one whose changes the CA signed?
    pub fn is_admin(&self, actor: &ActorId) -> bool {
        self.admin_actors.contains(actor)
    }

    pub fn know_cert(&mut self, node: &NodeId, cert: Cert) {
        self.certs.entry(cert.key).or_insert_with(|| (node.clone(), cert));
    }

    fn insert(&mut self, hash: ChangeHash, actor: &ActorId, sig: ChangeSig) {
        if self.by_hash.insert(hash, sig).is_none() {
            self.unpersisted.push(hash);
        }
        if sig.author == Author::Ca {
            self.admin_actors.insert(actor.clone());
        }
    }

    /// A new epoch: its history, and the signatures of it, start over.
    /// Did `key` sign the change `hash`? `key` is the CA's or one the CA
    /// certified, so the cache is as bounded as the fleet's keys.
    fn verify_change(&mut self, key: &PublicKey, hash: &ChangeHash, sig: &Sig) -> bool {
        if !self.verifiers.contains_key(key) {
            let Some(v) = identity::ChangeVerifier::new(key) else { return false };
            self.verifiers.insert(*key, v);
        }
        self.verifiers.get(key).is_some_and(|v| v.verify_memo(&hash.0, sig, self.memo.as_ref()))
    }

    pub fn clear_history(&mut self) {
        self.by_hash.clear();
        self.admin_actors.clear();
        self.unpersisted.clear();
    }

    /// The storage block of every signature (`all`) or of those not yet
    /// stored; empty when there is nothing to store.
    pub fn take_block(&mut self, all: bool) -> Vec<u8> {
        let hashes: Vec<ChangeHash> =
            if all { self.by_hash.keys().copied().collect() } else { std::mem::take(&mut self.unpersisted) };
        self.unpersisted.clear();
        if hashes.is_empty() {
            return Vec::new();
        }
        let mut body = Vec::with_capacity(hashes.len() * 200);
        for hash in hashes {
            let Some(s) = self.by_hash.get(&hash) else { continue };
            body.extend_from_slice(&hash.0);
            match s.author {
                Author::Ca => body.push(0),
                Author::Node(key) => {
                    let (node, cert) = self.certs.get(&key).expect("a signature's certificate is kept");
                    body.push(1);
                    body.push(node.as_str().len() as u8);
                    body.extend_from_slice(node.as_str().as_bytes());
                    body.extend_from_slice(&cert.key);
                    body.extend_from_slice(&cert.sig);
                }
            }
            body.extend_from_slice(&s.sig);
        }
        crate::guard::sig_block(&body)
    }
}

/// One entry of a stored signature block.
struct StoredSig {
    hash: ChangeHash,
    cert: Option<(NodeId, Cert)>,
    sig: Sig,
}

/// Parses a stored block; `None` at the first malformed entry (what came
/// before it is kept).
fn parse_block(body: &[u8], out: &mut Vec<StoredSig>) -> Option<()> {
    let mut rest = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    loop {
        let Some(hash) = take(32) else { return Some(()) };
        let hash = ChangeHash(hash.try_into().ok()?);
        let cert = match take(1)?[0] {
            0 => None,
            1 => {
                let len = usize::from(take(1)?[0]);
                let node = NodeId::new(std::str::from_utf8(take(len)?).ok()?).ok()?;
                let key: PublicKey = take(32)?.try_into().ok()?;
                let sig: Sig = take(64)?.try_into().ok()?;
                Some((node, Cert { key, sig }))
            }
            _ => return None,
        };
        let sig: Sig = take(64)?.try_into().ok()?;
        out.push(StoredSig { hash, cert, sig });
    }
}

/// Who wrote `op`, as the signatures prove: the admin (the CA signed the
/// actor's changes, or it is our own actor and we sign as the CA, or an
/// epoch's base or the genesis, whose actors no node can sign for), or
/// the node its actor names.
pub(crate) fn writer_of(sigs: &Signatures, op: &automerge::ObjId, own: &ActorId, own_admin: bool) -> Writer {
    let automerge::ObjId::Id(_, actor, _) = op else { return Writer::Admin };
    if (own_admin && actor == own) || sigs.is_admin(actor) {
        return Writer::Admin;
    }
    match node_of_actor(actor) {
        Some(n) if crate::schema::is_reserved(&n) => Writer::Admin,
        Some(n) => Writer::Node(n),
        None => Writer::Unknown,
    }
}

impl Engine {
    /// A story read from the document, each value checked against the
    /// schema and against what its writer may write (schema.rs).
    pub(crate) fn read_story_checked(
        &mut self,
        id: &crate::StoryId,
    ) -> (crate::doc::StoryRead, Vec<crate::schema::Refusal>) {
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        self.doc.read_story_checked(id, &|op| writer_of(sigs, op, &own, own_admin))
    }

    /// A story's state read again on top of `known` (`Doc::reread_state`).
    pub(crate) fn reread_state(
        &mut self,
        id: &crate::StoryId,
        known: &crate::StoryView,
    ) -> Option<(crate::doc::StoryRead, Vec<crate::schema::Refusal>)> {
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        self.doc.reread_state(id, known, &|op| writer_of(sigs, op, &own, own_admin))
    }

    /// A story's body, as the admin wrote it (it goes into prompts).
    pub(crate) fn read_body(&mut self, id: &crate::StoryId) -> String {
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        self.doc.read_body(id, &|op| writer_of(sigs, op, &own, own_admin))
    }

    /// Every story and node, read as [`Engine::read_story_checked`] reads.
    pub(crate) fn read_all(
        &mut self,
    ) -> (BTreeMap<crate::StoryId, crate::StoryView>, BTreeMap<NodeId, crate::NodeRecord>, crate::doc::Unreadable) {
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        self.doc.read_all_as(&|op| writer_of(sigs, op, &own, own_admin))
    }

    /// Shares `memo` with the other nodes of a simulation: each good
    /// change signature is then checked once per cluster ([`SigMemo`]).
    ///
    /// [`SigMemo`]: identity::SigMemo
    pub fn share_sig_memo(&mut self, memo: identity::SigMemo) {
        self.sigs.memo = Some(memo);
    }

    /// Whether we sign as the admin: the server (the CA holder that dials
    /// no rendezvous) does, with the CA's key.
    pub(crate) fn signs_as_admin(&self) -> bool {
        self.creds.ca_secret.is_some() && self.config.rendezvous.is_none()
    }

    fn sign(&mut self, hash: &ChangeHash) -> ChangeSig {
        if self.sigs.signer.is_none() {
            let signer = match self.creds.ca_secret {
                Some(ca) if self.signs_as_admin() => (Author::Ca, identity::ChangeSigner::new(&ca)),
                _ => (Author::Node(self.creds.cert.key), identity::ChangeSigner::new(&self.creds.secret)),
            };
            self.sigs.signer = Some(signer);
        }
        let (author, signer) = self.sigs.signer.as_ref().expect("set above");
        ChangeSig { author: *author, sig: signer.sign(&hash.0) }
    }

    /// Signs the changes we made since the last call. They are unsent (a
    /// sync follows the persist that calls this), so no other node's
    /// change depends on them: all of them are reachable from our heads
    /// through our own unsigned changes.
    pub(crate) fn sign_new_changes(&mut self) {
        let own = self.creds.cert;
        self.sigs.know_cert(&self.node.clone(), own);
        let mut stack = self.doc.heads();
        let mut seen = BTreeSet::new();
        while let Some(hash) = stack.pop() {
            if !seen.insert(hash) || self.sigs.get(&hash).is_some() {
                continue;
            }
            let Some(meta) = self.doc.automerge().get_change_meta_by_hash(&hash) else { continue };
            let (actor, deps) = (meta.actor.clone().into_owned(), meta.deps.clone());
            if node_of_actor(&actor).as_ref() != Some(&self.node) {
                continue;
            }
            let sig = self.sign(&hash);
            self.sigs.insert(hash, &actor, sig);
            stack.extend(deps);
        }
    }

    /// After a load: checks the stored signatures, signs every change of
    /// ours that has none (written before signing existed, or before a
    /// crash between the change and its signature), and reports whether
    /// another node's change is left unsigned.
    pub(crate) fn load_signatures(&mut self, blocks: &[Vec<u8>]) -> bool {
        let mut stored = Vec::new();
        for block in blocks {
            if parse_block(block, &mut stored).is_none() {
                let error = "a stored signature block is malformed; the entries before it are kept".to_owned();
                self.emit(crate::Event::StorageCorrupt { error });
            }
        }
        let own = self.creds.cert;
        self.sigs.know_cert(&self.node.clone(), own);
        for s in stored {
            let Some(meta) = self.doc.automerge().get_change_meta_by_hash(&s.hash) else { continue };
            let actor = meta.actor.clone().into_owned();
            let Some(node) = node_of_actor(&actor) else { continue };
            if let Ok(sig) = self.check_one(&node, &s.hash, s.cert.as_ref(), s.sig) {
                if let (Author::Node(_), Some((n, c))) = (sig.author, s.cert) {
                    self.sigs.know_cert(&n, c);
                }
                self.sigs.insert(s.hash, &actor, sig);
            }
        }
        let mut foreign_unsigned = false;
        let metas: Vec<(ChangeHash, ActorId)> =
            self.doc.automerge().get_changes_meta(&[]).into_iter().map(|m| (m.hash, m.actor.into_owned())).collect();
        for (hash, actor) in metas {
            if self.sigs.get(&hash).is_some() {
                continue;
            }
            match node_of_actor(&actor) {
                Some(n) if n == self.node => {
                    let sig = self.sign(&hash);
                    self.sigs.insert(hash, &actor, sig);
                }
                // The genesis and an epoch's base are checked otherwise.
                Some(n) if crate::schema::is_reserved(&n) => {}
                _ => foreign_unsigned = true,
            }
        }
        foreign_unsigned
    }

    /// Checks one signature of a change by `node`.
    fn check_one(
        &mut self,
        node: &NodeId,
        hash: &ChangeHash,
        cert: Option<&(NodeId, Cert)>,
        sig: Sig,
    ) -> Result<ChangeSig, Refused> {
        let author = match cert {
            None => {
                let ca = self.creds.ca;
                if !self.sigs.verify_change(&ca, hash, &sig) {
                    return Err(Refused::Peer(format!("change {} of {node}: bad CA signature", short(hash))));
                }
                return Ok(ChangeSig { author: Author::Ca, sig });
            }
            Some((cert_node, cert)) => {
                if cert_node != node {
                    let why = format!("change {} of {node} signed with the certificate of {cert_node}", short(hash));
                    return Err(Refused::Peer(why));
                }
                let known = self.sigs.certs.get(&cert.key).is_some_and(|(n, c)| n == node && c == cert);
                if !known {
                    if !identity::verify_cert(&self.creds.ca, node, cert) {
                        let why = format!("change {} of {node}: certificate not the CA's", short(hash));
                        return Err(Refused::Peer(why));
                    }
                    // Checked once: the CA's signature holds whatever the
                    // message it came in turns out to be.
                    self.sigs.know_cert(node, *cert);
                }
                if self.is_revoked(node, &cert.key) {
                    return Err(Refused::Revoked(node.clone()));
                }
                Author::Node(cert.key)
            }
        };
        let Author::Node(key) = author else { unreachable!("the CA case returned") };
        if !self.sigs.verify_change(&key, hash, &sig) {
            return Err(Refused::Peer(format!("change {} of {node}: bad signature", short(hash))));
        }
        Ok(ChangeSig { author, sig })
    }

    /// The signatures of the changes in a message we send, with the
    /// certificates they name.
    pub(crate) fn sigs_for(&self, msg: &sync::Message) -> ChangeSigs {
        let mut out = ChangeSigs::default();
        let mut index: BTreeMap<PublicKey, u16> = BTreeMap::new();
        for chunk in msg.changes.iter() {
            let hash = automerge::Change::from_bytes(chunk.to_vec()).ok().map(|c| c.hash());
            let entry = hash.and_then(|h| self.sigs.get(&h).copied());
            let signer = match entry {
                None => (Signer::None, [0; 64]),
                Some(ChangeSig { author: Author::Ca, sig }) => (Signer::Ca, sig),
                Some(ChangeSig { author: Author::Node(key), sig }) => {
                    let Some((node, cert)) = self.sigs.certs.get(&key) else { continue };
                    let next = out.certs.len() as u16;
                    let i = *index.entry(key).or_insert_with(|| {
                        out.certs.push((node.clone(), *cert));
                        next
                    });
                    (Signer::Cert(i), sig)
                }
            };
            out.sigs.push(signer);
        }
        assert_eq!(out.sigs.len(), msg.changes.len(), "one signature entry per change");
        out
    }

    /// Checks the signatures of an incoming message's changes; on success
    /// they are kept once the message is applied ([`Engine::keep_sigs`]).
    ///
    /// Changes of a revoked author, or of an author past its quota, are
    /// left out of the message (`Verdict::dropped`) and the rest applies:
    /// the peer that relays them is not at fault, and a message dropped
    /// whole would never be offered again on this link (Automerge does
    /// not resend what it sent once). Only the author's own link is
    /// refused for its quota.
    pub(crate) fn check_sigs(
        &mut self,
        peer: Option<&NodeId>,
        msg: &sync::Message,
        sigs: &ChangeSigs,
    ) -> Result<Verdict, Refused> {
        if sigs.sigs.len() != msg.changes.len() {
            let why = format!("{} change signatures for {} changes", sigs.sigs.len(), msg.changes.len());
            return Err(Refused::Peer(why));
        }
        let mut verdict = Verdict::default();
        // The admin's actors in this message: a node's change may write in
        // a story the same message adds.
        let mut admin_here = BTreeSet::new();
        for (i, (chunk, (signer, sig))) in msg.changes.iter().zip(&sigs.sigs).enumerate() {
            let parsed =
                std::panic::catch_unwind(|| automerge::Change::from_bytes(chunk.to_vec()).map_err(|e| e.to_string()));
            let change = match parsed {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(Refused::Peer(format!("a chunk that is not one change ({e})"))),
                Err(_) => return Err(Refused::Peer("a chunk that panics the change parser".into())),
            };
            let hash = change.hash();
            if self.sigs.get(&hash).is_some() {
                continue; // we have it: Automerge ignores it
            }
            let actor = change.actor_id().clone();
            let Some(node) = node_of_actor(&actor) else {
                return Err(Refused::Peer(format!("change {} by an actor that names no node", short(&hash))));
            };
            let cert = match signer {
                // Unsigned is fine only for what we hold unsigned (the
                // genesis, a base): the lookup is dear, so it comes last.
                Signer::None if self.doc.automerge().get_change_meta_by_hash(&hash).is_some() => continue,
                Signer::None => return Err(Refused::Peer(format!("change {} of {node} is unsigned", short(&hash)))),
                Signer::Ca => None,
                Signer::Cert(c) => match sigs.certs.get(usize::from(*c)) {
                    Some(cert) => Some(cert.clone()),
                    None => return Err(Refused::Peer(format!("change {} names no certificate", short(&hash)))),
                },
            };
            let checked_sig = match self.check_one(&node, &hash, cert.as_ref(), *sig) {
                Ok(s) => s,
                Err(Refused::Revoked(_)) => {
                    self.sigs.count_dropped(Dropped::Revoked);
                    verdict.dropped.push(i);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if checked_sig.author == Author::Ca {
                admin_here.insert(actor.clone());
            }
            // Decoding a peer's bytes may panic inside Automerge.
            let expanded = std::panic::catch_unwind(|| change.decode()).ok();
            if checked_sig.author != Author::Ca
                && let Some(why) = self.structure_refused(expanded.as_ref(), &node, &admin_here)
            {
                self.sigs.count_dropped(Dropped::Structure);
                // No honest node writes such a change, and every change of
                // its author from now on depends on this one, so none will
                // apply: the node is dead to us (its claims are reclaimed)
                // until it enrolls again.
                self.liveness.revoke(&node);
                self.refuse(crate::schema::Refusal {
                    key: format!("change {}", short(&hash)),
                    what: why,
                    writer: Some(node.to_string()),
                });
                verdict.dropped.push(i);
                continue;
            }
            if checked_sig.author != Author::Ca
                && let Err(e) = self.charge_author(&node, chunk.len())
            {
                if peer == Some(&node) {
                    return Err(e);
                }
                self.sigs.count_dropped(Dropped::Quota);
                verdict.dropped.push(i);
                continue;
            }
            // A change we hold (its signature was lost with a queue a
            // rebuild dropped) touches nothing new.
            let fresh = self.doc.automerge().get_change_meta_by_hash(&hash).is_none();
            let writes = expanded.as_ref().filter(|_| fresh).map(crate::doc::Writes::of);
            let bytes = fresh.then(|| chunk.to_vec());
            verdict.checked.push(Checked { hash, actor, sig: checked_sig, cert, writes, bytes });
        }
        Ok(verdict)
    }

    /// Why a node's change writes where only the server or another node
    /// writes, if it does.
    fn structure_refused(
        &mut self,
        expanded: Option<&automerge::ExpandedChange>,
        author: &NodeId,
        admin_here: &BTreeSet<ActorId>,
    ) -> Option<String> {
        let Some(expanded) = expanded else { return Some("a change that panics the change decoder".into()) };
        let (stories, nodes) = (self.doc.stories_obj().clone(), self.doc.nodes_obj().clone());
        let own = self.doc.automerge().get_actor().clone();
        let own_admin = self.signs_as_admin();
        let sigs = &self.sigs;
        let is_admin = |actor: &ActorId| {
            (own_admin && *actor == own)
                || sigs.is_admin(actor)
                || admin_here.contains(actor)
                || node_of_actor(actor).is_none_or(|n| crate::schema::is_reserved(&n))
        };
        let layout = crate::schema::Layout { stories: &stories, nodes: &nodes, is_admin: &is_admin };
        crate::schema::change_not_authorized(expanded, author, &layout)
    }

    /// Charges `len` bytes of new changes to `author`'s quota.
    fn charge_author(&mut self, author: &NodeId, len: usize) -> Result<(), Refused> {
        let (per_min, burst) = (self.config.author_bytes_per_min, self.config.author_bytes_burst);
        let now = self.now;
        let q = self.sigs.quotas.entry(author.clone()).or_insert(Quota { bytes: burst, refilled_at: now });
        let elapsed_ms = now.saturating_sub(q.refilled_at);
        if elapsed_ms > 0 {
            q.refilled_at = now;
            q.bytes = q.bytes.saturating_add(per_min.saturating_mul(elapsed_ms) / 60_000).min(burst);
        }
        match q.bytes.checked_sub(len as u64) {
            Some(left) => {
                q.bytes = left;
                Ok(())
            }
            None => Err(Refused::Quota { author: author.clone(), per_min }),
        }
    }

    pub(crate) fn keep_sigs(&mut self, checked: Vec<Checked>) {
        for Checked { hash, actor, sig, cert, writes, bytes } in checked {
            if let Some((node, cert)) = cert {
                self.sigs.know_cert(&node, cert);
            }
            if let Some(bytes) = bytes {
                self.doc.keep_sent_change(hash, bytes);
            }
            if let Some(writes) = writes {
                self.doc.note_writes(hash, writes);
            }
            self.sigs.insert(hash, &actor, sig);
        }
    }
}

fn short(hash: &ChangeHash) -> String {
    identity::hex(&hash.0[..6])
}
