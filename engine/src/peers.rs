//! Connections: hello, Automerge sync, heartbeat gossip, dialing with
//! backoff, and the capped mesh.

pub(crate) mod links;
pub(crate) mod receive;

pub(crate) use links::{Backoff, Conn, DialTarget, Peers, Purpose};

use automerge::sync::{self, SyncDoc};

use crate::hash::stable_hash;
use crate::identity::{self, Cert};
use crate::liveness::News;
use crate::liveness::chain::ChainCheck;
use crate::signing::Refused;
use crate::wire::{BeatProof, Envelope, Heartbeat};
use crate::{ConnId, Engine, Event, NodeId, Output, RejectKind};

impl Engine {
    pub(crate) fn handle_peer_connected(&mut self, conn: ConnId) {
        if !self.is_ready() || self.peers.conn(conn).is_some() {
            self.outbox.push(Output::HangUp { conn });
            return;
        }
        let target = if conn.is_outbound() {
            match self.peers.target_of(conn) {
                Some(addr) => Some(addr.clone()),
                // Not ours (dropped target, or a driver mix-up).
                None => {
                    self.outbox.push(Output::HangUp { conn });
                    return;
                }
            }
        } else {
            if self.peers.len() >= self.config.max_peers {
                self.reject(conn, RejectKind::PeerLimit, format!("peer limit {} reached", self.config.max_peers));
                return;
            }
            None
        };
        let ((_, bytes_cap), (_, messages_cap)) = self.budget_caps();
        let budget = crate::defence::PeerBudget::new(self.now, bytes_cap, messages_cap);
        let mut our_nonce = [0u8; 32];
        for chunk in our_nonce.chunks_mut(8) {
            chunk.copy_from_slice(&self.random_u64().to_be_bytes());
        }
        self.peers.open(
            conn,
            Conn {
                target,
                node: None,
                our_nonce,
                hello: None,
                peer_key: None,
                epoch: None,
                sent_base: None,
                sync: sync::State::new(),
                next_sync_at: self.now,
                budget,
                held_bytes: 0,
                mesh: Default::default(),
            },
        );
        let epoch = self.doc.epoch();
        let hello =
            Envelope::Hello { node: self.node.clone(), nonce: our_nonce, cert: self.creds.cert, epoch }.encode();
        self.outbox.push(Output::Send { conn, bytes: hello });
    }

    pub(crate) fn handle_peer_closed(&mut self, conn: ConnId) {
        let rendezvous = self.peers.is_rendezvous_link(conn);
        // Back off the target first: it still points at this conn.
        self.back_off(conn, None);
        if let Some(c) = self.peers.close(conn) {
            self.emit(Event::PeerDown { conn, node: c.node });
        }
        self.mesh_takes_over(rendezvous);
    }

    /// The rendezvous link (`was_rendezvous`) is gone: the mesh, quiet
    /// while it carried the changes, is the main path now, at once.
    fn mesh_takes_over(&mut self, was_rendezvous: bool) {
        if was_rendezvous && !self.peers.has_rendezvous_link() {
            self.peers.owe_sync_all();
        }
    }

    /// The outbound `conn` ended (failed dial, close or rejection): schedule
    /// the next dial of its target with exponential backoff and jitter.
    fn back_off(&mut self, conn: ConnId, fixed_ms: Option<u64>) {
        let jitter = self.random_u64();
        let (min_ms, max_ms) = (self.config.dial_backoff_min_ms, self.config.dial_backoff_max_ms);
        self.peers.back_off(conn, self.now, Backoff { min_ms, max_ms, jitter, fixed_ms });
    }

    /// Disconnects a peer that broke the protocol. The node keeps running.
    pub(crate) fn reject(&mut self, conn: ConnId, kind: RejectKind, reason: String) {
        tracing::warn!(node = %self.node, ?conn, %reason, "disconnecting peer");
        // A misbehaving peer is retried only after the longest backoff.
        let rendezvous = self.peers.is_rendezvous_link(conn);
        self.back_off(conn, Some(self.config.dial_backoff_max_ms));
        self.peers.close(conn);
        self.mesh_takes_over(rendezvous);
        self.outbox.push(Output::HangUp { conn });
        self.emit(Event::PeerRejected { conn, kind, reason });
    }

