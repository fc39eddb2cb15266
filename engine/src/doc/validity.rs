//! Which state a story is in, as a function of the document's history
//! alone (issue 21; Kleppmann and Howard, "Making CRDTs Byzantine Fault
//! Tolerant", 2022).
//!
//! Every state op is judged against the story's state as its writer saw
//! it: the state at the dependencies of the op's change, read the same way
//! (schema.rs, `state_not_authorized`). Never against what this replica
//! happened to believe before: two replicas with the same heads read the
//! same state whatever order they learnt the changes in, and a refused op
//! is refused on every replica.
//!
//! A refused op stands for the best valid state it overwrote, so a hostile
//! write on top of an honest one hides nothing, and a story never goes
//! back past a valid state. Verdicts are kept per op (an op's causal past
//! never changes): each op is judged once per document, and the server's
//! ops, which need no past, end every walk back.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, ObjId, ReadDoc, ScalarValue, Value};

use super::{Auth, Doc};
use crate::schema::Writer;
use crate::story::StoryState;

/// An op id as a map key (Automerge's `ObjId` is not `Ord`).
pub(crate) type OpKey = (u64, ActorId);

/// A state op and its value as written (checked for bounds only).
type StateOp = (ObjId, Result<StoryState, String>);

/// Ops refused, each with why.
pub(crate) type RefusedOps = Vec<(ObjId, String)>;

/// What one state op stands for. A valid op stands for its own state,
/// which every reader of the verdict holds already (it read the op's value
/// to find the op), so only a refused op keeps a state here: a verdict is
/// a few bytes, not a story's state with its strings (at 10,000 live
/// stories an epoch holds tens of thousands of state ops on every node).
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    Valid,
    Refused(Box<Refused>),
}

#[derive(Clone, Debug)]
pub(crate) struct Refused {
    /// Why its own state was refused.
    why: String,
    /// The best valid state it overwrote.
    effective: Option<StoryState>,
}

/// The verdicts of a document's state ops, by op. Op ids name their actor
/// by a number given here as actors are first met: a key is 16 bytes
/// instead of a counter and a heap-held actor id (ours are 26 bytes and
/// more).
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    actors: BTreeMap<ActorId, u32>,
    by_op: BTreeMap<(u64, u32), Verdict>,
}

impl Verdicts {
    fn get(&self, op: &ObjId) -> Option<&Verdict> {
        match op {
            ObjId::Id(counter, actor, _) => self.by_op.get(&(*counter, *self.actors.get(actor)?)),
            ObjId::Root => None,
        }
    }

    fn insert(&mut self, op: &ObjId, verdict: Verdict) {
        let ObjId::Id(counter, actor, _) = op else { return };
        let next = u32::try_from(self.actors.len()).expect("fewer than 2^32 actors in one document");
        let actor = *self.actors.entry(actor.clone()).or_insert(next);
        self.by_op.insert((*counter, actor), verdict);
    }

    /// Judged already (the root is no op: nothing to judge).
    fn judged(&self, op: &ObjId) -> bool {
        matches!(op, ObjId::Root) || self.get(op).is_some()
    }

    /// The state `op`, whose value parsed as `parsed`, stands for.
    fn effective(&self, op: &ObjId, parsed: &Result<StoryState, String>) -> Option<StoryState> {
        match self.get(op)? {
            Verdict::Valid => parsed.as_ref().ok().cloned(),
            Verdict::Refused(r) => r.effective.clone(),
        }
    }
}

fn op_key(op: &ObjId) -> Option<OpKey> {
    match op {
        ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
        ObjId::Root => None,
    }
}

/// A state value as written, with the checks that need no past.
fn parse(v: &Value<'_>) -> Result<StoryState, String> {
    let s = match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(t) => StoryState::decode(t).ok_or_else(|| "state does not parse".to_owned())?,
            _ => return Err(format!("state is {}", crate::schema::kind_of(v))),
        },
        _ => return Err(format!("state is {}", crate::schema::kind_of(v))),
    };
    match crate::schema::state_out_of_reach(&s) {
        Some(why) => Err(why),
        None => Ok(s),
    }
}

