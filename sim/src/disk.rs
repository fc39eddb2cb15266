//! The simulated disk: writes that take time, and crashes that lose what was
//! not confirmed.
//!
//! The production driver (`net/src/node.rs`) writes on a thread of its own
//! and keeps feeding the engine inputs meanwhile; their outputs wait behind
//! the write. A disk with latency puts the sims on that path. As that
//! writer does, the disk commits in groups: everything queued when a flush
//! starts goes down with it and is confirmed when it ends. A crash drops
//! every write not yet landed. Of the group in flight a prefix may have
//! landed (unconfirmed), and the write the crash cut ends as the real
//! storage (`net/src/storage.rs`) would leave it:
//!
//! | cut | on disk after the crash |
//! |---|---|
//! | append | nothing (the torn record fails its hash and is cut on load), or the record whole but unconfirmed |
//! | snapshot | the old snapshot and log (the rename never happened), the new snapshot over the old log (the log was not yet cut), or the new snapshot alone |
//! | epoch move | the old document, the old document archived with the old document still live (torn), or the move whole |

use std::collections::VecDeque;

use huskies_engine::hash::stable_hash;
use huskies_engine::testkit::Disk;
use huskies_engine::{PersistKind, PersistSeq};

/// How long a write takes: `min_ms` plus a draw up to `spread_ms`, and one
/// write in `stall_every` stalls for `stall_ms` more (a busy device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub min_ms: u64,
    pub spread_ms: u64,
    pub stall_every: u64,
    pub stall_ms: u64,
}

impl Latency {
    /// An SSD's fsync under load, with a stall now and then.
    pub fn ssd() -> Latency {
        Latency { min_ms: 1, spread_ms: 15, stall_every: 20, stall_ms: 250 }
    }
}

struct Write {
    seq: PersistSeq,
    kind: PersistKind,
    bytes: Vec<u8>,
}

/// The group being flushed: the first `writes` of the queue, durable (and,
/// if the node lives, confirmed) at local ms `done_ms`.
#[derive(Clone, Copy)]
struct Flush {
    writes: usize,
    done_ms: u64,
}

/// What a crash did to the write in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashLoss {
    /// Writes issued and never landed, the one in flight included.
    pub lost: u64,
    /// The write in flight left half done (a snapshot over the old log, an
    /// epoch archived but not moved).
    pub torn: u64,
    /// The write in flight landed whole, its confirmation lost.
    pub unconfirmed: u64,
}

pub struct SimDisk {
    /// What survives a crash.
    pub stored: Disk,
    /// `None`: every write is durable at once (confirmed in the same step).
    pub latency: Option<Latency>,
    /// Issued, not yet landed, in order.
    queue: VecDeque<Write>,
    flush: Option<Flush>,
    rng: u64,
    writes: u64,
    flushes: u64,
    pub losses: CrashLoss,
}

impl SimDisk {
    /// `forget_archives`: for every node but the server, whose cold
    /// storage alone the final checks read ([`Disk::forget_archives`]).
    pub fn new(latency: Option<Latency>, seed: u64, forget_archives: bool) -> SimDisk {
        let mut stored = Disk::default();
        stored.forget_archives = forget_archives;
        SimDisk {
            stored,
            latency,
            queue: VecDeque::new(),
            flush: None,
            flushes: 0,
            rng: stable_hash(&[b"disk", &seed.to_be_bytes()]),
            writes: 0,
            losses: CrashLoss::default(),
        }
    }

    fn draw(&mut self) -> u64 {
        self.rng = stable_hash(&[&self.rng.to_be_bytes()]);
        self.rng
    }

    /// Queues a write issued at local time `now_ms`. Writes land in order;
    /// a flush starts when the one before it ends, and takes what is queued.
    pub fn issue(&mut self, seq: PersistSeq, kind: PersistKind, bytes: Vec<u8>, now_ms: u64) {
        if self.latency.is_none() {
            self.stored.apply(kind, bytes);
            return;
        }
        self.writes += 1;
        assert!(self.queue.back().is_none_or(|w| w.seq < seq), "writes issued out of order");
        self.queue.push_back(Write { seq, kind, bytes });
        if self.flush.is_none() {
            self.start_flush(now_ms);
        }
    }

    /// A flush of everything queued, starting at `at_ms`.
    fn start_flush(&mut self, at_ms: u64) {
        let l = self.latency.expect("only a slow disk flushes");
        let mut took = l.min_ms + self.draw() % (l.spread_ms + 1);
        if l.stall_every > 0 && self.draw().is_multiple_of(l.stall_every) {
            took += l.stall_ms;
        }
        self.flushes += 1;
        self.flush = Some(Flush { writes: self.queue.len(), done_ms: at_ms + took });
    }

    /// When the flush in progress ends.
    pub fn next_done_ms(&self) -> Option<u64> {
        self.flush.map(|f| f.done_ms)
    }

    /// Lands every flush done by `now_ms`; the last write's seq confirms
    /// everything before it.
    pub fn land_due(&mut self, now_ms: u64) -> Option<PersistSeq> {
        let mut confirmed = None;
        while let Some(f) = self.flush.filter(|f| f.done_ms <= now_ms) {
            for w in self.queue.drain(..f.writes).collect::<Vec<_>>() {
                self.stored.apply(w.kind, w.bytes);
                confirmed = Some(w.seq);
            }
            self.flush = None;
            if !self.queue.is_empty() {
                self.start_flush(f.done_ms);
            }
        }
        confirmed
    }

    /// The process died: every write not landed is gone. Of the group in
    /// flight a prefix landed, unconfirmed, and the write the crash cut
    /// ends lost, half done or whole.
    pub fn crash(&mut self) -> CrashLoss {
        let mut loss = CrashLoss::default();
        let Some(flush) = self.flush.take() else {
            assert!(self.queue.is_empty(), "writes queued with no flush");
            return loss;
        };
        let landed = (self.draw() % (flush.writes as u64 + 1)) as usize;
        for w in self.queue.drain(..landed).collect::<Vec<_>>() {
            self.stored.apply(w.kind, w.bytes);
            loss.unconfirmed += 1;
        }
        let Some(front) = self.queue.pop_front() else { return self.count(loss) };
        loss.lost = self.queue.len() as u64;
        self.queue.clear();
        match (self.draw() % 3, front.kind) {
            (0, _) => loss.lost += 1,
            (1, PersistKind::Snapshot) => {
                // Renamed into place; the crash came before the log was cut.
                self.stored.apply_snapshot_over_log(front.bytes);
                loss.torn += 1;
            }
            (1, PersistKind::Epoch { epoch }) => {
                self.stored.apply_torn_epoch(epoch);
                loss.torn += 1;
            }
            // An append's torn record is cut off on load: lost.
            (1, PersistKind::Append) => loss.lost += 1,
            _ => {
                self.stored.apply(front.kind, front.bytes);
                loss.unconfirmed += 1;
            }
        }
        self.count(loss)
    }

    fn count(&mut self, loss: CrashLoss) -> CrashLoss {
        self.losses.lost += loss.lost;
        self.losses.torn += loss.torn;
        self.losses.unconfirmed += loss.unconfirmed;
        loss
    }

    /// Every write issued under latency.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Flushes made: writes per flush is how much group commit saved.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }
}
