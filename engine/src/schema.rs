//! What a peer may have written in the document, and what is believed of
//! it (issue 21): the bounds of a story's values, and the refusal of a
//! value that breaks them.
//!
//! Every enrolled node can write any key, and an agent node runs code a
//! prompt talked it into. So a story's values are checked as a whole when
//! read: a map that is not a map, a title that is not text, no state that
//! parses, a token no honest claim could reach, or a story map deleted
//! within an epoch is *refused*: the last valid view stands, the refusal
//! is counted and kept with its writer (the node whose Automerge actor
//! made the op), and `status` shows it. A story never silently vanishes,
//! and no value from a peer reaches an assertion.
//!
//! Tokens: an honest claim raises a story's token by one, and a release by
//! one more. [`MAX_TOKEN`] bounds every token read (no honest cluster
//! claims 2^48 times), so token arithmetic cannot overflow; a state more
//! than [`MAX_TOKEN_STEP`] above the last valid one is refused too, so one
//! forged state cannot fence a story for ever.

use automerge::{ObjId as ExId, ScalarValue, Value};

/// No token read from the document is above this.
pub const MAX_TOKEN: u64 = 1 << 48;
/// A story's token may rise by at most this much between two reads of
/// ours (a partitioned half of the cluster claiming for weeks stays far
/// below).
pub const MAX_TOKEN_STEP: u64 = 1 << 20;
/// Refusals kept for `status` (the newest; the count goes on).
pub const MAX_REFUSALS_KEPT: usize = 64;

/// A value of the document that was not believed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// Where: `stories/s03/state`.
    pub key: String,
    /// What was wrong: `state is a number`.
    pub what: String,
    /// The node whose actor wrote it (`huskies-epoch-N` for an epoch's
    /// base), when known.
    pub writer: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.what)?;
        match &self.writer {
            Some(w) => write!(f, " (written by {w})"),
            None => Ok(()),
        }
    }
}

/// Node ids huskies keeps for its own writers: the genesis change
/// (`huskies-genesis`) and epoch bases (`huskies-epoch-N`). A node may
/// not enroll under one, so "written by huskies-epoch-2" is never a node.
pub fn is_reserved(node: &crate::NodeId) -> bool {
    node.as_str().starts_with("huskies-")
}

/// The node an op's actor belongs to: node actors are the node id, a zero
/// byte, then the incarnation (engine.rs); an epoch's base has its own.
pub fn writer_of(op: &ExId) -> Option<String> {
    let ExId::Id(_, actor, _) = op else { return None };
    let bytes = actor.to_bytes();
    let name = bytes.split(|b| *b == 0).next().unwrap_or(bytes);
    let name = String::from_utf8_lossy(name);
    // An id is short and printable; anything else is shown as hex.
    if !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic()) {
        Some(name.into_owned())
    } else {
        Some(format!("actor {}", crate::identity::hex(&bytes[..bytes.len().min(16)])))
    }
}

/// A value's kind, as a refusal names it.
pub fn kind_of(v: &Value<'_>) -> &'static str {
    match v {
        Value::Object(automerge::ObjType::Map) => "a map",
        Value::Object(automerge::ObjType::Table) => "a table",
        Value::Object(automerge::ObjType::List) => "a list",
        Value::Object(automerge::ObjType::Text) => "a text object",
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(_) => "a string",
            ScalarValue::Int(_) | ScalarValue::Uint(_) | ScalarValue::F64(_) => "a number",
            ScalarValue::Counter(_) => "a counter",
            ScalarValue::Boolean(_) => "a boolean",
            ScalarValue::Null => "null",
            ScalarValue::Bytes(_) => "bytes",
            ScalarValue::Timestamp(_) => "a timestamp",
            _ => "an unknown value",
        },
    }
}

/// Counts of a state (attempts, landing's returns) past this are no
/// honest node's: far past any `max_attempts` or `max_returns`.
pub const MAX_STATE_COUNT: u32 = 1 << 16;

