//! The engine's timers: every deadline it asks the driver for, and why it
//! exists. [`Engine::poll_timeout`] is the earliest armed one; feeding
//! `Input::Timeout` early or twice is harmless, since each part checks its
//! own deadlines when the timeout comes.

use crate::{Engine, Millis};

/// Why the engine wants the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A dial target (the rendezvous or a mesh peer) is due for a dial
    /// again: its backoff after a failure or a hang-up is over.
    Dial,
    /// A connection owes a sync message and its pacing interval is over:
    /// changes are batched per interval instead of sent per input.
    Sync,
    /// A claim's settling window ended: concurrent claims had time to
    /// arrive, and the run starts if ours still wins.
    Settle,
    /// A landing batch waited its time for more merge-stage stories.
    Batch,
    /// Our heartbeat is due: without one for a claim timeout, peers call
    /// us dead and reclaim our stories.
    Heartbeat,
    /// The periodic scan: run deadlines, orphaned claims, liveness of
    /// holders, the mesh, free stories to claim, and the epoch cut.
    Scan,
}

/// The periodic scan (`Engine::scan`): runs expire, orphans are adopted,
/// liveness, the mesh and claims are reconsidered, an epoch may be cut.
///
/// A story that becomes free while we have a free slot asks for a scan of
/// claims alone, a few sync rounds later (`claims_at`; `Engine::apply_story`
/// says why not at once): waiting for the next full scan put
/// half a scan interval (p50 about 0.6 s in fleet-bench) between a story's
/// add and its first claim. The full scan's other work keeps its pace.
#[derive(Debug)]
pub(crate) struct Scan {
    next_at: Millis,
    claims_at: Option<Millis>,
}

impl Scan {
    pub fn new(now: Millis) -> Scan {
        Scan { next_at: now, claims_at: None }
    }

    /// The next scan of either kind.
    pub fn next_at(&self) -> Millis {
        self.claims_at.map_or(self.next_at, |at| at.min(self.next_at))
    }

    /// Is the full scan due?
    pub fn is_due(&self, now: Millis) -> bool {
        now >= self.next_at
    }

    /// Is a scan of claims alone due (and the full scan not)?
    pub fn claims_due(&self, now: Millis) -> bool {
        self.claims_at.is_some_and(|at| now >= at)
    }

    /// A story became claimable: scan the claims at `at` at the latest.
    pub fn claims_soon(&mut self, at: Millis) {
        self.claims_at = Some(self.claims_at.map_or(at, |old| old.min(at)));
    }

    /// The claims were scanned (alone, or in the full scan).
    pub fn claims_ran(&mut self) {
        self.claims_at = None;
    }

    /// Something changed that the scan reacts to: it runs at the next
    /// timeout rather than a scan interval later.
    pub fn run_now(&mut self, now: Millis) {
        self.next_at = now;
    }

    /// The scan ran: the next one comes `after_ms` later.
    pub fn ran(&mut self, now: Millis, after_ms: u64) {
        self.next_at = now.saturating_add_ms(after_ms);
    }
}

impl Engine {
    /// Every armed timer and its deadline, in `Timer` order. Nothing is
    /// armed before storage is loaded.
    pub fn timers(&self) -> impl Iterator<Item = (Timer, Millis)> + '_ {
        let armed = self.is_ready();
        [
            (Timer::Dial, self.peers.next_dial_at()),
            (Timer::Sync, self.peers.next_sync_at()),
            (Timer::Settle, self.claims.next_settle_at()),
            (Timer::Batch, self.next_batch_at()),
            (Timer::Heartbeat, Some(self.beat.next_at())),
            (Timer::Scan, Some(self.scan.next_at())),
        ]
        .into_iter()
        .filter_map(move |(timer, at)| Some((timer, at.filter(|_| armed)?)))
    }

    /// The earliest armed timer (the first in `Timer` order on a tie).
    #[must_use]
    pub fn poll_timer(&self) -> Option<(Timer, Millis)> {
        self.timers().min_by_key(|(timer, at)| (*at, *timer))
    }

    /// When to feed `Input::Timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.poll_timer().map(|(_, at)| at)
    }
}