    pub(crate) fn handle_peer_message(&mut self, conn: ConnId, bytes: &[u8]) {
        if !self.charge_peer(conn, bytes.len()) {
            return;
        }
        let Some(c) = self.peers.conn(conn) else { return };
        let (established, greeted) = (c.node.is_some(), c.hello.is_some());
        let env = match Envelope::decode(bytes, self.config.max_message_bytes) {
            Ok(env) => env,
            Err(e) => return self.reject(conn, RejectKind::Malformed, e.to_string()),
        };
        match env {
            Envelope::Hello { node, nonce, cert, epoch } if !established && !greeted => {
                self.handle_hello(conn, node, nonce, cert, epoch)
            }
            Envelope::Hello { .. } => self.reject(conn, RejectKind::Protocol, "second hello".into()),
            Envelope::Auth { sig } if greeted && !established => self.handle_auth(conn, &sig),
            Envelope::Auth { .. } => self.reject(conn, RejectKind::Protocol, "auth without a hello, or twice".into()),
            _ if !established => {
                self.reject(conn, RejectKind::Protocol, "message before the handshake completed".into())
            }
            Envelope::Sync { sigs, message } => self.handle_sync(conn, &sigs, &message, false),
            Envelope::Pull { sigs, message } => self.handle_sync(conn, &sigs, &message, true),
            Envelope::Epoch { epoch, sig, base } => self.handle_epoch(conn, epoch, sig, base),
            Envelope::Heads(heads) => self.handle_heads(conn, heads),
            Envelope::Heartbeats(beats) => {
                for hb in beats {
                    if self.peers.conn(conn).is_none() {
                        break; // rejected by an earlier beat
                    }
                    self.handle_heartbeat(conn, hb);
                }
            }
        }
    }

    /// The peer says who it is: check its certificate and answer its
    /// challenge. It counts as that node only once its own proof arrives.
    fn handle_hello(&mut self, conn: ConnId, node: NodeId, nonce: [u8; 32], cert: Cert, epoch: u64) {
        if node == self.node {
            return self.reject(conn, RejectKind::Identity, "peer claims our own node id".into());
        }
        if !identity::verify_cert(&self.creds.ca, &node, &cert) {
            return self.reject(
                conn,
                RejectKind::Identity,
                format!("hello from {node} carries no certificate of this cluster's CA"),
            );
        }
        if self.is_revoked(&node, &cert.key) {
            return self.reject(conn, RejectKind::Revoked, format!("node {node} was revoked"));
        }
        let target = self.peers.conn(conn).and_then(|c| c.target.clone());
        if let Some(t) = target.as_ref().and_then(|a| self.peers.target(a))
            && let Purpose::Mesh(expected) = &t.purpose
            && *expected != node
        {
            let reason = format!("dialed {expected} but {node} answered");
            return self.reject(conn, RejectKind::Identity, reason);
        }
        let Some(c) = self.peers.conn_mut(conn) else { return };
        c.hello = Some((node.clone(), cert.key, nonce));
        c.epoch = Some(epoch);
        let proof = identity::auth_message(&nonce, &c.our_nonce, &self.node, &node);
        let sig = self.creds.sign(&proof);
        self.outbox.push(Output::Send { conn, bytes: Envelope::Auth { sig }.encode() });
    }

    /// The peer's proof that it holds the key its hello named.
    fn handle_auth(&mut self, conn: ConnId, sig: &identity::Sig) {
        let Some(c) = self.peers.conn(conn) else { return };
        let Some((node, key, their_nonce)) = c.hello.clone() else { return };
        assert_ne!(node, self.node, "a hello naming us was refused before its proof");
        if !identity::verify_auth(&key, sig, &their_nonce, &c.our_nonce, &self.node, &node) {
            return self.reject(conn, RejectKind::Identity, format!("{node} failed to prove its key"));
        }
        // A revocation may have arrived between its hello and this proof.
        if self.is_revoked(&node, &key) {
            return self.reject(conn, RejectKind::Revoked, format!("node {node} was revoked"));
        }
        if let Some(addr) = c.target.clone() {
            self.peers.target_reached(&addr, &node);
        }
        if let Some(c) = self.peers.conn_mut(conn) {
            c.node = Some(node.clone());
            c.peer_key = Some(key);
        }
        self.learn_key(&node, key);
        self.liveness.note_seen(&node, self.now);
        self.emit(Event::PeerUp { conn, node });
        // Sync within an epoch; a peer behind us gets our base first, a
        // peer ahead sends us its own.
        let theirs = self.peers.conn(conn).and_then(|c| c.epoch);
        match theirs.cmp(&Some(self.doc.epoch())) {
            std::cmp::Ordering::Equal => self.peers.owe_sync(conn),
            std::cmp::Ordering::Less => self.send_base(conn),
            std::cmp::Ordering::Greater => {}
        }
    }

