//! What goes into the engine and what comes out.

use crate::{CommandError, CommandId, ConnId, NodeId, Stage, StoryId, Token};

/// One input to [`crate::Engine::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The persisted document bytes (snapshot followed by appended
    /// increments; empty on first start). Must be the first input: until it
    /// arrives the engine dials nobody and refuses commands.
    StorageLoaded { bytes: Vec<u8> },
    /// A connection is up: an inbound one the driver accepted (driver-chosen
    /// id without the top bit), or one the engine asked for with `Dial`.
    PeerConnected { conn: ConnId },
    /// One binary frame from the peer.
    PeerMessage { conn: ConnId, bytes: Vec<u8> },
    /// The connection is gone, or a `Dial` failed.
    PeerClosed { conn: ConnId },
    /// The agent command for a started run exited (or was stopped).
    RunFinished { story: StoryId, token: Token, outcome: RunOutcome, report: crate::runs::RunReport },
    /// The push asked for by `Output::Push` completed.
    PushFinished { story: StoryId, token: Token, outcome: Result<(), PushError> },
    /// Answer to `Output::InspectWorktree`: does the story's worktree hold
    /// committed work from before a restart?
    WorktreeInspected { story: StoryId, token: Token, committed: bool },
    /// The landing asked for by `Output::Land` applied its stories and is
    /// about to run the gates: the stories it left out are decided now, not
    /// a gate run later (given again after each rebuild; optional).
    LandBuilt { batch: crate::landing::BatchId, left_out: crate::landing::LeftOut },
    /// The landing asked for by `Output::Land` is over.
    LandFinished { batch: crate::landing::BatchId, report: crate::landing::LandReport },
    /// A user command; answered by exactly one `Output::Reply`.
    Command { id: CommandId, command: Command },
    /// The time from `poll_timeout` has come (early or spurious is harmless).
    Timeout,
    /// The wall clock, in Unix milliseconds: the driver sends it at start
    /// and now and then. Only the cost ledger's day and the daily budget
    /// read it; every other rule runs on the monotonic `now`.
    WallClock { unix_ms: u64 },
    /// Every `Output::Persist` up to and including `seq` is durable. The
    /// outputs that reveal that state are released only now.
    Persisted { seq: PersistSeq },
}

/// Numbers the engine's `Persist` outputs, from 1, in the order they must
/// be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PersistSeq(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed {
        reason: String,
    },
    /// The agent could not work for a reason of this node, not of the
    /// story: its API refused the key, stayed overloaded or rate-limited
    /// past the driver's retries. The claim is released without counting
    /// an attempt, and this node claims nothing for a while (doubling),
    /// so nodes that can work take the story.
    Unavailable {
        reason: String,
    },
}

