//! Engine configuration: everything that bounds or paces the engine.

use crate::{ConfigError, Stage};

/// Settings of one node. `Default` gives a sensible agent; validate with
/// [`Config::validate`] (the engine asserts it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where peers can reach this node (e.g. `ws://10.0.0.5:3101/crdt-sync`);
    /// `None` for nodes that accept no mesh connections.
    pub address: Option<String>,
    /// Human-readable label shown in `status`.
    pub label: String,
    /// Address of the rendezvous node to keep a connection to; `None` on the
    /// rendezvous itself.
    pub rendezvous: Option<String>,
    /// Most runs this node holds at once; 0 for a node that runs no agents.
    pub capacity: u32,
    /// The stages this node runs agents for.
    pub stages: Vec<Stage>,
    /// Cap on supplementary (non-rendezvous) outbound connections.
    pub max_mesh_peers: usize,
    /// Cap on all connections, inbound and outbound.
    pub max_peers: usize,
    pub heartbeat_interval_ms: u64,
    /// A node whose heartbeat does not advance for this long is dead and its
    /// claims may be reclaimed.
    pub claim_timeout_ms: u64,
    pub scan_interval_ms: u64,
    /// Extra wait per rank for nodes that are not a story's preferred node,
    /// so connected nodes rarely start the same story.
    pub claim_stagger_ms: u64,
    /// Wait between writing a claim and starting its run, so a concurrent
    /// claim can show up first (about two sync round trips).
    pub claim_settle_ms: u64,
    /// A run that reports nothing for this long is stopped and counted failed.
    pub run_timeout_ms: u64,
    /// Failed attempts after which a story is marked failed and left alone.
    pub max_attempts: u32,
    /// Local cool-down before this node retries a story that failed; doubles
    /// per attempt.
    pub retry_backoff_ms: u64,
    /// Least time between two sync messages to one peer; changes made
    /// meanwhile travel together.
    pub sync_interval_ms: u64,
    /// The same for mesh links while the rendezvous link is up.
    pub mesh_sync_interval_ms: u64,
    pub dial_backoff_min_ms: u64,
    pub dial_backoff_max_ms: u64,
    /// Largest envelope accepted from a peer or sent to one.
    pub max_message_bytes: usize,
    /// Incremental persists between full snapshots.
    pub snapshot_every: u32,
    /// The server starts a new epoch (a fresh document holding only the
    /// live state, see `epoch.rs`) once the current one holds this many
    /// changes; 0 never does. Bounds the history every sync walks.
    pub epoch_after_changes: u64,
    /// An epoch also holds at least this many changes per live story
    /// before the count cuts it (0: `epoch_after_changes` alone). A cut
    /// costs every node a read of every live story (the base, its carry,
    /// a fresh index), so with a large backlog a fixed count would cut
    /// ever more often per story done: at 10,000 live stories and 2,000
    /// changes it is a read of the whole pipeline on every node every
    /// 250 stories' work. In proportion, each cut is paid for by the
    /// changes it follows, and an epoch's history stays within a constant
    /// of its base's size.
    pub epoch_changes_per_live_story: u64,
    /// Budget of one sync message: its change bytes plus everything they
    /// inflate to. Stored bytes get 16 times this.
    pub max_inflated_bytes: usize,
    /// Sustained bytes per second one peer may send; bursts of up to one
    /// maximum message on top are allowed. Over it, the peer is refused.
    pub peer_bytes_per_sec: u64,
    /// Sustained messages per second one peer may send (bursts of twice
    /// that are allowed).
    pub peer_messages_per_sec: u64,
    /// Bytes of sync messages a peer may send while the document holds
    /// changes whose dependencies are missing; past it the peer is refused
    /// and those changes dropped.
    pub max_held_bytes: u64,
    /// Bytes of new changes one author other than the server may add to
    /// the document per minute, and in a burst (signing.rs). Past it the
    /// author's changes wait, and its own link is refused: a flood of
    /// stories or records from one node costs the others nothing.
    pub author_bytes_per_min: u64,
    pub author_bytes_burst: u64,
    /// This node's key, its certificate and the cluster CA to check peers
    /// against. `None` gives dev credentials derived from the node id (see
    /// `identity.rs`): for tests and simulations only.
    pub credentials: Option<crate::identity::Credentials>,
    /// Returns to `current` (a conflict or a failed gate at landing) after
    /// which a story is given up in the merge stage.
    pub max_returns: u32,
    /// Most stories landed (built and gated) together by one merge node.
    pub land_batch: usize,
    /// How long a queued story waits for merge runs of ours still on
    /// their way, so that stories claimed together land together.
    pub land_batch_wait_ms: u64,
    /// How long a merge node waits, per merge node ranked before it,
    /// before it forms a batch: enough for a car to reach every node, so
    /// batches formed together stack into one train (landing.rs,
    /// `formation_rank`).
    pub land_stagger_ms: u64,
    /// Per-stage overrides of `max_attempts` and `run_timeout_ms`.
    pub stage_limits: std::collections::BTreeMap<Stage, StageLimits>,
    /// No new claims once the cluster's agents cost this much in a UTC day
    /// (ledger.rs); a cluster setting.
    pub daily_budget_micro_usd: Option<u64>,
    /// A story whose kept runs cost this much is given up; a cluster
    /// setting.
    pub max_story_cost_micro_usd: Option<u64>,
}

