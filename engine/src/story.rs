//! Stories, their stages, and the one document value that holds a story's
//! workflow state.
//!
//! Stage, claim, attempts and result live together in ONE Automerge value
//! (`stories/<id>/state`). Concurrent writes to one key leave every value
//! visible through `get_all`; we pick the winner ourselves by
//! [`StoryState::precedence`], so all fields of the winning write come from
//! the same writer and a stage advance can never be paired with somebody
//! else's claim.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::stable_hash;
use crate::{CommandError, NodeId, Token};

/// Pipeline stages, in order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    #[default]
    Backlog,
    Current,
    Qa,
    Merge,
    Done,
    Archived,
}

impl Stage {
    /// Stages whose runs are coding agents' (and count against budgets);
    /// `merge` lands on the gates alone.
    pub fn spends(self) -> bool {
        matches!(self, Stage::Current | Stage::Qa)
    }

    pub const ALL: [Stage; 6] = [Stage::Backlog, Stage::Current, Stage::Qa, Stage::Merge, Stage::Done, Stage::Archived];

    /// The stages agents work on, in pipeline order: the one place they
    /// are listed.
    pub const ACTIVE: [Stage; 3] = [Stage::Current, Stage::Qa, Stage::Merge];

    /// Active stages are the ones agents work on.
    pub fn is_active(self) -> bool {
        Stage::ACTIVE.contains(&self)
    }

    /// Where a successful run in this stage moves the story.
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Backlog => Some(Stage::Current),
            Stage::Current => Some(Stage::Qa),
            Stage::Qa => Some(Stage::Merge),
            Stage::Merge => Some(Stage::Done),
            Stage::Done => Some(Stage::Archived),
            Stage::Archived => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Backlog => "backlog",
            Stage::Current => "current",
            Stage::Qa => "qa",
            Stage::Merge => "merge",
            Stage::Done => "done",
            Stage::Archived => "archived",
        }
    }

    /// Checks a user move. Forward and backward moves are both legal (a
    /// reviewer sends work back); archived stories only come back through
    /// the backlog, and moving to the same stage is refused so that a
    /// mistyped command does not silently stop a run.
    pub fn check_move(self, to: Stage) -> Result<(), &'static str> {
        if self == to {
            return Err("it is already there");
        }
        if self == Stage::Archived && to != Stage::Backlog {
            return Err("archived stories return through the backlog");
        }
        Ok(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = CommandError;
    fn from_str(s: &str) -> Result<Stage, CommandError> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| CommandError::UnknownStage(s.to_owned()))
    }
}

/// The accepted result of the last successful run.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub node: NodeId,
    pub token: Token,
    /// The stage the run worked on.
    pub stage: Stage,
    /// The default-branch commit that landed the story (merge stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landed: Option<String>,
}

/// The workflow state of a story, stored as one value.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoryState {
    pub stage: Stage,
    /// The fencing token: the highest claim (or user move) so far.
    pub token: Token,
    /// Who holds the claim at `token`; `None` when the story is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<NodeId>,
    /// Failed attempts in the current stage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Gave up after `max_attempts`; a user move clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// Why the last attempt in this stage failed (cleared by an advance,
    /// a move or a retry), at most [`MAX_REASON_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Removed by a user: a tombstone, never claimed again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Times landing sent the story back to `current` (a conflict or a
    /// failed gate). Kept through advances, so a story that never lands
    /// is given up after `max_returns`; a user move or retry clears it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub returns: u32,
    /// Place in the merge queue: one more than the highest place this
    /// replica knew when the story reached `merge` (a Lamport clock: every
    /// replica orders the queue by when stories reached it, without
    /// comparing wall clocks; ties by priority, age and id).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub queued: u64,
}

/// Longest failure reason kept in a story's state.
pub const MAX_REASON_LEN: usize = 500;

