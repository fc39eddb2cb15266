//! What a peer may have written in the document, and what is believed of
//! it (issue 21): the bounds of a story's values, and the refusal of a
//! value that breaks them.
//!
//! Every enrolled node can write any key, and an agent node runs code a
//! prompt talked it into. So a node's change that writes where only the
//! server or another node writes is refused whole at the door
//! ([`change_not_authorized`]), and a story's values are checked as a whole
//! when read: a title that is not text, no state that parses, a token no
//! honest claim could reach, a state its writer had no right to write is
//! *refused*: the valid value it overwrote stands (`doc/validity.rs`), the
//! refusal is counted and kept with its writer (the node whose Automerge
//! actor made the op), and `status` shows it. A story never silently
//! vanishes, and no value from a peer reaches an assertion.
//!
//! Tokens: an honest claim raises a story's token by one, and a release by
//! one more. [`MAX_TOKEN`] bounds every token read (no honest cluster
//! claims 2^48 times), so token arithmetic cannot overflow; and a node's
//! state is judged against the state it saw when it wrote
//! ([`state_not_authorized`]): a claim takes exactly the next token, so one
//! forged state cannot fence a story for ever.

use automerge::{ObjId as ExId, ScalarValue, Value};

/// No token read from the document is above this.
pub const MAX_TOKEN: u64 = 1 << 48;
/// A carried state's token may pass the base's by at most this much (a
/// partitioned half of the cluster claiming for weeks stays far below).
pub const MAX_CARRY_STEP: u64 = 1 << 20;
/// Refusals kept for `status` (the newest; the count goes on).
pub const MAX_REFUSALS_KEPT: usize = 64;

/// The values not believed: the newest kept for `status`, and how many in
/// all.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    recent: std::collections::VecDeque<Refusal>,
    total: u64,
}

impl Refusals {
    /// Notes `refusal`; false when it is kept already (a value stays
    /// refused on every re-read of its story, and counts once).
    pub(crate) fn note(&mut self, refusal: &Refusal) -> bool {
        if self.recent.contains(refusal) {
            return false;
        }
        self.total += 1;
        if self.recent.len() >= MAX_REFUSALS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(refusal.clone());
        assert!(self.recent.len() <= MAX_REFUSALS_KEPT && self.recent.len() as u64 <= self.total);
        true
    }

