//! Websocket-like connections over madsim datagrams.
//!
//! madsim's `Endpoint` delivers datagrams with random latency (so they can
//! reorder) and drops them while a link is clogged. The engine expects what
//! a websocket over TCP gives: frames in order and without holes while the
//! connection is up, and the whole connection dropped otherwise. This layer
//! provides exactly that: per-connection sequence numbers, a reorder buffer,
//! and closing the connection (both sides eventually see `PeerClosed`) when a
//! hole does not fill within `gap_timeout_ms` or the peer goes silent for
//! `idle_timeout_ms`, as a TCP reset or a ping timeout would.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use huskies_engine::ConnId;

/// What travels between simulated nodes. Link ids are random per node
/// incarnation, so packets for a connection of a previous life are
/// recognised as strangers and answered with `Close`.
#[derive(Debug, Clone)]
pub enum Packet {
    Open {
        from: u64,
    },
    Accept {
        to: u64,
        from: u64,
    },
    Data {
        to: u64,
        from: u64,
        seq: u64,
        bytes: Vec<u8>,
    },
    Close {
        to: u64,
    },
    /// A user command for the node (from the scenario, as a CLI would).
    Command(huskies_engine::Command),
}

#[derive(Debug)]
struct Link {
    peer: SocketAddr,
    /// The peer's id for this link; `None` while our dial is unanswered.
    remote: Option<u64>,
    conn: ConnId,
    next_send: u64,
    next_recv: u64,
    reorder: BTreeMap<u64, Vec<u8>>,
    gap_since_ms: Option<u64>,
    last_heard_ms: u64,
    opened_ms: u64,
}

/// Links closed by their timers, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resets {
    /// A dial went unanswered.
    pub dial: u64,
    /// A hole in the sequence did not fill: a datagram was lost.
    pub gap: u64,
    /// The peer went silent.
    pub idle: u64,
}

impl Resets {
    pub fn add(&mut self, other: Resets) {
        self.dial += other.dial;
        self.gap += other.gap;
        self.idle += other.idle;
    }
}

/// Something the node must tell its engine.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Connected(ConnId),
    Message(ConnId, Vec<u8>),
    Closed(ConnId),
}

pub struct Links {
    prefix: u64,
    next: u64,
    links: BTreeMap<u64, Link>,
    by_conn: BTreeMap<ConnId, u64>,
    next_inbound: u64,
    pub dial_timeout_ms: u64,
    pub gap_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Packets to send: (destination, packet).
    pub outbox: Vec<(SocketAddr, Packet)>,
}

impl Link {
    fn new(peer: SocketAddr, remote: Option<u64>, conn: ConnId, now_ms: u64) -> Link {
        Link {
            peer,
            remote,
            conn,
            next_send: 0,
            next_recv: 0,
            reorder: BTreeMap::new(),
            gap_since_ms: None,
            last_heard_ms: now_ms,
            opened_ms: now_ms,
        }
    }
}

impl Links {
    pub fn new(prefix: u32, idle_timeout_ms: u64) -> Links {
        Links {
            prefix: u64::from(prefix) << 32,
            next: 0,
            links: BTreeMap::new(),
            by_conn: BTreeMap::new(),
            next_inbound: 0,
            dial_timeout_ms: 500,
            gap_timeout_ms: 100,
            idle_timeout_ms,
            outbox: Vec::new(),
        }
    }

    fn alloc(&mut self) -> u64 {
        self.next += 1;
        self.prefix | self.next
    }

    fn insert(&mut self, id: u64, link: Link) {
        self.by_conn.insert(link.conn, id);
        self.links.insert(id, link);
    }

    fn remove(&mut self, id: u64) -> Option<Link> {
        let link = self.links.remove(&id)?;
        self.by_conn.remove(&link.conn);
        Some(link)
    }

    pub fn dial(&mut self, conn: ConnId, peer: SocketAddr, now_ms: u64) {
        let id = self.alloc();
        self.insert(id, Link::new(peer, None, conn, now_ms));
        self.outbox.push((peer, Packet::Open { from: id }));
    }