/// `reason` cut to [`MAX_REASON_LEN`] bytes at a character boundary.
pub fn short_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl StoryState {
    pub fn new(stage: Stage) -> StoryState {
        StoryState {
            stage,
            token: Token(0),
            holder: None,
            attempts: 0,
            failed: false,
            result: None,
            reason: None,
            removed: false,
            returns: 0,
            queued: 0,
        }
    }

    pub fn encode(&self) -> String {
        // Serialising plain data with derived impls cannot fail.
        serde_json::to_string(self).expect("StoryState serialises")
    }

    /// Parses a value read from the document. Peers are untrusted: a value
    /// that does not parse is ignored by the caller, never unwrapped.
    pub fn decode(s: &str) -> Option<StoryState> {
        serde_json::from_str(s).ok()
    }

    /// Is the story waiting for an agent (ignoring liveness of the holder)?
    pub fn is_claimable_stage(&self) -> bool {
        self.stage.is_active() && !self.failed && !self.removed
    }

    /// Total order used to pick the winner among concurrent writes. The
    /// highest token wins (that is the fence); at equal tokens the later
    /// stage wins (an advance beats a concurrent claim of the old stage, so
    /// finished work is kept), then a held claim beats a release, then a
    /// hash of (story, holder) so that no node id wins every tie, then the
    /// encoded bytes so that the order is total.
    pub fn precedence(&self, story: &str, other: &StoryState) -> Ordering {
        let key = |s: &StoryState| {
            let holder = s.holder.as_ref().map(|h| h.as_str()).unwrap_or("");
            (s.token, s.stage, s.holder.is_some(), stable_hash(&[story.as_bytes(), holder.as_bytes()]))
        };
        key(self).cmp(&key(other)).then_with(|| self.encode().cmp(&other.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn encode_roundtrip_and_garbage() {
        let mut s = StoryState::new(Stage::Current);
        s.token = Token(4);
        s.holder = Some(node("n1"));
        s.result = Some(RunResult { node: node("n2"), token: Token(3), stage: Stage::Backlog, landed: None });
        assert_eq!(StoryState::decode(&s.encode()), Some(s));
        assert_eq!(StoryState::decode("{\"stage\":\"nope\"}"), None);
        assert_eq!(StoryState::decode("{\"stage\":\"qa\",\"token\":1,\"holder\":\"BAD ID\"}"), None);
        assert_eq!(StoryState::decode(""), None);
    }

    #[test]
    fn higher_token_wins_then_later_stage() {
        let mut a = StoryState::new(Stage::Qa);
        a.token = Token(3);
        let mut b = StoryState::new(Stage::Current);
        b.token = Token(4);
        b.holder = Some(node("x"));
        assert_eq!(a.precedence("s", &b), Ordering::Less);
        b.token = Token(3);
        assert_eq!(a.precedence("s", &b), Ordering::Greater, "advance beats concurrent claim");
    }

    #[test]
    fn tie_break_is_antisymmetric_and_spreads_winners() {
        let mut wins_a = 0;
        for i in 0..100 {
            let story = format!("s{i}");
            let mut a = StoryState::new(Stage::Current);
            a.token = Token(1);
            a.holder = Some(node("a"));
            let mut b = a.clone();
            b.holder = Some(node("b"));
            let ab = a.precedence(&story, &b);
            assert_eq!(ab, b.precedence(&story, &a).reverse());
            assert_ne!(ab, Ordering::Equal);
            if ab == Ordering::Greater {
                wins_a += 1;
            }
        }
        assert!((25..75).contains(&wins_a), "winners should be spread: {wins_a}");
    }

    #[test]
    fn moves() {
        assert!(Stage::Current.check_move(Stage::Current).is_err());
        assert!(Stage::Archived.check_move(Stage::Current).is_err());
        assert!(Stage::Archived.check_move(Stage::Backlog).is_ok());
        assert!(Stage::Done.check_move(Stage::Current).is_ok());
        assert_eq!("qa".parse::<Stage>(), Ok(Stage::Qa));
        assert!("QA".parse::<Stage>().is_err());
    }
}