/// Who wrote a value, as far as the signatures prove (signing.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// The server (its changes are signed with the CA's key), an epoch's
    /// base (signed by the CA) or the genesis.
    Admin,
    /// A node, proven by its certified key.
    Node(crate::NodeId),
    /// An actor that names no node (refused at the door: not reached).
    Unknown,
}

/// Why `writer` may not write state `s` over the story's last valid one,
/// if it may not. A node writes only its own claims and what follows
/// from them; a removal is a user command, which only the server runs.
pub fn state_not_authorized(
    s: &crate::story::StoryState,
    last: Option<&crate::story::StoryState>,
    writer: &Writer,
) -> Option<String> {
    let node = match writer {
        Writer::Admin => return None,
        Writer::Unknown => return Some("written by an actor that names no node".into()),
        Writer::Node(n) => n,
    };
    if s.removed && !last.is_some_and(|l| l.removed) {
        return Some("a removal, which only the server may write".into());
    }
    match &s.holder {
        Some(h) if h != node => Some(format!("a claim in the name of {h}")),
        _ => None,
    }
}

/// Why a state that parsed is still out of reach, if it is: its token
/// against the story's last valid one (`None`: first seen), its counts,
/// the length of its reason.
pub fn state_out_of_reach(s: &crate::story::StoryState, last_valid: Option<u64>) -> Option<String> {
    if let Some(why) = token_out_of_reach(s.token.0, last_valid) {
        return Some(why);
    }
    if s.attempts > MAX_STATE_COUNT || s.returns > MAX_STATE_COUNT {
        return Some(format!("{} attempts and {} returns are past any limit", s.attempts, s.returns));
    }
    if s.queued > MAX_TOKEN {
        return Some(format!("queue place {} is past any honest one", s.queued));
    }
    if s.reason.as_ref().is_some_and(|r| r.len() > crate::story::MAX_REASON_LEN * 4) {
        return Some("a reason far past its limit".into());
    }
    None
}

/// Why a state that parsed is still out of reach, if it is: its token
/// against the story's last valid one (`None`: first seen).
pub fn token_out_of_reach(token: u64, last_valid: Option<u64>) -> Option<String> {
    if token > MAX_TOKEN {
        return Some(format!("token {token} is past any honest claim"));
    }
    match last_valid {
        Some(last) if token > last.saturating_add(MAX_TOKEN_STEP) => {
            Some(format!("token {token} jumps more than {MAX_TOKEN_STEP} past the last valid {last}"))
        }
        // First seen (a new story, a restart, a new epoch): an honest token
        // is a count of claims and moves, far below one step.
        None if token > MAX_TOKEN_STEP => Some(format!("token {token} is past any honest claim on a story first seen")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_are_named_from_actors() {
        let mut actor = b"mallory".to_vec();
        actor.push(0);
        actor.extend_from_slice(&7u64.to_be_bytes());
        let op = ExId::Id(3, automerge::ActorId::from(actor), 0);
        assert_eq!(writer_of(&op).as_deref(), Some("mallory"));
        let base = ExId::Id(1, automerge::ActorId::from(b"huskies-epoch-2".to_vec()), 0);
        assert_eq!(writer_of(&base).as_deref(), Some("huskies-epoch-2"));
        let odd = ExId::Id(1, automerge::ActorId::from(vec![0xff, 0x01]), 0);
        assert_eq!(writer_of(&odd).as_deref(), Some("actor ff01"));
        assert_eq!(writer_of(&ExId::Root), None);
    }

    #[test]
    fn tokens_out_of_reach() {
        assert!(token_out_of_reach(u64::MAX, None).is_some());
        assert!(token_out_of_reach(MAX_TOKEN + 1, Some(MAX_TOKEN)).is_some());
        assert_eq!(token_out_of_reach(8, Some(7)), None);
        assert_eq!(token_out_of_reach(7 + MAX_TOKEN_STEP, Some(7)), None);
        assert!(token_out_of_reach(8 + MAX_TOKEN_STEP, Some(7)).unwrap().contains("last valid 7"));
        assert_eq!(token_out_of_reach(1_000, None), None);
        assert!(token_out_of_reach(MAX_TOKEN_STEP + 1, None).unwrap().contains("first seen"));
    }
}
