//! The short commands that ask a running node or the server's data dir:
//! status, nodes, join tokens, the dashboard link.

use std::path::PathBuf;

use huskies_net::auth;

use crate::client::Client;
use crate::error::CliError;
use crate::run::state_dir;

/// Where the CLI finds a node and the admin key.
#[derive(clap::Args)]
pub struct Target {
    /// The node's HTTP address (the server's, or any agent's): http:// or https://.
    #[arg(long, global = true, env = "HUSKIES_SERVER", default_value = "http://127.0.0.1:3001")]
    pub server: String,
    /// PEM certificate(s) trusted besides the system roots, for an https
    /// node whose certificate comes from the cluster's own CA.
    #[arg(long, global = true, env = "HUSKIES_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The server's data dir, which holds the admin key [default:
    /// ~/.local/state/huskies/server].
    #[arg(long, global = true, env = "HUSKIES_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The admin key itself, instead of reading it from the data dir.
    #[arg(long, global = true, env = "HUSKIES_ADMIN_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl Target {
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.server, self.key_value()?, self.ca_cert.as_deref())
    }

    /// The admin key: `--key`, else read from the data dir.
    pub fn key_value(&self) -> Result<Option<String>, String> {
        let key = match &self.key {
            Some(k) => k.clone(),
            None => {
                let dir = self.data_dir.clone().map_or_else(|| state_dir("server"), Ok)?;
                auth::read_key(&dir)
                    .map_err(|e| format!("cannot read the admin key in {}: {e}", dir.display()))?
                    .ok_or_else(|| {
                        format!("no admin key in {} (pass the server's --data-dir, or --key)", dir.display())
                    })?
            }
        };
        Ok(Some(key))
    }
}

pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number then s, m, h or d (e.g. 1h)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3_600,
        "d" => 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?}; use s, m, h or d")),
    };
    if n == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(n * mult)
}

fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)] // token expiry is wall-clock time
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn token_create(data_dir: Option<PathBuf>, ttl: u64) -> Result<(), CliError> {
    let data_dir = &data_dir.map_or_else(|| state_dir("server"), Ok)?;
    auth::server_key(data_dir).map_err(|e| e.to_string())?;
    let token = auth::create_join_token(data_dir, ttl, unix_now()).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

/// `--json`: the API's answer as it came, pretty-printed.
fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(())
}

pub fn node_list(t: &Target, json: bool) -> Result<(), CliError> {
    let nodes = t.client()?.nodes()?;
    if json {
        return print_json(&nodes);
    }
    for n in nodes {
        let state = if n.revoked {
            "revoked"
        } else if n.alive {
            "alive"
        } else {
            "silent"
        };
        let key = n.key.as_deref().map_or("-", |k| &k[..16.min(k.len())]);
        println!("{:<24} {:<8} key {key}  {}  {}", n.id, state, n.address.as_deref().unwrap_or("-"), n.label);
    }
    Ok(())
}

pub fn node_revoke(t: &Target, id: &str) -> Result<(), CliError> {
    t.client()?.revoke(id)?;
    println!("{id}: revoked; every node refuses it and its stories are reclaimed");
    Ok(())
}