/// Why a push did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// A newer claim (or work huskies did not push) holds the story's
    /// branch at the remote: ours was kept on the side ref `kept`.
    Fenced { by_token: Option<Token>, kept: String },
    /// The remote could not be reached or refused for another reason.
    Failed(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Fenced { by_token: Some(t), kept } => {
                write!(f, "fenced at the remote by token {}; this run's work is kept on {kept}", t.0)
            }
            PushError::Fenced { by_token: None, kept } => {
                write!(f, "fenced at the remote by commits huskies did not push; this run's work is kept on {kept}")
            }
            PushError::Failed(why) => write!(f, "push failed: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Adds a story; the id is derived from the title when not given.
    AddStory(NewStory),
    /// Changes a story's title, body or priority (what is `Some`).
    EditStory { id: StoryId, title: Option<String>, body: Option<String>, priority: Option<i64> },
    /// Removes a story: any run of it is fenced off and stopped, and a
    /// tombstone stays (listed as removed, never claimed).
    RemoveStory { id: StoryId },
    /// Clears a story's failed mark and attempts with a new token, so it is
    /// claimed again in its stage.
    RetryStory { id: StoryId },
    /// Moves a story; bumps its token so that any run of it is fenced off,
    /// and clears its attempts and failed mark.
    MoveStory { id: StoryId, stage: Stage },
    /// Revokes the node's current key (server only): every node refuses it
    /// from then on and its stories are reclaimed at once.
    RevokeNode { node: NodeId },
    /// Records that `node` joined with `cert` (server, at join), so every
    /// node knows its key before it connects.
    EnrollNode { node: NodeId, cert: crate::identity::Cert },
    /// Writes the cluster settings every node adopts (server only; the
    /// revision is assigned). Equal values write nothing.
    SetClusterSettings { settings: crate::ClusterSettings },
    /// The stages this node runs agents for (its configuration changed).
    SetStages { stages: Vec<Stage> },
    /// The node is shutting down: tell every peer (a signed last beat), so
    /// its stories are reclaimed at once, and stop claiming and running.
    Leave,
}

/// A story to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewStory {
    /// Derived from the title when `None`.
    pub id: Option<StoryId>,
    pub title: String,
    pub stage: Stage,
    /// Markdown, at most [`crate::MAX_BODY_LEN`] bytes.
    pub body: String,
    /// Higher is claimed first.
    pub priority: i64,
    /// When, by the adding node's wall clock (an order for "oldest first").
    pub created: crate::UnixMs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Added {
        id: StoryId,
    },
    Edited {
        id: StoryId,
    },
    Removed {
        id: StoryId,
        token: Token,
    },
    Retried {
        id: StoryId,
        token: Token,
    },
    Moved {
        id: StoryId,
        from: Stage,
        to: Stage,
        token: Token,
    },
    Revoked {
        node: NodeId,
    },
    Enrolled {
        node: NodeId,
    },
    /// The cluster settings revision now in force.
    Settings {
        revision: u64,
    },
    Stages {
        stages: Vec<Stage>,
    },
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistKind {
    /// The whole document: replaces everything stored before.
    Snapshot,
    /// New changes: append to what is stored.
    Append,
    /// A new epoch's document: move everything stored (the previous
    /// epoch's document) to cold storage as epoch `epoch - 1`, then store
    /// this as the snapshot. A crash between the two leaves the previous
    /// epoch in place, which peers bring forward again.
    Epoch { epoch: u64 },
}

/// One output from [`crate::Engine::poll_output`]. Drivers execute them in
/// order. What depends on unsaved state cannot go out early by mistake: it
/// is not even handed over until the driver confirms the `Persist` before
/// it with [`Input::Persisted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Make `bytes` durable (in `seq` order), then feed
    /// `Input::Persisted { seq }`.
    Persist {
        seq: PersistSeq,
        kind: PersistKind,
        bytes: Vec<u8>,
    },
    Send {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Open a connection to `address`; report `PeerConnected` or
    /// `PeerClosed` with this `conn`.
    Dial {
        conn: ConnId,
        address: String,
    },
    /// Close the connection; no `PeerClosed` needs to follow.
    HangUp {
        conn: ConnId,
    },
    /// Run the agent command for `stage` on the story's worktree.
    StartRun {
        story: StoryId,
        title: String,
        stage: Stage,
        token: Token,
        attempt: u32,
        /// The story's body (markdown).
        body: String,
        /// Why the previous attempt in this stage failed.
        last_failure: Option<String>,
        /// A reclaim: the dead holder and its claim's token, so the run
        /// can start from that claim's pushed progress and say it resumes.
        resume: Option<(NodeId, Token)>,
    },
    /// Stop a run: another node won the claim, a user moved the story, or it
    /// hung past `run_timeout_ms`. No `RunFinished` is needed afterwards.
    StopRun {
        story: StoryId,
        token: Token,
    },
    /// Push the story's branch under this claim (the remote's tip decides
    /// against `token`: a newer claim there fences this push); answer with
    /// `PushFinished`.
    Push {
        story: StoryId,
        token: Token,
        stage: Stage,
    },
    /// Land a batch of merge-stage stories on the default branch: build
    /// its tip plus each story (in this order), run the gates on the
    /// result, and move the default branch there by compare-and-swap on
    /// the tip that was tested; answer with `LandFinished`.
    Land {
        batch: crate::landing::BatchId,
        stories: Vec<crate::landing::LandStory>,
        /// Stories of other nodes' batches, not landed yet, to build under
        /// ours (in this order, skipping any found landed): the tree is
        /// tested as it will be once they land, and ours lands only on the
        /// commit they become. Empty: build on the default branch's tip.
        ahead: Vec<crate::landing::LandStory>,
        /// This batch failed its gates once already (a gate may be flaky).
        retry: bool,
    },
    /// Stop landing `batch` (a story ahead of it will not land as tested):
    /// kill its gates, push nothing more, and answer with `LandFinished`
    /// as soon as possible.
    CancelLand {
        batch: crate::landing::BatchId,
    },
    /// Answer with `WorktreeInspected`.
    InspectWorktree {
        story: StoryId,
        token: Token,
    },
    /// The story is archived: its local worktree can go.
    PruneWorktree {
        story: StoryId,
    },
    Reply {
        id: CommandId,
        result: Result<Reply, CommandError>,
    },
    Event(Event),
}

/// Things worth logging, counting or showing. Checkers in tests and sims
/// rely on them, so they are precise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ready {
        stories: usize,
        unreadable: Vec<String>,
    },
    /// This node moved to a new epoch's document: `carried` writes the base
    /// had not seen came along, `archived` stories went to cold storage.
    /// `gap` when the node was too many epochs behind to tell which of its
    /// writes were new: none were carried, all stay in cold storage.
    EpochStarted {
        epoch: u64,
        carried: usize,
        archived: usize,
        gap: bool,
    },
    StorageCorrupt {
        error: String,
    },
    PeerUp {
        conn: ConnId,
        node: NodeId,
    },
    PeerDown {
        conn: ConnId,
        node: Option<NodeId>,
    },
    /// A peer broke the protocol and was disconnected.
    PeerRejected {
        conn: ConnId,
        kind: RejectKind,
        reason: String,
    },
    NodeDead {
        node: NodeId,
    },
    /// A CA-signed revocation of the node's key took effect here.
    NodeRevoked {
        node: NodeId,
    },
    /// Cluster settings of a newer revision are in force here.
    SettingsAdopted {
        settings: crate::ClusterSettings,
    },
    /// A value of the document broke the schema, or a node's change wrote
    /// where it may not, and was not believed; the valid value it
    /// overwrote stands (schema.rs).
    ValueRefused {
        refusal: crate::schema::Refusal,
    },
    /// CA-signed settings that do not validate here were ignored.
    SettingsRejected {
        revision: u64,
        reason: String,
    },
    StoryAdded {
        story: StoryId,
        stage: Stage,
    },
    /// The visible stage changed (locally or by merge).
    StageChanged {
        story: StoryId,
        from: Stage,
        to: Stage,
        token: Token,
    },
    Claimed {
        story: StoryId,
        stage: Stage,
        token: Token,
        reclaimed_from: Option<NodeId>,
    },
    /// Our claim was superseded; the run was stopped.
    ClaimLost {
        story: StoryId,
        token: Token,
        now_held_by: Option<NodeId>,
        now_token: Token,
    },
    /// Our push was fenced at the remote: a newer claim holds the branch.
    /// The run is dropped without touching the story's state.
    Fenced {
        story: StoryId,
        token: Token,
        kept: String,
    },
    /// We advanced a story: a result was accepted locally.
    Advanced {
        story: StoryId,
        from: Stage,
        to: Stage,
        token: Token,
    },
    /// A run or push failed; the claim was released.
    RunFailed {
        story: StoryId,
        token: Token,
        attempts: u32,
        gave_up: bool,
        reason: String,
    },
    /// A story's work is on the default branch, in `commit`.
    Landed {
        story: StoryId,
        token: Token,
        commit: String,
    },
    /// Landing sent the story back to `current` (a conflict with the
    /// default branch, or its gates failed), or gave it up after
    /// `max_returns` returns (`gave_up`).
    SentBack {
        story: StoryId,
        token: Token,
        returns: u32,
        gave_up: bool,
        reason: String,
    },
    /// A landing batch of `size` stories was handed to the driver, built
    /// on top of `ahead` stories of other nodes' batches.
    BatchStarted {
        batch: crate::landing::BatchId,
        size: usize,
        retry: bool,
        ahead: usize,
    },
    /// A batch was called off: a story ahead of it will not land as tested.
    BatchCancelled {
        batch: crate::landing::BatchId,
    },
    /// A batch failed its gates twice (or once, after a split): tested
    /// again in two halves.
    BatchSplit {
        batch: crate::landing::BatchId,
        size: usize,
    },
    /// A result arrived for a token that no longer holds the story.
    StaleResult {
        story: StoryId,
        token: Token,
    },
}