    pub(crate) fn recent(&self) -> impl Iterator<Item = &Refusal> {
        self.recent.iter()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

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

/// Why `writer` may not write state `s` over `prev`, the story's state as
/// the writer saw it (its causal past, `doc/validity.rs`), if it may not.
/// The server writes anything. A node writes only what follows from its
/// own claims: it claims a free-to-work story at the next token in its own
/// name, or gives one up over its budget, and otherwise writes only a
/// story it holds, moving the token up by one at most; a removal is a user
/// command, which only the server runs. Honest nodes write exactly these
/// (claims.rs, landing.rs, ledger.rs), so every rule is exact.
///
/// A `carry` (a node's first change of an epoch, on the base alone,
/// epoch.rs) brings states the base had not seen, which no rule of this
/// epoch can check: it may raise a story's state past the base's, within
/// [`MAX_CARRY_STEP`], released or claimed in the carrier's own name, never
/// removing it or reviving one the server removed.
pub fn state_not_authorized(
    s: &crate::story::StoryState,
    prev: Option<&crate::story::StoryState>,
    writer: &Writer,
    carry: bool,
) -> Option<String> {
    let node = match writer {
        Writer::Admin => return None,
        Writer::Unknown => return Some("written by an actor that names no node".into()),
        Writer::Node(n) => n,
    };
    let Some(prev) = prev else { return Some(format!("a state {node} wrote without having read the story's")) };
    if s.token < prev.token {
        return Some(format!("token {} lowers the token {} its writer saw", s.token.0, prev.token.0));
    }
    if s.removed && !prev.removed {
        return Some("a removal, which only the server may write".into());
    }
    if let Some(h) = s.holder.as_ref().filter(|h| *h != node) {
        return Some(format!("a claim in the name of {h}"));
    }
    if carry {
        if prev.removed {
            return Some("a carried state over a removal".into());
        }
        return (s.token.0 > prev.token.0.saturating_add(MAX_CARRY_STEP))
            .then(|| format!("carried token {} jumps more than {MAX_CARRY_STEP} past {}", s.token.0, prev.token.0));
    }
    if prev.holder.as_ref() == Some(node) {
        return (s.token.0 > prev.token.0.saturating_add(1)).then(|| {
            format!("token {} jumps past {}, the next after its writer's claim", s.token.0, prev.token.0 + 1)
        });
    }
    if !prev.is_claimable_stage() {
        return Some(format!("a write to a story {node} does not hold and may not claim"));
    }
    if s.token.0 != prev.token.0.saturating_add(1) || s.stage != prev.stage {
        return Some(format!("a write to a story {node} does not hold that is no claim of it"));
    }
    // A claim in its own name, or giving a free story up (over budget).
    (s.holder.is_none() && !s.failed).then(|| format!("a release of a story {node} does not hold"))
}

/// Why a state that parsed is still out of reach, if it is: a token past
/// any honest claim, counts past any limit, an overlong reason.
pub fn state_out_of_reach(s: &crate::story::StoryState) -> Option<String> {
    if s.token.0 > MAX_TOKEN {
        return Some(format!("token {} is past any honest claim", s.token.0));
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

/// Where a node's change may write, as the document's layout says: the
/// objects whose keys only the server (or an epoch's base) writes, and
/// which actors write as the admin.
pub struct Layout<'a> {
    pub stories: &'a automerge::ObjId,
    pub nodes: &'a automerge::ObjId,
    /// Whether an actor's changes are the admin's (the server's, an
    /// epoch's base, the genesis).
    pub is_admin: &'a dyn Fn(&automerge::ActorId) -> bool,
}

/// Why a node's change may not be applied at all, if it may not: it
/// writes where only the server or another node writes. The root's
/// `stories` and `nodes` (deleting or replacing them cuts every map off);
/// a key of `stories` (creating, replacing or deleting a story's map:
/// stories are the admin's); another node's record, ledger lines, landing
/// car or run records; anything at the root but its own lines, its car and
/// its acknowledgement of an epoch's base; anything inside an object
/// another node made. Judged on the change alone, so every replica refuses
/// the same changes, and no honest change ever depends on one (Kleppmann
/// and Howard's validity check at delivery). What a node writes inside a
/// story's map is judged when read (`doc/validity.rs`).
pub fn change_not_authorized(
    change: &automerge::ExpandedChange,
    author: &crate::NodeId,
    layout: &Layout<'_>,
) -> Option<String> {
    use automerge::legacy::{Key, ObjectId};
    let is = |obj: &ObjectId, ours: &automerge::ObjId| match (obj, ours) {
        (ObjectId::Id(id), automerge::ObjId::Id(counter, actor, _)) => id.0 == *counter && id.1 == *actor,
        _ => false,
    };
    let own_ledger = format!("{}{author}/", crate::ledger::LEDGER_PREFIX);
    let own_car = format!("train/{author}");
    let own_runs = format!("/{author}");
    for op in &change.operations {
        let key = match &op.key {
            Key::Map(k) => k.as_str(),
            Key::Seq(_) => "",
        };
        match &op.obj {
            ObjectId::Root => {
                let own = key.starts_with(&own_ledger) || key == own_car || key == crate::doc::EPOCH_SIG_KEY;
                if key == "stories" || key == "nodes" {
                    return Some(format!("a write to the root's `{key}` map, which only an epoch's base makes"));
                }
                if !own {
                    return Some(format!("a write of `{key}` at the root, which is not {author}'s to write"));
                }
            }
            obj if is(obj, layout.stories) => {
                return Some(format!("a write of `stories/{key}` itself: stories are the server's to add and remove"));
            }
            obj if is(obj, layout.nodes) => {
                if key != author.as_str() {
                    return Some(format!("a write of `nodes/{key}`, another node's record"));
                }
            }
            ObjectId::Id(made) => {
                let maker = crate::signing::node_of_actor(&made.1);
                if maker.as_ref() != Some(author) && !(layout.is_admin)(&made.1) {
                    let maker = maker.map_or_else(|| "an unknown actor".to_owned(), |n| n.to_string());
                    return Some(format!("a write of `{key}` inside an object {maker} made"));
                }
                if key.starts_with("run/") && !key.ends_with(&own_runs) {
                    return Some(format!("a write of `{key}`, another node's run record"));
                }
            }
        }
    }
    None
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

    fn node(n: &str) -> crate::NodeId {
        crate::NodeId::new(n).unwrap()
    }

    #[test]
    fn nodes_write_only_what_follows_from_their_claims() {
        use crate::Token;
        use crate::story::{Stage, StoryState};
        let me = Writer::Node(node("me"));
        let free = StoryState { token: Token(3), ..StoryState::new(Stage::Current) };
        let claim = StoryState { token: Token(4), holder: Some(node("me")), ..free.clone() };
        assert_eq!(state_not_authorized(&claim, Some(&free), &me, false), None);
        assert!(state_not_authorized(&claim, None, &me, false).is_some(), "nothing read: nothing to claim");
        let far = StoryState { token: Token(9), ..claim.clone() };
        assert!(state_not_authorized(&far, Some(&free), &me, false).unwrap().contains("no claim"));
        let theirs = StoryState { holder: Some(node("you")), ..claim.clone() };
        assert!(state_not_authorized(&theirs, Some(&free), &me, false).unwrap().contains("in the name of you"));
        let release = StoryState { token: Token(4), ..free.clone() };
        assert!(state_not_authorized(&release, Some(&free), &me, false).unwrap().contains("does not hold"));
        let give_up = StoryState { failed: true, ..release.clone() };
        assert_eq!(state_not_authorized(&give_up, Some(&free), &me, false), None, "over budget");
        // The holder moves the story on, releases it at the next token.
        let advanced = StoryState { stage: Stage::Qa, holder: None, ..claim.clone() };
        assert_eq!(state_not_authorized(&advanced, Some(&claim), &me, false), None);
        let released = StoryState { token: Token(5), holder: None, ..claim.clone() };
        assert_eq!(state_not_authorized(&released, Some(&claim), &me, false), None);
        let jump = StoryState { token: Token(6), ..released.clone() };
        assert!(state_not_authorized(&jump, Some(&claim), &me, false).is_some());
        let lower = StoryState { token: Token(2), ..claim.clone() };
        assert!(state_not_authorized(&lower, Some(&claim), &me, false).unwrap().contains("lowers"));
        let removed = StoryState { removed: true, ..released.clone() };
        assert!(state_not_authorized(&removed, Some(&claim), &me, false).unwrap().contains("removal"));
        let done = StoryState { stage: Stage::Done, ..free.clone() };
        let reclaim = StoryState { token: Token(4), holder: Some(node("me")), ..done.clone() };
        assert!(state_not_authorized(&reclaim, Some(&done), &me, false).unwrap().contains("may not claim"));
        assert_eq!(state_not_authorized(&reclaim, Some(&done), &Writer::Admin, false), None);
        // A carry brings what the base had not seen, within bounds.
        assert_eq!(state_not_authorized(&released, Some(&free), &me, true), None);
        assert!(state_not_authorized(&theirs, Some(&free), &me, true).is_some());
        let far = StoryState { token: Token(3 + MAX_CARRY_STEP + 1), ..released.clone() };
        assert!(state_not_authorized(&far, Some(&free), &me, true).unwrap().contains("carried"));
        let tomb = StoryState { removed: true, ..free.clone() };
        assert!(state_not_authorized(&released, Some(&tomb), &me, true).unwrap().contains("removal"));
        assert!(state_out_of_reach(&StoryState { token: Token(u64::MAX), ..free }).is_some());
    }
}
