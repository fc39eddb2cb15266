//! Errors the engine reports to its caller. Peer misbehaviour is never an
//! error here: it disconnects that peer and becomes an [`crate::Event`].

use thiserror::Error;

use crate::{Stage, StoryId};

/// A malformed node or story id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes long, the limit is {max}")]
    TooLong { kind: &'static str, len: usize, max: usize },
    #[error("{kind} id {id:?} must start with a lowercase letter or digit")]
    BadStart { kind: &'static str, id: String },
    #[error("{kind} id {id:?} contains {bad:?}; allowed are a-z, 0-9, '-' and '_'")]
    BadChar { kind: &'static str, id: String, bad: char },
}

/// Why a user command was refused. Nothing was written when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error("story title is empty")]
    EmptyTitle,
    #[error("story title is {len} bytes long, the limit is {max}")]
    TitleTooLong { len: usize, max: usize },
    #[error("story body is {len} bytes long, the limit is {max}")]
    BodyTooLong { len: usize, max: usize },
    #[error("story {0} was removed")]
    Removed(StoryId),
    #[error("story {0} has not failed; nothing to retry")]
    NotFailed(StoryId),
    #[error("story {0} already exists")]
    StoryExists(StoryId),
    #[error("no free story id for {0:?}: pass one")]
    NoFreeId(String),
    #[error("no story {0}")]
    UnknownStory(StoryId),
    #[error("unknown stage {0:?}; stages are backlog, current, qa, merge, done, archived")]
    UnknownStage(String),
    #[error("story {story} cannot move from {from} to {to}: {why}")]
    IllegalMove { story: StoryId, from: Stage, to: Stage, why: &'static str },
    #[error("the node has not loaded its storage yet")]
    NotReady,
    #[error("no node {0} with a certificate is known")]
    UnknownNode(crate::NodeId),
    #[error("only the server, which holds the cluster CA key, can revoke nodes or set cluster settings")]
    NotAuthority,
    #[error(
        "story commands run on the server (every node refuses stories and user edits an agent wrote); send it to the server"
    )]
    ServerOnly,
    #[error("the certificate of {0} is not signed by this cluster's CA")]
    BadCertificate(crate::NodeId),
    #[error("node id {0} is reserved: huskies-* names are huskies' own writers (the genesis change, epoch bases)")]
    ReservedNodeId(crate::NodeId),
    #[error("a node cannot revoke itself")]
    RevokeSelf,
    #[error("cluster settings refused: {0}")]
    BadSettings(String),
}

/// An invalid [`crate::Config`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error(
        "heartbeat_interval_ms ({heartbeat_ms}) must be at most a third of claim_timeout_ms ({timeout_ms}), or one lost heartbeat declares a live node dead"
    )]
    HeartbeatTooSlow { heartbeat_ms: u64, timeout_ms: u64 },
    #[error("dial_backoff_min_ms ({min}) exceeds dial_backoff_max_ms ({max})")]
    BackoffRange { min: u64, max: u64 },
    #[error("max_inflated_bytes ({inflated}) is below max_message_bytes ({message})")]
    InflationBelowMessageCap { inflated: usize, message: usize },
    #[error("max_message_bytes ({0}) is below the 64 KiB minimum")]
    MessageCapTooSmall(usize),
}
