//! The writes a hostile enrolled node can make: well-formed Automerge
//! changes of anything, into its own replica, which then syncs them as any
//! change, signed by the node (issue 21). For tests and simulations of
//! such a node: the harness's Byzantine writer and the sim's Byzantine
//! node kind draw from [`random_attack`].

use automerge::{AutoCommit, ObjId};

/// Where the document's parts are, for the closure to write at.
pub struct Parts {
    pub stories: ObjId,
    pub nodes: ObjId,
}

impl crate::Engine {
    /// Runs `write` on this node's document as its own changes, and lets
    /// them out (persisted, synced) as if it had made them.
    pub fn write_hostile(&mut self, now: crate::Millis, write: impl FnOnce(&mut AutoCommit, &Parts)) {
        self.now = self.now.max(now);
        let parts = Parts { stories: self.doc.stories_obj().clone(), nodes: self.doc.nodes_obj().clone() };
        write(self.doc.automerge(), &parts);
        self.doc.commit_now();
        // Its own engine sees its writes as a peer's would.
        self.absorb_remote_changes();
        self.doc.mark_unpersisted();
        self.finish_input();
    }
}

/// One random hostile write, drawn from `draw`: wrong types, absurd
/// values, deletions, garbage where records, ledger lines, cars and node
/// records live, floods of stories.
pub fn random_attack(
    am: &mut automerge::AutoCommit,
    parts: &Parts,
    stories: &[crate::StoryId],
    draw: &mut impl FnMut() -> u64,
) {
    use automerge::{ObjType, ReadDoc, ScalarValue, transaction::Transactable};
    let story = &stories[(draw() % stories.len() as u64) as usize];
    let obj = match am.get(&parts.stories, story.as_str()) {
        Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => Some(obj),
        _ => None,
    };
    let scalars: [ScalarValue; 8] = [
        ScalarValue::Int(-1),
        ScalarValue::Uint(u64::MAX),
        ScalarValue::counter(7),
        ScalarValue::Boolean(true),
        ScalarValue::Null,
        ScalarValue::Bytes(vec![0xff; 3]),
        ScalarValue::F64(f64::NAN),
        ScalarValue::Str("not json".into()),
    ];
    let scalar = scalars[(draw() % scalars.len() as u64) as usize].clone();
    let absurd_states = [
        r#"{"stage":"current","token":18446744073709551615,"holder":"ghost"}"#.to_owned(),
        r#"{"stage":"current","token":3,"attempts":4294967295}"#.to_owned(),
        r#"{"stage":"merge","token":3,"returns":4294967295,"queued":18446744073709551615}"#.to_owned(),
        r#"{"stage":"nowhere","token":3}"#.to_owned(),
        format!(r#"{{"stage":"done","token":{},"holder":"agent-002"}}"#, 1u64 << 40),
        format!(r#"{{"stage":"current","token":5,"reason":"{}"}}"#, "x".repeat(100_000)),
    ];
    let field = ["state", "title", "priority", "created", "body"][(draw() % 5) as usize];
    match (draw() % 13, obj) {
        (0, Some(o)) => {
            let _ = am.put(&o, field, scalar);
        }
        (1, Some(o)) => {
            let s = &absurd_states[(draw() % absurd_states.len() as u64) as usize];
            let _ = am.put(&o, "state", s.as_str());
        }
        (2, Some(o)) => {
            let kind = [ObjType::List, ObjType::Text, ObjType::Map][(draw() % 3) as usize];
            let _ = am.put_object(&o, field, kind);
        }
        (3, _) => {
            let kind = [ObjType::List, ObjType::Text][(draw() % 2) as usize];
            let _ = am.put_object(&parts.stories, story.as_str(), kind);
        }
        (4, _) => {
            let _ = am.put(&parts.stories, story.as_str(), scalar);
        }
        (5, _) => {
            let _ = am.delete(&parts.stories, story.as_str());
        }
        (6, Some(o)) => {
            let _ = am.put(&o, format!("run/{:020}/ghost", draw() % 9), "{\"garbage\":true}");
            let _ = am.put(&o, "run/xx", scalar);
        }
        (7, _) => {
            let _ = am.put(automerge::ROOT, "ledger/agent-002/d1", "[{\"stage\":\"current\"}]");
            let _ = am.put(automerge::ROOT, "ledger/rendezvous/all", ScalarValue::Uint(u64::MAX));
            let _ = am.put(automerge::ROOT, "train/agent-001", "{not a car");
        }
        (8, _) => {
            let nodes: Vec<String> = am.keys(&parts.nodes).collect();
            if let Some(n) = nodes.first() {
                let _ = am.put(&parts.nodes, n.as_str(), scalar);
            }
            let _ = am.put_object(&parts.nodes, "ghost", ObjType::List);
        }
        (9, _) => {
            // A flood of valid-looking stories.
            for k in 0..50 {
                if let Ok(o) =
                    am.put_object(&parts.stories, format!("flood-{}-{k}", draw() % 1000).as_str(), ObjType::Map)
                {
                    let _ = am.put(&o, "title", "flood");
                    let _ = am.put(&o, "state", r#"{"stage":"backlog","token":0}"#);
                }
            }
        }
        (11, Some(o)) => {
            // A forged command: the admin's removal, or a claim in another
            // node's name, one token above the story's state.
            let current = match am.get(&o, "state") {
                Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
                    ScalarValue::Str(t) => crate::StoryState::decode(t),
                    _ => None,
                },
                _ => None,
            };
            if let Some(mut st) = current {
                st.token = crate::Token(st.token.0.saturating_add(1));
                if draw().is_multiple_of(2) {
                    (st.removed, st.holder) = (true, None);
                } else {
                    st.holder = Some(crate::testkit::node_name(1));
                }
                let _ = am.put(&o, "state", st.encode());
            }
        }
        (10, _) if draw().is_multiple_of(4) => {
            let _ = am.delete(automerge::ROOT, ["stories", "nodes"][(draw() % 2) as usize]);
        }
        _ => {
            let _ = am.put(automerge::ROOT, "settings", scalar);
        }
    }
}

/// One hostile write to the merge queue's cars, drawn from `draw`: a car
/// of `own` (the hostile node) rewritten so that it no longer lists what
/// batches stacked on it were built on (its stories reversed, its chain
/// ahead dropped), or another node's car forged the same way under that
/// node's key. Either breaks every chain stacked on the car, if believed.
pub fn car_attack(am: &mut AutoCommit, own: &crate::NodeId, draw: &mut impl FnMut() -> u64) {
    use automerge::{ReadDoc, ScalarValue, transaction::Transactable};
    let keys: Vec<String> = am.keys(automerge::ROOT).filter(|k| k.starts_with("train/")).collect();
    let own_key = format!("train/{own}");
    let key = if keys.is_empty() || draw().is_multiple_of(2) {
        own_key
    } else {
        keys[(draw() % keys.len() as u64) as usize].clone()
    };
    let car = match am.get(automerge::ROOT, key.as_str()) {
        Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(t) => crate::landing::Car::decode(t),
            _ => None,
        },
        _ => None,
    };
    let Some(mut car) = car else { return };
    if car.stories.len() > 1 && draw().is_multiple_of(2) {
        car.stories.reverse();
    } else {
        car.ahead.clear();
        car.batch = car.batch.wrapping_add(1);
    }
    let _ = am.put(automerge::ROOT, key.as_str(), car.encode());
}
