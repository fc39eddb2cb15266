//! `huskies story …` and `huskies logs`: stories and their runs, from the CLI.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use huskies_net::status::{AddStory, EditStory, StoryDetail};

use crate::admin::Target;
use crate::client::{Client, http_base};
use crate::error::CliError;

/// A body from `--body TEXT` or `--body-file F` (`-` reads stdin).
#[derive(clap::Args, Clone, Default)]
pub struct BodyArgs {
    /// The story's body (markdown, up to 64 KiB).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body from this file (`-` for stdin).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
}

impl BodyArgs {
    pub fn read(&self) -> Result<Option<String>, String> {
        match (&self.body, &self.body_file) {
            (Some(b), _) => Ok(Some(b.clone())),
            (None, Some(f)) if f.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading the body from stdin: {e}"))?;
                Ok(Some(s))
            }
            (None, Some(f)) => std::fs::read_to_string(f).map(Some).map_err(|e| format!("{}: {e}", f.display())),
            (None, None) => Ok(None),
        }
    }
}

pub fn add(
    t: &Target,
    title: &str,
    id: Option<&str>,
    stage: &str,
    body: &BodyArgs,
    priority: i64,
) -> Result<(), CliError> {
    let story = AddStory {
        title: title.to_owned(),
        id: id.map(str::to_owned),
        stage: Some(stage.to_owned()),
        body: body.read()?.unwrap_or_default(),
        priority,
    };
    println!("{}", t.client()?.add_story(&story)?);
    Ok(())
}

pub fn edit(
    t: &Target,
    id: &str,
    title: Option<String>,
    body: &BodyArgs,
    priority: Option<i64>,
) -> Result<(), CliError> {
    let edit = EditStory { title, body: body.read()?, priority };
    if edit.title.is_none() && edit.body.is_none() && edit.priority.is_none() {
        return Err("nothing to change: pass --title, --body, --body-file or --priority".into());
    }
    t.client()?.edit_story(id, &edit)?;
    println!("{id}: edited");
    Ok(())
}

pub fn move_to(t: &Target, id: &str, stage: &str) -> Result<(), CliError> {
    let v = t.client()?.move_story(id, stage)?;
    println!("{id}: {} -> {}", v["from"].as_str().unwrap_or("?"), v["to"].as_str().unwrap_or("?"));
    Ok(())
}

pub fn remove(t: &Target, id: &str) -> Result<(), CliError> {
    let v = t.client()?.remove_story(id)?;
    println!("{id}: removed at token {} (a run of it, if any, is stopped)", v["token"]);
    Ok(())
}

pub fn retry(t: &Target, id: &str) -> Result<(), CliError> {
    let v = t.client()?.retry_story(id)?;
    println!("{id}: retrying at token {}", v["token"]);
    Ok(())
}

pub fn list(t: &Target, all: bool) -> Result<(), CliError> {
    let s = t.client()?.status()?;
    for st in s.stories.iter().filter(|st| all || !st.removed) {
        let holder = st.holder.as_ref().map(|h| format!(" [{h}]")).unwrap_or_default();
        let mark = match (st.removed, st.failed) {
            (true, _) => " REMOVED",
            (_, true) => " FAILED",
            _ => "",
        };
        let prio = if st.priority != 0 { format!(" (priority {})", st.priority) } else { String::new() };
        println!("{:<28} {:<9} {}{prio}{holder}{mark}", st.id, st.stage, st.title);
    }
    Ok(())
}

pub fn show(t: &Target, id: &str, json: bool) -> Result<(), CliError> {
    let d = t.client()?.story(id)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?);
        return Ok(());
    }
    print!("{}", render(&d));
    Ok(())
}