    /// A sync message; `pull` when a mesh peer asks for an answer.
    fn handle_sync(&mut self, conn: ConnId, sigs: &crate::wire::ChangeSigs, raw: &[u8], pull: bool) {
        // A sync message of another epoch's document is not for ours: it
        // was in flight when one of us moved on. Dropped, not refused.
        if self.peers.conn(conn).and_then(|c| c.epoch) != Some(self.doc.epoch()) {
            return;
        }
        // A mesh peer that pulls from us is answered; a message that
        // answers our own pull is not (or the two would never stop).
        if pull
            && !self.is_primary(conn)
            && let Some(c) = self.peers.conn_mut(conn)
        {
            c.mesh.answer_owed = true;
        }
        // Automerge trusts the fields of a sync message; hold them to what
        // an honest peer sends before it sees a byte.
        if let Err(e) = crate::guard::check_sync_message(raw, self.config.max_inflated_bytes) {
            return self.reject(conn, RejectKind::Sync, format!("sync message refused: {e}"));
        }
        let mut msg = match self.shielded(conn, "decode", |_| sync::Message::decode(raw)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return self.reject(conn, RejectKind::Sync, format!("bad sync message: {e}")),
            None => return,
        };
        // Without the flags Automerge takes the peer for a v1 speaker and
        // never sends it a whole document, whose changes could not be
        // checked one by one (signing.rs).
        msg.flags = None;
        let peer = self.peers.conn(conn).and_then(|c| c.node.clone());
        let verdict = match self.check_sigs(peer.as_ref(), &msg, sigs) {
            Ok(verdict) => verdict,
            Err(Refused::Peer(why)) => {
                return self.reject(conn, RejectKind::Sync, format!("sync message refused: {why}"));
            }
            Err(Refused::Quota { author, per_min }) => {
                self.sigs.count_dropped(crate::signing::Dropped::Quota);
                let why = format!("{author} is over its quota of {per_min} bytes of new changes a minute");
                return self.reject(conn, RejectKind::Budget, why);
            }
            // `check_sigs` leaves a revoked author's changes out instead.
            Err(Refused::Revoked(node)) => {
                debug_assert!(false, "a revoked author's change refused the message: {node}");
                return;
            }
        };
        if !verdict.dropped.is_empty() {
            tracing::debug!(node = %self.node, conn = conn.0, left_out = verdict.dropped.len(), "changes of revoked or over-quota authors left out");
            let kept: Vec<Vec<u8>> = msg
                .changes
                .iter()
                .enumerate()
                .filter(|(i, _)| !verdict.dropped.contains(i))
                .map(|(_, c)| c.to_vec())
                .collect();
            msg.changes = kept.into();
        }
        let checked = verdict.checked;
        let heads_before = self.doc.heads();
        let received = self.shielded(conn, "receive_sync_message", |engine| {
            let c = engine.peers.conn_mut(conn)?;
            Some(receive::receive_sync_message(engine.doc.automerge(), &mut c.sync, msg))
        });
        match received {
            Some(Some(Ok(()))) => self.keep_sigs(checked),
            Some(Some(Err(e))) => return self.reject(conn, RejectKind::Sync, format!("sync message rejected: {e}")),
            Some(None) | None => return,
        }
        // Changes whose dependencies never arrive wait in Automerge's
        // queue, in memory, for ever: an honest peer's gap closes within a
        // round or two (a bloom filter's false positive), a hostile one's
        // never does. Past the bound the peer is refused and the queue
        // dropped (the document reloads from what is persisted, which
        // holds everything but this message).
        let holding = !self.doc.automerge().get_missing_deps(&[]).is_empty();
        let max_held = self.config.max_held_bytes;
        let held = self.peers.conn_mut(conn).map_or(0, |c| {
            c.held_bytes = if holding { c.held_bytes.saturating_add(raw.len() as u64) } else { 0 };
            c.held_bytes
        });
        if held > max_held {
            let expected = self.saved.heads().to_vec();
            self.rebuild_document(&expected);
            return self.reject(
                conn,
                RejectKind::Budget,
                format!("{held} bytes of changes whose dependencies never came (the bound is {max_held})"),
            );
        }
        if self.doc.heads() != heads_before {
            self.doc.mark_unpersisted();
            self.absorb_remote_changes();
        }
        if self.peers.conn(conn).is_some() {
            self.peers.owe_sync(conn);
        }
    }