/// A state op waiting for the verdicts of the ops it overwrote.
struct Pending {
    op: ObjId,
    parsed: Result<StoryState, String>,
    /// The state ops visible at its change's dependencies, once looked up,
    /// and whether the change is a carry (it depends on the epoch's base
    /// alone).
    before: Option<(Vec<StateOp>, bool)>,
}

impl Doc {
    /// The state of the story whose map is `obj` at the current heads: the
    /// best of what its current values stand for. Also every current value
    /// refused, with its op and why, and how many values the key holds.
    pub(crate) fn resolve_state(
        &mut self,
        story: &str,
        obj: &ObjId,
        auth: Auth<'_>,
    ) -> (Option<StoryState>, RefusedOps, usize) {
        let values: Vec<StateOp> =
            self.am.get_all(obj, "state").unwrap_or_default().into_iter().map(|(v, op)| (op, parse(&v))).collect();
        let concurrent = values.len();
        let mut refused = Vec::new();
        let mut best: Option<StoryState> = None;
        for (op, parsed) in values {
            self.judge(story, obj, op.clone(), parsed.clone(), auth);
            if let Some(Verdict::Refused(r)) = self.state_verdicts.get(&op) {
                refused.push((op.clone(), r.why.clone()));
            }
            best = max_state(story, best, self.state_verdicts.effective(&op, &parsed));
        }
        (best, refused, concurrent)
    }

    /// Judges `op` (and, first, every op it needs judged) and keeps the
    /// verdicts. Iterative: a story's history of node writes can be long.
    fn judge(&mut self, story: &str, obj: &ObjId, op: ObjId, parsed: Result<StoryState, String>, auth: Auth<'_>) {
        let mut stack = vec![Pending { op, parsed, before: None }];
        while let Some(p) = stack.last_mut() {
            if self.state_verdicts.judged(&p.op) {
                stack.pop();
                continue;
            }
            let writer = auth(&p.op);
            if let (Ok(_), Writer::Admin) = (&p.parsed, &writer) {
                self.state_verdicts.insert(&p.op, Verdict::Valid);
                stack.pop();
                continue;
            }
            if p.before.is_none() {
                let op = p.op.clone();
                p.before = Some(self.states_at_deps(obj, &op));
            }
            let (before, carry) = p.before.as_ref().map(|(b, c)| (b.as_slice(), *c)).unwrap_or_default();
            let unjudged: Vec<Pending> = before
                .iter()
                .filter(|(op, _)| !self.state_verdicts.judged(op))
                .map(|(op, parsed)| Pending { op: op.clone(), parsed: parsed.clone(), before: None })
                .collect();
            if !unjudged.is_empty() {
                stack.extend(unjudged);
                continue;
            }
            let mut prev = None;
            for (op, parsed) in before {
                prev = max_state(story, prev, self.state_verdicts.effective(op, parsed));
            }
            let why = match &p.parsed {
                Err(why) => Some(why.clone()),
                Ok(s) => crate::schema::state_not_authorized(s, prev.as_ref(), &writer, carry),
            };
            let verdict = match why {
                None => Verdict::Valid,
                Some(why) => Verdict::Refused(Box::new(Refused { why, effective: prev })),
            };
            let op = p.op.clone();
            self.state_verdicts.insert(&op, verdict);
            stack.pop();
        }
    }

    /// The state values visible at the dependencies of `op`'s change (what
    /// its writer saw of the key when it wrote), and whether that change is
    /// a carry: a node's first change of an epoch, made on the base alone,
    /// which brings what the base had not seen (epoch.rs).
    fn states_at_deps(&mut self, obj: &ObjId, op: &ObjId) -> (Vec<StateOp>, bool) {
        let Some(deps) = self.deps_of(op) else { return (Vec::new(), false) };
        let carry = match deps.as_slice() {
            [base] => self
                .am
                .get_change_meta_by_hash(base)
                .is_some_and(|m| m.deps.is_empty() && m.actor.to_bytes().starts_with(crate::epoch::BASE_ACTOR_PREFIX)),
            _ => false,
        };
        (self.values_at(obj, "state", &deps, parse), carry)
    }

    /// The dependencies of the change that made `op`.
    fn deps_of(&mut self, op: &ObjId) -> Option<Vec<automerge::ChangeHash>> {
        let hash = self.am.hash_for_opid(op)?;
        self.am.get_change_meta_by_hash(&hash).map(|m| m.deps.clone())
    }

