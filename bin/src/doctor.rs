//! `huskies doctor`: every value a node refused to believe, grouped by
//! the node that wrote it, and what revoking that node would restore.
//!
//! Refused values never took effect (the last valid value stands, see
//! `engine/src/schema.rs`), so a revocation does not need to undo them;
//! what it changes is the writer's standing: its claims free at once, no
//! node applies its changes any more (`engine/src/signing.rs`), and the
//! server cuts an epoch that leaves its history behind.

use std::collections::BTreeMap;

use huskies_engine::schema::Refusal;
use huskies_net::status::Status;

use crate::admin::Target;
use crate::error::CliError;

pub fn run(t: &Target, json: bool) -> Result<(), CliError> {
    let s = t.client()?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s.refused).map_err(|e| e.to_string())?);
        return Ok(());
    }
    print!("{}", report(&s));
    Ok(())
}

/// The report, as text (a function of the status alone, so it is tested
/// without a cluster).
pub fn report(s: &Status) -> String {
    let mut out = String::new();
    let r = &s.refused;
    if r.total == 0 {
        out.push_str(&format!("node {}: every value in the document is believed; nothing to do\n", s.node));
        return out;
    }
    let shown = r.newest.len() as u64;
    let more = if r.total > shown { format!(" (the newest {shown} shown)") } else { String::new() };
    out.push_str(&format!("node {} refused {} values{more}\n", s.node, r.total));
    let mut by_writer: BTreeMap<Option<&str>, Vec<&Refusal>> = BTreeMap::new();
    for refusal in &r.newest {
        by_writer.entry(refusal.writer.as_deref()).or_default().push(refusal);
    }
    for (writer, refusals) in by_writer {
        out.push('\n');
        let Some(writer) = writer else {
            out.push_str(&format!("written by no known node ({}):\n", refusals.len()));
            push_refusals(&mut out, &refusals);
            continue;
        };
        let node = s.nodes.iter().find(|n| n.id.as_str() == writer);
        let standing = match node {
            Some(n) if n.revoked => "revoked".to_owned(),
            Some(n) if n.alive => "alive".to_owned(),
            Some(_) => "silent".to_owned(),
            None if writer.starts_with("huskies-") => "huskies' own writer".to_owned(),
            None => "not a member".to_owned(),
        };
        out.push_str(&format!("written by {writer} ({standing}), {} refused:\n", refusals.len()));
        push_refusals(&mut out, &refusals);
        if node.is_some_and(|n| !n.revoked) {
            let held: Vec<&str> = s
                .stories
                .iter()
                .filter(|st| st.holder.as_ref().map(|h| h.as_str()) == Some(writer))
                .map(|st| st.id.as_str())
                .collect();
            out.push_str(&format!("  revoking it (huskies node revoke {writer}) would:\n"));
            let claims = if held.is_empty() { "none".to_owned() } else { held.join(" ") };
            out.push_str(&format!("    free the {} claims it holds: {claims}\n", held.len()));
            out.push_str("    stop every node applying its changes, and cut an epoch without its history\n");
            out.push_str("    leave its refused values refused: the last valid values already stand\n");
        }
    }
    out
}

fn push_refusals(out: &mut String, refusals: &[&Refusal]) {
    for r in refusals {
        out.push_str(&format!("  {}: {}\n", r.key, r.what));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(refused: Vec<Refusal>, total: u64) -> Status {
        let json = serde_json::json!({
            "node": "server", "label": "s", "peers": 1, "mesh_peers": 0, "stories": [
                {"id": "s1", "title": "t", "stage": "current", "token": 3, "holder": "mallory", "attempts": 0,
                 "failed": false, "last_result_by": null, "reason": null, "removed": false, "priority": 0,
                 "created_ms": 0, "landed": null}
            ],
            "nodes": [{"id": "mallory", "label": "m", "address": null, "capacity": 1, "alive": true}],
            "runs": [],
            "counters": huskies_net::status::Counters::default(),
        });
        let mut s: Status = serde_json::from_value(json).expect("a status");
        s.refused = huskies_net::status::Refused { total, newest: refused };
        s
    }

    #[test]
    fn groups_by_writer_and_says_what_revocation_restores() {
        let r = |key: &str, writer: Option<&str>| Refusal {
            key: key.into(),
            what: "a removal, which only the server may write".into(),
            writer: writer.map(str::to_owned),
        };
        let text = report(&status(vec![r("stories/s1/state", Some("mallory")), r("stories/s2", None)], 9));
        assert!(text.contains("node server refused 9 values (the newest 2 shown)"), "{text}");
        assert!(text.contains("written by mallory (alive), 1 refused:\n  stories/s1/state: a removal"), "{text}");
        assert!(text.contains("huskies node revoke mallory"), "{text}");
        assert!(text.contains("free the 1 claims it holds: s1"), "{text}");
        assert!(text.contains("written by no known node (1):"), "{text}");
        let clean = report(&status(Vec::new(), 0));
        assert!(clean.contains("nothing to do"), "{clean}");
    }
}