/// Why a peer was disconnected, in a few fixed kinds (metrics label them;
/// the `reason` text of [`Event::PeerRejected`] has the detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectKind {
    /// An envelope that does not decode.
    Malformed,
    /// Messages out of order: a second hello, data before the handshake.
    Protocol,
    /// No certificate of this cluster, a wrong node, a failed key proof.
    Identity,
    Revoked,
    /// This node already has as many peers as it takes.
    PeerLimit,
    /// Over its byte or message budget.
    Budget,
    /// A sync message the guard or Automerge refused, or one that made
    /// Automerge panic.
    Sync,
    /// A heartbeat with a bad signature.
    Heartbeat,
}

impl RejectKind {
    pub const ALL: [RejectKind; 8] = [
        RejectKind::Malformed,
        RejectKind::Protocol,
        RejectKind::Identity,
        RejectKind::Revoked,
        RejectKind::PeerLimit,
        RejectKind::Budget,
        RejectKind::Sync,
        RejectKind::Heartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::Protocol => "protocol",
            RejectKind::Identity => "identity",
            RejectKind::Revoked => "revoked",
            RejectKind::PeerLimit => "peer_limit",
            RejectKind::Budget => "budget",
            RejectKind::Sync => "sync",
            RejectKind::Heartbeat => "heartbeat",
        }
    }
}