    /// The values of `obj[key]` at `heads`, each turned into a `T` by `f`.
    fn values_at<T>(
        &mut self,
        obj: &ObjId,
        key: &str,
        heads: &[automerge::ChangeHash],
        f: impl Fn(&Value<'_>) -> T,
    ) -> Vec<(ObjId, T)> {
        self.am.get_all_at(obj, key, heads).unwrap_or_default().into_iter().map(|(v, op)| (op, f(&v))).collect()
    }

    /// The value of `obj[key]` that only the server may write (a story's
    /// map, title, priority, creation time, body): of the values the server
    /// wrote that `accept` takes, the one Automerge ranks first (the highest
    /// op id), looking behind whatever a node put in their place to what
    /// that replaced. Also each current value refused, and why (`not_admin`
    /// when only its writer is wrong). A function of the history, like the
    /// state: every replica reads the same value and writes to the same
    /// map, and none needs to put anything back.
    pub(crate) fn admin_value<T>(
        &mut self,
        obj: &ObjId,
        key: &str,
        auth: Auth<'_>,
        not_admin: &str,
        accept: impl Fn(&Value<'_>) -> Result<T, String>,
    ) -> (Option<(ObjId, T)>, RefusedOps) {
        self.owned_value(obj, key, auth, &|w| *w == Writer::Admin, not_admin, accept)
    }

    /// [`Doc::admin_value`] for a value only writers `owns` says yes to
    /// may write (a node's car: that node).
    pub(crate) fn owned_value<T>(
        &mut self,
        obj: &ObjId,
        key: &str,
        auth: Auth<'_>,
        owns: &dyn Fn(&Writer) -> bool,
        not_owner: &str,
        accept: impl Fn(&Value<'_>) -> Result<T, String>,
    ) -> (Option<(ObjId, T)>, RefusedOps) {
        /// Replacements looked behind, at most (each is one hostile write).
        const MAX_STEPS: usize = 16;
        let mut values: Vec<(ObjId, Result<T, String>)> =
            self.am.get_all(obj, key).unwrap_or_default().into_iter().map(|(v, op)| (op, accept(&v))).collect();
        let mut refused = Vec::new();
        let mut found: Option<(ObjId, T)> = None;
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..MAX_STEPS {
            let mut behind = Vec::new();
            for (op, value) in values {
                let owner = owns(&auth(&op));
                match value {
                    Ok(v) if owner => {
                        if found.as_ref().and_then(|(f, _)| op_key(f)) < op_key(&op) {
                            found = Some((op, v));
                        }
                        continue;
                    }
                    Ok(_) if step == 0 => refused.push((op.clone(), not_owner.to_owned())),
                    Err(why) if step == 0 => refused.push((op.clone(), why)),
                    _ => {}
                }
                if op_key(&op).is_some_and(|k| seen.insert(k)) {
                    let deps = self.deps_of(&op).unwrap_or_default();
                    behind.extend(self.values_at(obj, key, &deps, &accept));
                }
            }
            if found.is_some() || behind.is_empty() {
                break;
            }
            values = behind;
        }
        (found, refused)
    }
}

fn max_state(story: &str, a: Option<StoryState>, b: Option<StoryState>) -> Option<StoryState> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.precedence(story, &a).is_gt() { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl Doc {
    /// Puts `value` at `obj[key]` as our own op. Automerge skips a put of
    /// the value the key already holds (and resolves a conflict whose
    /// winner holds it by deleting the others): a peer that wrote our next
    /// value first, a forged claim in our name say, would then own our
    /// write, and validity is judged per writer. So when the winner holds
    /// our value under another actor, the key is cleared first.
    pub(crate) fn put_own(&mut self, obj: &ObjId, key: &str, value: ScalarValue) {
        let own = self.am.get_actor().clone();
        let theirs = match self.am.get(obj, key) {
            Ok(Some((Value::Scalar(v), ObjId::Id(_, actor, _)))) => *v == value && actor != own,
            _ => false,
        };
        if theirs {
            // Our own in-memory document and an object we just read.
            self.am.delete(obj, key).expect("clear a key before our own put");
        }
        self.am.put(obj, key, value).expect("put our own value");
    }
}