    /// Sends the sync messages that are due. Pacing matters: Automerge
    /// walked the whole change history for every sync message it received
    /// (`receive.rs` now asks a clock instead), so one message per change
    /// per peer made a 20-node claim storm quadratic (measured: 40% of its
    /// time in `remove_ancestors`), and every message still costs a merge.
    pub(crate) fn flush_sync(&mut self) {
        for conn in self.peers.take_due_syncs(self.now) {
            self.send_sync(conn);
        }
    }

    /// Is `conn` on the main path? Agents sync with the rendezvous at full
    /// pace. Mesh links, while a rendezvous link is up, send only their
    /// heads when those change (at most one envelope per
    /// `mesh_sync_interval_ms`), and sync only what the rendezvous did not
    /// bring (`mesh_wants_sync`): every link syncing every change
    /// multiplied the sync work by the mesh degree. Without a rendezvous
    /// link, the mesh is the main path.
    fn is_primary(&self, conn: ConnId) -> bool {
        let hub = self.config.rendezvous.is_none();
        hub || self.peers.is_rendezvous_link(conn) || !self.peers.has_rendezvous_link()
    }

    fn send_sync(&mut self, conn: ConnId) {
        let primary = self.is_primary(conn);
        let interval = if primary { self.config.sync_interval_ms } else { self.config.mesh_sync_interval_ms };
        let now = self.now;
        let epoch = self.doc.epoch();
        let Some(c) = self.peers.conn_mut(conn) else { return };
        if c.node.is_none() || c.epoch != Some(epoch) {
            return;
        }
        c.next_sync_at = now.saturating_add_ms(interval);
        let mesh = self.config.rendezvous.is_some() && !self.peers.is_rendezvous_link(conn);
        let lacking = mesh && self.still_lacking(conn);
        let answer = self.peers.conn(conn).is_some_and(|c| c.mesh.answer_owed);
        if !primary && !lacking && !answer {
            return self.send_heads(conn);
        }
        // What we send must carry its signatures: changes made in this
        // input are signed here if the persist has not done it yet.
        self.sign_new_changes();
        let mut generated = self.generate_sync(conn);
        if generated.is_none() && lacking {
            // We lack what the peer has, yet Automerge has nothing to say
            // (a message of ours in flight that the peer never answered):
            // start this link's sync over.
            if let Some(c) = self.peers.conn_mut(conn) {
                c.sync = sync::State::new();
            }
            generated = self.generate_sync(conn);
        }
        let heads = self.doc.heads();
        if let Some(c) = self.peers.conn_mut(conn) {
            c.mesh.answer_owed = false;
            if generated.is_some() {
                c.mesh.sent = heads;
            }
        }
        if let Some(mut msg) = generated {
            // Advertise no v2 capability (signing.rs): a peer that took us
            // at our word would answer with whole documents we refuse.
            msg.flags = None;
            let sigs = self.sigs_for(&msg);
            let message = msg.encode();
            // On a mesh link a message that wants an answer says so: ours
            // while we lack what the peer announced, all of them while we
            // have no rendezvous link (the mesh is our main path, and a
            // peer that has one answers only pulls).
            let pull = mesh && (primary || lacking);
            let bytes = if pull { Envelope::Pull { sigs, message } } else { Envelope::Sync { sigs, message } }.encode();
            self.peers.count_sync(primary, bytes.len());
            self.outbox.push(Output::Send { conn, bytes });
        }
    }

    /// The peer's last message shaped this sync state (its bloom filter is
    /// probed here): a panic is that peer's doing.
    fn generate_sync(&mut self, conn: ConnId) -> Option<sync::Message> {
        let generated = self.shielded(conn, "generate_sync_message", |engine| {
            let c = engine.peers.conn_mut(conn)?;
            engine.doc.automerge().sync().generate_sync_message(&mut c.sync)
        });
        generated.flatten()
    }

    /// Whether we still lack heads this mesh peer announced (and their
    /// dependencies): then we pull from it. The rendezvous brings them
    /// first almost always; when it does not, the mesh takes over.
    fn still_lacking(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.peers.conn(conn) else { return false };
        if c.mesh.lacking.is_empty() {
            return false;
        }
        let lacking = c.mesh.lacking.clone();
        let still = self.missing_of(&lacking);
        let Some(c) = self.peers.conn_mut(conn) else { return false };
        c.mesh.lacking = still;
        !c.mesh.lacking.is_empty()
    }

