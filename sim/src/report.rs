//! What one seed's run reports: phases, counts, landing figures, and the
//! violations the oracle found.

use crate::oracle::Oracle;

#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    /// The profile the seed drew, in full.
    pub profile: String,
    /// Simulated time each phase took.
    pub phases: Vec<(&'static str, u64)>,
    pub violations: Vec<crate::violation::Violation>,
    /// The faults injected, listed when a seed fails.
    pub faults: Vec<String>,
    pub trace_hash: huskies_engine::testkit::TraceHash,
    pub sim_ms: u64,
    pub wall_ms: u64,
    /// Simulated time from heal to converged and finished.
    pub heal_ms: Option<u64>,
    pub starts: u64,
    /// Of `starts`, per stage: current, qa, merge.
    pub starts_by_stage: [u64; 3],
    /// Runs failed by a landing (0), or a wait in the queue (1), outliving
    /// the run timeout.
    pub landing_timeouts: [u64; 2],
    /// Stories given up: out of attempts.
    pub given_up: u64,
    pub reclaims: u64,
    pub claim_losses: u64,
    /// Pushes the simulated remote fenced (a newer claim ended the branch).
    pub fenced: u64,
    pub max_mesh_peers: usize,
    pub stories_done: usize,
    /// Stories archived: in cold storage or (until the next cut) live.
    pub stories_archived: usize,
    /// The server's epoch at the end, and moves to a new epoch that a
    /// scripted death tore in half.
    pub epoch: u64,
    pub torn_epochs: u64,
    pub idle_save_len: Option<(usize, usize)>,
    pub landing: Landing,
    /// Writes issued to slow disks, and what crashes did to them.
    pub disk_writes: u64,
    /// Links closed by their timers, over all nodes.
    pub link_resets: crate::link::Resets,
    /// Sync messages and bytes sent, over all nodes and incarnations.
    pub sync_sent: huskies_engine::SyncSent,
    /// Merges read whole because a change applied unnoted, over all nodes.
    pub full_reads: u64,
    /// Nodes in the cluster, the server included.
    pub nodes: usize,
    /// Heartbeats checked (each a signature check before hash chains),
    /// signatures checked and chain links hashed, over all nodes and
    /// incarnations.
    pub beats_checked: u64,
    pub beat_signatures: u64,
    pub beat_hashes: u64,
    pub disk_flushes: u64,
    pub disk_losses: crate::disk::CrashLoss,
    /// Restarts whose disk was checked against what the node had revealed.
    pub restarts_checked: u64,
}

/// What the merge queue did in a run.
#[derive(Debug, Clone, Default)]
pub struct Landing {
    /// Stories on the default branch at the end.
    pub landed: u64,
    /// Landings nodes reported (a story found landed already counts again).
    pub landed_events: u64,
    pub sent_back: u64,
    pub batches: u64,
    pub batch_stories: u64,
    pub retries: u64,
    pub splits: u64,
    /// Batches tested on top of another node's, and batches called off.
    pub speculative: u64,
    pub cancelled: u64,
    /// Batches called off, by why (the engines' own counts).
    pub call_offs: huskies_engine::landing::CallOffs,
    pub gate_runs: u64,
    pub gate_failures: u64,
    /// Simulated ms from a story reaching `merge` to landing: p50, p95.
    pub p50_ms: u64,
    pub p95_ms: u64,
    /// Simulated ms from the first story reaching `merge` to the last
    /// landing.
    pub span_ms: u64,
}

impl Landing {
    /// Stories landed per simulated hour.
    pub fn per_hour(&self) -> f64 {
        self.landed as f64 * 3_600_000.0 / self.span_ms.max(1) as f64
    }
}

pub(crate) fn landing_figures(o: &Oracle) -> Landing {
    let mut lat = o.landed_after_ms.clone();
    lat.sort_unstable();
    let pct = |p: usize| lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    Landing {
        landed: o.trunk.landed().len() as u64,
        landed_events: o.landed,
        sent_back: o.sent_back,
        batches: o.batches,
        batch_stories: o.batch_stories,
        retries: o.retries,
        splits: o.splits,
        speculative: o.speculative_batches,
        cancelled: o.cancelled_batches,
        call_offs: Default::default(),
        gate_runs: o.trunk.gate_runs,
        gate_failures: o.trunk.gate_failures,
        p50_ms: pct(50),
        p95_ms: pct(95),
        span_ms: o.last_landed_ms.saturating_sub(o.first_merge_ms.unwrap_or(0)),
    }
}
