//! `huskies queue`: the merge queue as a node sees it.

use crate::admin::Target;
use crate::error::CliError;

pub fn show(t: &Target, json: bool) -> Result<(), CliError> {
    let q = t.client()?.queue()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&q).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let testing_on = |id: &str| q.testing.iter().find(|b| b.stories.iter().any(|s| s == id)).map(|b| b.node.as_str());
    println!("merge queue: {} waiting to land", q.order.len());
    for (i, item) in q.order.iter().enumerate() {
        let state = match (testing_on(&item.id), &item.holder) {
            (Some(node), _) => format!("testing on {node}"),
            (None, Some(h)) => format!("held by {h}"),
            (None, None) => "waiting for a merge node".to_owned(),
        };
        let returns = if item.returns > 0 { format!(", sent back {}x", item.returns) } else { String::new() };
        println!("  {:>3}. {:<28} {state}{returns}  {}", i + 1, item.id, item.title);
    }
    if !q.testing.is_empty() {
        println!("being tested:");
        for b in &q.testing {
            let ahead = if b.ahead.is_empty() {
                "on the default branch".to_owned()
            } else {
                format!("on top of {} ({})", b.ahead.len(), b.ahead.join(" "))
            };
            println!("  {} batch {}: {} {ahead}", b.node, b.batch, b.stories.join(" "));
        }
    }
    if !q.landed.is_empty() {
        println!("last landed:");
        for l in &q.landed {
            let short = l.commit.get(..12).unwrap_or(&l.commit);
            println!("  {short}  {:<28} by {}  {}", l.id, l.node, l.title);
        }
    }
    Ok(())
}