/// Limits of one stage's runs; `None` keeps the node-wide value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageLimits {
    pub max_attempts: Option<u32>,
    pub run_timeout_ms: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: None,
            label: String::new(),
            rendezvous: None,
            capacity: 2,
            stages: Stage::ACTIVE.to_vec(),
            max_mesh_peers: 3,
            max_peers: 256,
            heartbeat_interval_ms: 1_000,
            claim_timeout_ms: 10_000,
            scan_interval_ms: 500,
            claim_stagger_ms: 1_500,
            claim_settle_ms: 500,
            run_timeout_ms: 60 * 60 * 1_000,
            max_attempts: 3,
            retry_backoff_ms: 5_000,
            sync_interval_ms: 20,
            mesh_sync_interval_ms: 500,
            dial_backoff_min_ms: 250,
            dial_backoff_max_ms: 30_000,
            max_message_bytes: 32 << 20,
            snapshot_every: 512,
            epoch_after_changes: 2_000,
            epoch_changes_per_live_story: 2,
            max_inflated_bytes: 64 << 20,
            peer_bytes_per_sec: 16 << 20,
            peer_messages_per_sec: 2_000,
            max_held_bytes: 64 << 20,
            author_bytes_per_min: 1 << 20,
            author_bytes_burst: 4 << 20,
            credentials: None,
            max_returns: 5,
            land_batch: 4,
            land_batch_wait_ms: 1_000,
            land_stagger_ms: 200,
            stage_limits: std::collections::BTreeMap::new(),
            daily_budget_micro_usd: None,
            max_story_cost_micro_usd: None,
        }
    }
}

impl Config {
    pub fn max_attempts_for(&self, stage: Stage) -> u32 {
        self.stage_limits.get(&stage).and_then(|l| l.max_attempts).unwrap_or(self.max_attempts)
    }

    pub fn run_timeout_for(&self, stage: Stage) -> u64 {
        self.stage_limits.get(&stage).and_then(|l| l.run_timeout_ms).unwrap_or(self.run_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("claim_timeout_ms", self.claim_timeout_ms),
            ("scan_interval_ms", self.scan_interval_ms),
            ("run_timeout_ms", self.run_timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("dial_backoff_min_ms", self.dial_backoff_min_ms),
            ("snapshot_every", u64::from(self.snapshot_every)),
            ("max_peers", self.max_peers as u64),
            ("peer_bytes_per_sec", self.peer_bytes_per_sec),
            ("peer_messages_per_sec", self.peer_messages_per_sec),
            ("max_held_bytes", self.max_held_bytes),
            ("author_bytes_per_min", self.author_bytes_per_min),
            ("author_bytes_burst", self.author_bytes_burst),
            ("land_batch", self.land_batch as u64),
            ("max_returns", u64::from(self.max_returns)),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.heartbeat_interval_ms * 3 > self.claim_timeout_ms {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat_ms: self.heartbeat_interval_ms,
                timeout_ms: self.claim_timeout_ms,
            });
        }
        if self.dial_backoff_min_ms > self.dial_backoff_max_ms {
            return Err(ConfigError::BackoffRange { min: self.dial_backoff_min_ms, max: self.dial_backoff_max_ms });
        }
        if self.max_inflated_bytes < self.max_message_bytes {
            return Err(ConfigError::InflationBelowMessageCap {
                inflated: self.max_inflated_bytes,
                message: self.max_message_bytes,
            });
        }
        for l in self.stage_limits.values() {
            if l.max_attempts == Some(0) {
                return Err(ConfigError::Zero { field: "max_attempts" });
            }
            if l.run_timeout_ms == Some(0) {
                return Err(ConfigError::Zero { field: "run_timeout_ms" });
            }
        }
        if self.max_message_bytes < 64 << 10 {
            return Err(ConfigError::MessageCapTooSmall(self.max_message_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_caps_mesh_at_three() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.max_mesh_peers, 3);
    }

    #[test]
    fn rejects_heartbeat_slower_than_a_third_of_timeout() {
        let c = Config { heartbeat_interval_ms: 5_000, claim_timeout_ms: 10_000, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::HeartbeatTooSlow { .. })));
        let c = Config { scan_interval_ms: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "scan_interval_ms" }));
    }
}
