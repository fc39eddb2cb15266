//! The JSON views served by `GET /api/status` and printed by the CLI.

use huskies_engine::{NodeId, StoryId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub claims: u64,
    pub reclaims: u64,
    pub claim_losses: u64,
    pub runs_started: u64,
    /// Runs stopped by the engine: claim lost, story moved, or hung.
    pub runs_stopped: u64,
    pub advanced: u64,
    pub runs_failed: u64,
    pub stale_results: u64,
    pub peers_rejected: u64,
    /// Our pushes a newer claim fenced at the remote.
    #[serde(default)]
    pub fenced: u64,
    /// Stories this node landed on the default branch, the batches it
    /// tested, and the stories it sent back (conflict, failed gate).
    #[serde(default)]
    pub landed: u64,
    #[serde(default)]
    pub land_batches: u64,
    #[serde(default)]
    pub land_conflicts: u64,
    #[serde(default)]
    pub land_gate_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoryStatus {
    pub id: StoryId,
    pub title: String,
    pub stage: String,
    pub token: u64,
    pub holder: Option<NodeId>,
    pub attempts: u32,
    pub failed: bool,
    pub last_result_by: Option<NodeId>,
    /// Why the last attempt failed.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub created_ms: u64,
    /// The default-branch commit that landed it.
    #[serde(default)]
    pub landed: Option<String>,
    /// Times landing sent it back to `current`.
    #[serde(default)]
    pub returns: u32,
    /// What its kept runs cost (micro-USD); filled on the board.
    #[serde(default)]
    pub cost_micro_usd: u64,
}

impl StoryStatus {
    pub fn of(id: &huskies_engine::StoryId, v: &huskies_engine::StoryView) -> StoryStatus {
        StoryStatus {
            id: id.clone(),
            title: v.title.clone(),
            stage: v.state.stage.to_string(),
            token: v.state.token.0,
            holder: v.state.holder.clone(),
            attempts: v.state.attempts,
            failed: v.state.failed,
            last_result_by: v.state.result.as_ref().map(|r| r.node.clone()),
            reason: v.state.reason.clone(),
            removed: v.state.removed,
            priority: v.priority,
            created_ms: v.created.0,
            landed: v.state.result.as_ref().and_then(|r| r.landed.clone()),
            returns: v.state.returns,
            cost_micro_usd: 0,
        }
    }
}

/// `GET /api/stories/{id}`: a story with its body and run history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoryDetail {
    #[serde(flatten)]
    pub story: StoryStatus,
    pub body: String,
    pub runs: Vec<huskies_engine::RunRecord>,
}

/// Body of `POST /api/stories/{id}/edit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EditStory {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
}

/// Answer of `GET /api/logs/{story}`: a slice of the newest run log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSlice {
    pub file: String,
    pub offset: u64,
    /// Bytes of log kept so far (the next offset to ask for when following).
    pub total: u64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub label: String,
    pub address: Option<String>,
    pub capacity: u32,
    pub alive: bool,
    /// The node's certified public key (hex).
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStatus {
    pub story: StoryId,
    pub stage: String,
    pub token: u64,
    /// What the agent is doing now, by its own stream (Claude Code's
    /// stream-json, Codex's events): its turn, tool and file or command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::agent_stream::Progress>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeId,
    pub label: String,
    pub peers: usize,
    /// The nodes this one is connected to (rendezvous and mesh).
    #[serde(default)]
    pub connected: Vec<NodeId>,
    pub mesh_peers: usize,
    pub stories: Vec<StoryStatus>,
    pub nodes: Vec<NodeStatus>,
    pub runs: Vec<RunStatus>,
    pub counters: Counters,
    /// The cluster settings in force here (set by the server).
    #[serde(default)]
    pub settings: Option<huskies_engine::ClusterSettings>,
    /// The stages this node runs agents for.
    #[serde(default)]
    pub stages: Vec<String>,
    /// Runs whose push a newer claim fenced at the remote: their work is
    /// kept on a side ref, named in `reason`.
    #[serde(default)]
    pub fenced: Vec<FencedRun>,
    /// The epoch of this node's document (see docs/design/history.md).
    #[serde(default)]
    pub epoch: u64,
    /// The cost ledger and budgets.
    #[serde(default)]
    pub costs: crate::costs::Costs,
    /// This node claims nothing for now: its agent's API refused it (the
    /// reason, and the seconds left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    /// Values of the document this node did not believe (schema.rs).
    #[serde(default)]
    pub refused: Refused,
}

/// Values refused: how many in all, and the newest with their writers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub total: u64,
    pub newest: Vec<huskies_engine::schema::Refusal>,
}

impl Refused {
    pub fn of(engine: &huskies_engine::Engine) -> Refused {
        let (newest, total) = engine.refusals();
        Refused { total, newest: newest.cloned().collect() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub reason: String,
    pub seconds_left: u64,
}

/// What the dashboard shows of the cluster, as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Board {
    pub node: String,
    pub is_server: bool,
    /// Every stage, in pipeline order (the board's columns).
    pub stages: Vec<String>,
    pub stories: Vec<StoryStatus>,
    pub nodes: Vec<BoardNode>,
    /// The nodes this one has a finished handshake with.
    pub connected: Vec<String>,
    pub counters: Counters,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub costs: crate::costs::Costs,
    /// This node's agents: what each is doing now.
    #[serde(default)]
    pub runs: Vec<RunStatus>,
    #[serde(default)]
    pub refused: Refused,
}

/// The merge queue: `GET /api/queue`, `huskies queue`, the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// Stories in `merge`, in the order they land (priority, then arrival).
    pub order: Vec<QueueItem>,
    /// Batches being tested now, one per merge node.
    pub testing: Vec<QueueBatch>,
    /// The last stories landed, newest first, as this node saw them land.
    pub landed: Vec<LandedItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub id: String,
    pub title: String,
    pub priority: i64,
    /// The merge node holding it.
    pub holder: Option<String>,
    /// Times landing sent it back so far.
    pub returns: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueBatch {
    pub node: String,
    pub batch: u64,
    pub stories: Vec<String>,
    /// Stories of other nodes' batches it is tested on top of.
    pub ahead: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandedItem {
    pub id: String,
    pub title: String,
    pub commit: String,
    pub node: String,
    /// Unix ms when this node saw it land; 0 when it landed before this
    /// node started.
    pub seen_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardNode {
    pub id: String,
    pub label: String,
    pub address: Option<String>,
    pub capacity: u32,
    pub alive: bool,
    pub revoked: bool,
    /// Stories it holds a claim on.
    pub holding: u32,
    /// Free agent slots, as its last heartbeat advertised.
    pub free_slots: Option<u32>,
    /// Since its newest heartbeat reached this node; `None`: never heard.
    pub heartbeat_age_ms: Option<u64>,
    /// This node has a live link to it.
    pub linked: bool,
    pub is_self: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FencedRun {
    pub story: String,
    pub node: String,
    pub token: u64,
    pub stage: String,
    pub reason: String,
}

/// Body of `POST /api/stories`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddStory {
    pub title: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub priority: i64,
}

/// Body of `POST /api/stories/{id}/move`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveStory {
    pub stage: String,
}

/// Body of `POST /api/join`: who is joining, and its public key (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node: String,
    pub key: String,
}

/// Answer to `POST /api/join`: the CA's public key, the node's certificate,
/// and the admin key's SHA-256 (for the node's own API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub ca: String,
    pub cert: String,
    pub admin_sha256: String,
}

/// Error body of every API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