    pub fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(&id) = self.by_conn.get(&conn) else { return };
        let Some(link) = self.links.get_mut(&id) else { return };
        let Some(to) = link.remote else { return };
        let seq = link.next_send;
        link.next_send += 1;
        self.outbox.push((link.peer, Packet::Data { to, from: id, seq, bytes }));
    }

    /// The engine hung up: tell the peer, no event back to the engine.
    pub fn hang_up(&mut self, conn: ConnId) {
        let Some(&id) = self.by_conn.get(&conn) else { return };
        if let Some(link) = self.remove(id)
            && let Some(to) = link.remote
        {
            self.outbox.push((link.peer, Packet::Close { to }));
        }
    }

    fn close(&mut self, id: u64, events: &mut Vec<LinkEvent>) {
        if let Some(link) = self.remove(id) {
            if let Some(to) = link.remote {
                self.outbox.push((link.peer, Packet::Close { to }));
            }
            events.push(LinkEvent::Closed(link.conn));
        }
    }

    pub fn handle_packet(&mut self, from: SocketAddr, packet: Packet, now_ms: u64, events: &mut Vec<LinkEvent>) {
        match packet {
            Packet::Open { from: remote } => {
                let id = self.alloc();
                self.next_inbound += 1;
                let conn = ConnId(self.next_inbound);
                self.insert(id, Link::new(from, Some(remote), conn, now_ms));
                self.outbox.push((from, Packet::Accept { to: remote, from: id }));
                events.push(LinkEvent::Connected(conn));
            }
            Packet::Accept { to, from: remote } => match self.links.get_mut(&to) {
                Some(link) if link.peer == from && link.remote.is_none() => {
                    link.remote = Some(remote);
                    link.last_heard_ms = now_ms;
                    events.push(LinkEvent::Connected(link.conn));
                }
                // Already accepted by the peer's first data (it overtook
                // this accept).
                Some(link) if link.peer == from && link.remote == Some(remote) => {}
                _ => self.outbox.push((from, Packet::Close { to: remote })),
            },
            Packet::Data { to, from: remote, seq, bytes } => {
                // Datagrams reorder: the peer's first data can overtake its
                // accept. It names the peer's link, so it accepts our dial
                // just as well (a TCP handshake never loses this race).
                if let Some(link) = self.links.get_mut(&to)
                    && link.peer == from
                    && link.remote.is_none()
                {
                    link.remote = Some(remote);
                    events.push(LinkEvent::Connected(link.conn));
                }
                let Some(link) = self.links.get_mut(&to).filter(|l| l.peer == from && l.remote == Some(remote)) else {
                    // A stranger (we restarted, or already closed): reset it.
                    self.outbox.push((from, Packet::Close { to: remote }));
                    return;
                };
                link.last_heard_ms = now_ms;
                if seq < link.next_recv {
                    return;
                }
                link.reorder.insert(seq, bytes);
                while let Some(bytes) = link.reorder.remove(&link.next_recv) {
                    link.next_recv += 1;
                    events.push(LinkEvent::Message(link.conn, bytes));
                }
                link.gap_since_ms = if link.reorder.is_empty() { None } else { link.gap_since_ms.or(Some(now_ms)) };
            }
            Packet::Close { to } => {
                if self.links.get(&to).is_some_and(|l| l.peer == from)
                    && let Some(link) = self.remove(to)
                {
                    events.push(LinkEvent::Closed(link.conn));
                }
            }
            Packet::Command(_) => {}
        }
    }

    /// Closes links whose dial went unanswered, whose hole did not fill, or
    /// whose peer went silent; how many of each.
    pub fn handle_timeout(&mut self, now_ms: u64, events: &mut Vec<LinkEvent>) -> Resets {
        let mut resets = Resets::default();
        let dead: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| {
                let why = if l.remote.is_none() && now_ms >= l.opened_ms + self.dial_timeout_ms {
                    &mut resets.dial
                } else if l.gap_since_ms.is_some_and(|g| now_ms >= g + self.gap_timeout_ms) {
                    &mut resets.gap
                } else if now_ms >= l.last_heard_ms + self.idle_timeout_ms {
                    &mut resets.idle
                } else {
                    return false;
                };
                *why += 1;
                true
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.close(id, events);
        }
        resets
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.links
            .values()
            .map(|l| {
                let mut d = l.last_heard_ms + self.idle_timeout_ms;
                if l.remote.is_none() {
                    d = d.min(l.opened_ms + self.dial_timeout_ms);
                }
                if let Some(g) = l.gap_since_ms {
                    d = d.min(g + self.gap_timeout_ms);
                }
                d
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    /// Two link tables wired back to back; returns the packets delivered.
    fn pump(a: &mut Links, b: &mut Links, now: u64, ev_a: &mut Vec<LinkEvent>, ev_b: &mut Vec<LinkEvent>) {
        for _ in 0..4 {
            for (_, p) in std::mem::take(&mut a.outbox) {
                b.handle_packet(addr(1), p, now, ev_b);
            }
            for (_, p) in std::mem::take(&mut b.outbox) {
                a.handle_packet(addr(2), p, now, ev_a);
            }
        }
    }

    #[test]
    fn data_overtaking_the_accept_connects() {
        let (mut a, mut b) = (Links::new(1, 1_000), Links::new(2, 1_000));
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        let conn = ConnId(1 << 63 | 1);
        a.dial(conn, addr(2), 0);
        for (_, p) in std::mem::take(&mut a.outbox) {
            b.handle_packet(addr(1), p, 0, &mut eb);
        }
        let inbound = match eb[0] {
            LinkEvent::Connected(c) => c,
            _ => panic!(),
        };
        b.send(inbound, vec![7]);
        let mut pkts = std::mem::take(&mut b.outbox);
        pkts.reverse(); // the data first, then the accept
        for (_, p) in pkts {
            a.handle_packet(addr(2), p, 1, &mut ea);
        }
        assert_eq!(ea, vec![LinkEvent::Connected(conn), LinkEvent::Message(conn, vec![7])]);
        assert!(a.outbox.is_empty(), "no reset sent");
    }

    #[test]
    fn ordered_delivery_and_hole_closes() {
        let (mut a, mut b) = (Links::new(1, 1_000), Links::new(2, 1_000));
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        let conn = ConnId(1 << 63 | 1);
        a.dial(conn, addr(2), 0);
        pump(&mut a, &mut b, 0, &mut ea, &mut eb);
        assert_eq!(ea, vec![LinkEvent::Connected(conn)]);
        let inbound = match eb[0] {
            LinkEvent::Connected(c) => c,
            _ => panic!(),
        };
        // Deliver seq 1 before seq 0: held back, then both in order.
        for k in 0..3u8 {
            a.send(conn, vec![k]);
        }
        let mut pkts = std::mem::take(&mut a.outbox);
        pkts.swap(0, 1);
        let lost = pkts.pop().unwrap();
        eb.clear();
        for (_, p) in pkts {
            b.handle_packet(addr(1), p, 10, &mut eb);
        }
        assert_eq!(eb, vec![LinkEvent::Message(inbound, vec![0]), LinkEvent::Message(inbound, vec![1])]);
        // Seq 3 arrives but 2 was lost: the hole closes the connection.
        drop(lost);
        a.send(conn, vec![3]);
        for (_, p) in std::mem::take(&mut a.outbox) {
            b.handle_packet(addr(1), p, 20, &mut eb);
        }
        eb.clear();
        b.handle_timeout(20 + b.gap_timeout_ms, &mut eb);
        assert_eq!(eb, vec![LinkEvent::Closed(inbound)]);
        pump(&mut a, &mut b, 200, &mut ea, &mut eb);
        assert_eq!(ea.last(), Some(&LinkEvent::Closed(conn)));
    }
}