/// `story show`'s text: the story, its body, its runs.
pub fn render(d: &StoryDetail) -> String {
    use std::fmt::Write;
    let s = &d.story;
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", s.id, s.title);
    let state = match (s.removed, s.failed, &s.holder) {
        (true, _, _) => "removed".to_owned(),
        (_, true, _) => format!("FAILED after {} attempts", s.attempts),
        (_, _, Some(h)) => format!("held by {h}"),
        _ => "free".to_owned(),
    };
    let _ = writeln!(out, "stage {}  token {}  priority {}  {state}", s.stage, s.token, s.priority);
    if let Some(c) = &s.landed {
        let _ = writeln!(out, "landed on the default branch in {c}");
    }
    if s.returns > 0 {
        let _ = writeln!(out, "sent back by landing {} time(s)", s.returns);
    }
    if let Some(r) = &s.reason {
        let _ = writeln!(out, "last failure: {r}");
    }
    if !d.body.is_empty() {
        let _ = writeln!(out, "\n{}", d.body.trim_end());
    }
    let usages: Vec<_> = d.runs.iter().filter_map(|r| r.report.usage.as_ref().map(|u| (r.stage, u))).collect();
    if !usages.is_empty() {
        let micro: u64 = usages.iter().map(|(_, u)| u.cost_micro_usd).fold(0, u64::saturating_add);
        let mut by_stage: std::collections::BTreeMap<huskies_engine::Stage, (usize, u64)> = Default::default();
        for (stage, u) in &usages {
            let e = by_stage.entry(*stage).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(u.cost_micro_usd);
        }
        let stages: Vec<String> = by_stage
            .iter()
            .map(|(st, (n, c))| {
                format!("{} ${:.4} ({n} run{})", st.as_str(), *c as f64 / 1e6, if *n == 1 { "" } else { "s" })
            })
            .collect();
        let _ = writeln!(
            out,
            "cost ${:.4} over {} reported run(s) (kept runs only): {}",
            micro as f64 / 1e6,
            usages.len(),
            stages.join(", ")
        );
    }
    let _ = writeln!(out, "\nruns ({}):", d.runs.len());
    for r in &d.runs {
        let exit = r.report.exit_code.map_or("-".to_owned(), |c| c.to_string());
        let commit = r.report.commit.as_deref().map_or("-", |c| &c[..c.len().min(10)]);
        let outcome = format!("{:?}", r.outcome).to_lowercase();
        let _ = writeln!(
            out,
            "  {:<8} token {:<4} attempt {} {:<12} {outcome:<9} exit {exit:<3} {:>7.1} s  commit {commit}",
            r.stage.as_str(),
            r.token.0,
            r.attempt,
            r.node.as_str(),
            r.report.duration_ms as f64 / 1000.0,
        );
        if let Some(u) = &r.report.usage {
            let _ = writeln!(
                out,
                "           ${:.4}  {} turns  tokens in {} out {} cache read {} write {}  {}",
                u.cost_micro_usd as f64 / 1e6,
                u.turns,
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.model
            );
        }
        if let Some(why) = &r.reason {
            let _ = writeln!(out, "           {why}");
        }
        let tail = r.report.stderr_tail.trim_end();
        if !tail.is_empty() {
            for line in tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
                let _ = writeln!(out, "           | {line}");
            }
        }
    }
    out
}

/// `huskies logs`: a run's log from the node that ran it (the holder's
/// live log while it runs, else the newest run record's node).
pub fn logs(t: &Target, id: &str, stage: Option<&str>, follow: bool) -> Result<(), CliError> {
    let admin = t.client()?;
    let d = admin.story(id)?;
    let status = admin.status()?;
    let running = d.story.holder.clone().filter(|_| stage.is_none_or(|s| s == d.story.stage));
    let node = match running {
        Some(h) => h.to_string(),
        None => d
            .runs
            .iter()
            .rev()
            .find(|r| stage.is_none_or(|s| s == r.stage.as_str()))
            .map(|r| r.node.to_string())
            .ok_or_else(|| {
            format!("{id} has no runs{} yet", stage.map(|s| format!(" in {s}")).unwrap_or_default())
        })?,
    };
    let rec = status.nodes.iter().find(|n| n.id.as_str() == node);
    let address = rec.and_then(|n| n.address.clone()).ok_or_else(|| format!("node {node} has no address on record"))?;
    if rec.is_some_and(|n| !n.alive) {
        return Err(
            format!("node {node} ({address}) is offline: its log of {id} cannot be fetched until it is back").into()
        );
    }
    let client = Client::new(&http_base(&address)?, t.key_value()?, t.ca_cert.as_deref())?;
    let mut offset = 0;
    loop {
        let slice = client.log(id, stage, offset).map_err(|e| format!("from node {node} ({address}): {e}"))?;
        print!("{}", slice.text);
        offset = slice.offset + slice.text.len() as u64;
        if !follow {
            return Ok(());
        }
        if offset >= slice.total {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