pub fn status(t: &Target, json: bool) -> Result<(), CliError> {
    let s = t.client()?.status()?;
    if json {
        return print_json(&s);
    }
    println!(
        "node {} ({}), {} peers: {}",
        s.node,
        s.label,
        s.peers,
        s.connected.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    match &s.settings {
        Some(c) => println!(
            "cluster settings (revision {}): claim timeout {} ms, heartbeat {} ms, stagger {} ms, sync {} ms",
            c.revision, c.claim_timeout_ms, c.heartbeat_interval_ms, c.claim_stagger_ms, c.sync_interval_ms
        ),
        None => println!("cluster settings: none from the server yet (using this node's project.toml)"),
    }
    if !s.stages.is_empty() {
        println!("works stages: {}", s.stages.join(", "));
    }
    println!("pipeline:");
    for stage in huskies_engine::Stage::ALL {
        let n = s.stories.iter().filter(|st| st.stage == stage.as_str() && !st.removed).count();
        let failed = s.stories.iter().filter(|st| st.stage == stage.as_str() && st.failed && !st.removed).count();
        let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
        println!("  {:<9} {n}{failed}", stage.as_str());
    }
    let failed: Vec<_> = s.stories.iter().filter(|st| st.failed && !st.removed).collect();
    if !failed.is_empty() {
        println!("failed (huskies story retry ID gives new attempts):");
        for st in failed {
            println!("  {:<28} {:<8} {}", st.id, st.stage, st.reason.as_deref().unwrap_or("no reason recorded"));
        }
    }
    if !s.fenced.is_empty() {
        println!("fenced runs (a newer claim's result stands; this work is kept beside it):");
        for f in &s.fenced {
            println!("  {:<28} {:<8} token {:<4} {:<12} {}", f.story, f.stage, f.token, f.node, f.reason);
        }
    }
    println!("nodes:");
    for n in &s.nodes {
        let claims = s.stories.iter().filter(|st| st.holder.as_ref() == Some(&n.id)).count();
        let state = if n.alive { "alive" } else { "silent" };
        println!("  {:<20} {:<7} capacity {} claims {claims}  {}", n.id, state, n.capacity, n.label);
    }
    if s.refused.total > 0 {
        println!(
            "values refused ({} in all; the last valid values stand; revoke the writer if it is hostile):",
            s.refused.total
        );
        for r in s.refused.newest.iter().rev().take(10) {
            println!("  {r}");
        }
    }
    if let Some(p) = &s.paused {
        println!("claims paused for {} s: this node's agent could not run: {}", p.seconds_left, p.reason);
    }
    if !s.runs.is_empty() {
        println!("runs on this node:");
        for r in &s.runs {
            let now = r
                .progress
                .as_ref()
                .filter(|p| p.turns > 0)
                .map_or(String::new(), |p| format!("  turn {} {} {}", p.turns, p.tool, p.target));
            println!("  {:<28} {:<8} token {:<4}{now}", r.story, r.stage, r.token);
        }
    }
    print!("{}", ledger_text(&s.costs));
    Ok(())
}

/// `status`'s cost part: the day against its budget, then sums per node,
/// stage and day (the ledger's lines, models folded together).
pub fn ledger_text(k: &huskies_net::costs::Costs) -> String {
    use huskies_net::costs::usd;
    use std::fmt::Write;
    let mut out = String::new();
    let budget = k.daily_budget_micro_usd.map_or(" (no daily budget)".to_owned(), |b| format!(" of {}", usd(b)));
    let today = k.today.as_deref().unwrap_or("today");
    let _ = writeln!(out, "agent cost {today} (UTC): {}{budget}", usd(k.spent_today_micro_usd));
    if k.budget_spent {
        let _ = writeln!(
            out,
            "  the daily budget is spent: no node claims new agent runs (current, qa) until tomorrow (UTC) or a higher budget"
        );
    }
    if let Some(m) = k.max_story_cost_micro_usd {
        let _ = writeln!(out, "  a story is given up once its runs cost {}", usd(m));
    }
    if k.lines.is_empty() {
        return out;
    }
    // (day, node, stage) -> (runs, cost, tokens in, tokens out)
    type Key<'a> = (std::cmp::Reverse<&'a str>, &'a str, &'a str);
    let mut sums: std::collections::BTreeMap<Key, (u64, u64, u64, u64)> = Default::default();
    for l in &k.lines {
        let day = if l.day == "all" { "~all" } else { l.day.as_str() };
        let x = &l.line;
        let e = sums.entry((std::cmp::Reverse(day), &l.node, x.stage.as_str())).or_default();
        e.0 += x.runs;
        e.1 = e.1.saturating_add(x.cost_micro_usd);
        e.2 = e.2.saturating_add(x.input_tokens + x.cache_read_tokens + x.cache_write_tokens);
        e.3 = e.3.saturating_add(x.output_tokens);
    }
    let _ = writeln!(out, "agent cost by day, node and stage:");
    for ((std::cmp::Reverse(day), node, stage), (runs, cost, tin, tout)) in sums {
        let day = if day == "~all" { "all time" } else { day };
        let _ = writeln!(
            out,
            "  {day:<10} {node:<20} {stage:<8} {runs:>5} runs  {:>10}  tokens in {tin} out {tout}",
            usd(cost)
        );
    }
    out
}

/// `huskies dashboard`: the node's dashboard URL with the admin key in the
/// fragment (the page trades it for a session cookie and drops it).
pub fn dashboard_link(target: &Target) -> Result<(), CliError> {
    let key = target.key_value()?.ok_or("no admin key")?;
    let base = target.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!("--server {base:?}: expected an http:// or https:// address").into());
    }
    println!("{base}/#key={key}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl() {
        assert_eq!(super::parse_ttl("1h"), Ok(3600));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert!(super::parse_ttl("1w").unwrap_err().contains("unknown unit"));
        assert!(super::parse_ttl("abc").is_err());
        assert!(super::parse_ttl("0s").is_err());
    }
}