    /// What of `heads` (and their dependencies) we lack, beyond what
    /// changes already queued here wait for: those the main path's own
    /// sync asks for, and counting them made every mesh link sync
    /// whenever a change arrived ahead of its dependencies.
    fn missing_of(&mut self, heads: &[automerge::ChangeHash]) -> Vec<automerge::ChangeHash> {
        let am = self.doc.automerge();
        let mut missing = am.get_missing_deps(heads);
        if !missing.is_empty() {
            let queued: std::collections::BTreeSet<_> = am.get_missing_deps(&[]).into_iter().collect();
            missing.retain(|h| !queued.contains(h));
        }
        missing
    }

    /// Our heads to a mesh peer, when they changed since we last told it.
    fn send_heads(&mut self, conn: ConnId) {
        let mut heads = self.doc.heads();
        heads.truncate(crate::wire::MAX_HEADS);
        let Some(c) = self.peers.conn_mut(conn) else { return };
        if c.mesh.sent == heads {
            return;
        }
        let bytes = Envelope::Heads(heads.iter().map(|h| h.0).collect()).encode();
        c.mesh.sent = heads;
        self.peers.count_heads(bytes.len());
        self.outbox.push(Output::Send { conn, bytes });
    }

    /// A mesh peer's heads. Those we lack are looked at again a mesh
    /// interval from now: by then the rendezvous has usually brought them.
    fn handle_heads(&mut self, conn: ConnId, heads: Vec<[u8; 32]>) {
        if self.peers.conn(conn).and_then(|c| c.epoch) != Some(self.doc.epoch()) {
            return;
        }
        let heads: Vec<automerge::ChangeHash> = heads.into_iter().map(automerge::ChangeHash).collect();
        let lacking = self.missing_of(&heads);
        let later = self.now.saturating_add_ms(self.config.mesh_sync_interval_ms);
        let Some(c) = self.peers.conn_mut(conn) else { return };
        c.mesh.lacking = lacking;
        if !c.mesh.lacking.is_empty() {
            c.next_sync_at = c.next_sync_at.max(later);
            self.peers.owe_sync(conn);
        }
    }

    fn handle_heartbeat(&mut self, from: ConnId, hb: Heartbeat) {
        if hb.node == self.node || !self.liveness.is_news(&hb) {
            return;
        }
        // Only beats signed by their node count or travel on. A beat of a
        // node whose key we have not learned yet is dropped (its record is
        // on its way); a beat that fails its key's check was forged or
        // corrupted by the peer that sent it, since relays check first.
        let Some(keys) = self.members.keys_of(&hb.node) else { return };
        let chains = self.liveness.chains();
        let forged = match &hb.proof {
            BeatProof::Signed(sig) => {
                chains.count_signature(true);
                (!keys.iter().any(|k| identity::verify_beat(k, &hb, sig))).then_some("a bad signature")
            }
            // One hash for a chain we know; its signature once for one we
            // do not (liveness/chain.rs).
            BeatProof::Chain { chain, link } => match chains.check(&hb, chain, link) {
                ChainCheck::Verified => None,
                ChainCheck::Forged(why) => Some(why),
                ChainCheck::Unknown => {
                    chains.count_signature(false);
                    if !keys.iter().any(|k| identity::verify_beat_chain(k, &hb, chain)) {
                        Some("a chain with a bad signature")
                    } else {
                        (!chains.adopt(&hb, chain, link)).then_some("a link that is not of its chain")
                    }
                }
            },
        };
        if let Some(why) = forged {
            return self.reject(from, RejectKind::Heartbeat, format!("heartbeat of {} with {why}", hb.node));
        }
        match self.liveness.handle_heartbeat(&hb, self.now) {
            News::Stale => {}
            // Relayed with our next beat, once, to everyone but the sender:
            // the flood costs one envelope per link per interval.
            News::Routine => {
                self.peers.relay_later(hb, from);
            }
            // A node that freed a slot must be known at once, or two nodes
            // that both think the other busy claim the same story.
            News::Urgent => {
                if hb.seq == crate::liveness::LEAVING_SEQ {
                    // Its stories are free now: scan at once, not at the
                    // next interval.
                    self.scan.run_now(self.now);
                }
                self.peers.drop_relay(&hb.node);
                let bytes = Envelope::Heartbeats(vec![hb]).encode();
                let to: Vec<ConnId> = self.peers.established().map(|(id, _)| id).filter(|id| *id != from).collect();
                for conn in to {
                    self.peers.count_beats(bytes.len());
                    self.outbox.push(Output::Send { conn, bytes: bytes.clone() });
                }
            }
        }
    }

    /// Sends our beat, plus the relays gathered since the last one when
    /// `with_relays` (the periodic beat; a beat sent early because our free
    /// slots changed carries only our own).
    /// Our last beat, to every peer: we are leaving, our stories are free.
    pub(crate) fn leave(&mut self) -> Result<crate::Reply, crate::CommandError> {
        if self.lifecycle == crate::engine::Lifecycle::Running {
            self.lifecycle = crate::engine::Lifecycle::Leaving;
        }
        self.beat.leave();
        self.send_heartbeat(false);
        // Stop what runs here; the driver stops its processes too.
        self.drop_all_runs();
        Ok(crate::Reply::Left)
    }

    pub(crate) fn send_heartbeat(&mut self, with_relays: bool) {
        // After our goodbye a later beat would be refused anyway.
        let Some((seq, free_slots)) = self.beat.next(self.free_slots()) else { return };
        let (node, incarnation, creds) = (&self.node, self.incarnation, &self.creds);
        let proof = self.beat.proof(
            seq,
            free_slots,
            || creds.sign(&identity::beat_message(node, incarnation, seq, free_slots)),
            |start| {
                crate::liveness::chain::OwnChain::new(&creds.secret, node, incarnation, start, free_slots, |m| {
                    creds.sign(m)
                })
            },
        );
        let own = Heartbeat { node: self.node.clone(), incarnation: self.incarnation, seq, free_slots, proof };
        let relay = if with_relays { self.peers.take_relays() } else { Default::default() };
        let to: Vec<ConnId> = self.peers.established().map(|(id, _)| id).collect();
        for conn in to {
            let mut beats = vec![own.clone()];
            beats.extend(relay.values().filter(|(_, from)| *from != conn).map(|(hb, _)| hb.clone()));
            for chunk in beats.chunks(crate::wire::MAX_HEARTBEATS) {
                let bytes = Envelope::Heartbeats(chunk.to_vec()).encode();
                self.peers.count_beats(bytes.len());
                self.outbox.push(Output::Send { conn, bytes });
            }
        }
    }

    pub(crate) fn dial_due(&mut self) {
        for (conn, address) in self.peers.dial_due(self.now) {
            self.outbox.push(Output::Dial { conn, address });
        }
    }

    /// Keeps at most `max_mesh_peers` supplementary connections, to the live
    /// peers ranked highest by a hash of the pair: deterministic, spread
    /// evenly, and stable while membership is stable.
    pub(crate) fn reconcile_mesh(&mut self) {
        let now = self.now;
        let rendezvous_addr = self.config.rendezvous.as_deref();
        let mut ranked: Vec<(u64, NodeId, String)> = self
            .liveness
            .alive(now)
            .filter(|(n, _)| **n != self.node && Some(*n) != self.peers.rendezvous_node())
            .filter_map(|(n, _)| {
                let addr = self.index.node(n)?.address.clone()?;
                if Some(addr.as_str()) == rendezvous_addr {
                    return None;
                }
                let (a, b) = if *n < self.node { (n, &self.node) } else { (&self.node, n) };
                Some((stable_hash(&[a.as_str().as_bytes(), b.as_str().as_bytes()]), n.clone(), addr))
            })
            .collect();
        ranked.sort();
        ranked.truncate(self.config.max_mesh_peers);
        // Drop targets no longer wanted.
        let unwanted: Vec<String> = self
            .peers
            .targets()
            .filter(|(addr, t)| match &t.purpose {
                Purpose::Mesh(n) => !ranked.iter().any(|(_, rn, ra)| rn == n && ra == *addr),
                Purpose::Rendezvous => false,
            })
            .map(|(a, _)| a.clone())
            .collect();
        for addr in unwanted {
            if let Some(conn) = self.peers.remove_target(&addr) {
                self.outbox.push(Output::HangUp { conn });
            }
        }
        for (_, node, addr) in ranked {
            // A peer that already dialed us is a link as good as our own.
            let inbound = self.peers.established().any(|(id, n)| !id.is_outbound() && *n == node);
            if !inbound && !self.peers.has_target(&addr) {
                self.peers.add_target(addr, DialTarget::new(Purpose::Mesh(node), now));
            }
        }
        assert!(self.peers.mesh_peer_count() <= self.config.max_mesh_peers);
    }

    pub fn mesh_peer_count(&self) -> usize {
        self.peers.mesh_peer_count()
    }
}
