//! `huskies fleet-bench`: a real fleet on one machine. One `huskies server`
//! and N agents, each a process on a loopback address of its own
//! (127.0.0.2, 127.0.0.3, ...) with the built-in stand-in agent; stories
//! added at a steady rate until all are done (landed on the default
//! branch). What the fleet cost is read from where an operator would read
//! it: `/proc` (CPU, RSS), `/metrics` (heartbeat bytes) and the nodes' own
//! logs (every event carries `unix_ms`: when each node claimed a story and
//! saw each stage change).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use huskies_net::auth;
use huskies_net::status::AddStory;

use crate::client::Client;
use crate::error::CliError;
use crate::local::{Procs, git_fixture, server_args, spawn, wait_for_key, wait_healthy};

#[derive(clap::Args)]
pub struct FleetArgs {
    /// Fleet sizes to run, one after the other, e.g. 10,50,200 (at most
    /// 250: one loopback address each).
    #[arg(long, value_delimiter = ',', default_value = "10")]
    agents: Vec<usize>,
    /// Stories to add in each run.
    #[arg(long, default_value_t = 60)]
    stories: usize,
    /// Stories added per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Give up on a run this many seconds after its last story was added.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Keep each run's scratch directory (repos, data, logs).
    #[arg(long)]
    keep: bool,
}

/// One loopback address per agent: 127.0.0.2 up to this many agents.
const MAX_AGENTS: usize = 250;

/// Agents started together, each wave up before the next.
const WAVE: usize = 25;

/// The agents' nice(1) level.
const AGENT_NICE: &str = "10";

/// Every event line at debug for the event loop: stage changes are what a
/// change's spread is timed by.
const RUST_LOG: &str = "info,automerge=warn,huskies_net::node::event_loop=debug";

pub fn run(a: FleetArgs) -> Result<(), CliError> {
    if let Some(n) = a.agents.iter().find(|n| **n == 0 || **n > MAX_AGENTS) {
        return Err(format!("--agents {n}: between 1 and {MAX_AGENTS} (one loopback address each)").into());
    }
    if !(a.rate.is_finite() && a.rate > 0.0) {
        return Err(format!("--rate {}: a positive number of stories a second", a.rate).into());
    }
    if a.stories == 0 {
        return Err("--stories 0: nothing to measure".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for &n in &a.agents {
        let scratch = std::env::temp_dir().join(format!("huskies-fleet-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        let result = run_fleet(&a, &exe, &scratch, n);
        // A run that did not finish keeps its logs for a look.
        if a.keep || result.as_ref().is_ok_and(|o| o.done < o.stories) || result.is_err() {
            println!("scratch directory kept: {}", scratch.display());
        } else {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        let outcome = result?;
        outcome.print();
        rows.push(outcome);
    }
    println!();
    println!("{}", Outcome::TABLE_HEAD);
    for r in &rows {
        println!("{}", r.table_row());
    }
    match rows.iter().find(|r| r.done < r.stories) {
        Some(r) => Err(format!("{} of {} stories done with {} agents", r.done, r.stories, r.agents).into()),
        None => Ok(()),
    }
}

/// What one run measured. Times are wall-clock milliseconds.
struct Outcome {
    agents: usize,
    stories: usize,
    done: usize,
    startup_s: f64,
    /// From the first story added to the last one done.
    window_s: f64,
    server_cpu_s: f64,
    server_rss_kb: u64,
    server_peak_rss_kb: u64,
    agent_peak_rss_kb: Vec<u64>,
    add_to_claim_ms: Vec<u64>,
    /// For each stage change every node saw: first sight to last.
    spread_ms: Vec<u64>,
    /// Stage changes seen at all, by any node.
    changes_seen: usize,
    beats: Beats,
}

impl Outcome {
    const TABLE_HEAD: &str = "| agents | stories done | server CPU s/story | server cores | server RSS MB | agent RSS MB (mean / max) | add → claim p50 / p99 ms | change → every node p50 / p99 ms | heartbeat B/s per agent | server heartbeat B/s | signature checks / agent / s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    fn cores(&self) -> f64 {
        self.server_cpu_s / self.window_s.max(f64::EPSILON)
    }

    fn agent_rss_mb(&self) -> (f64, f64) {
        let n = self.agent_peak_rss_kb.len().max(1) as f64;
        let mean = self.agent_peak_rss_kb.iter().sum::<u64>() as f64 / n / 1024.0;
        let max = self.agent_peak_rss_kb.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
        (mean, max)
    }

    /// Per agent per second.
    fn per_agent_s(&self, total: u64) -> f64 {
        total as f64 / self.agents as f64 / self.window_s.max(f64::EPSILON)
    }

    fn beat_rates(&self) -> (f64, f64) {
        (self.per_agent_s(self.beats.agent_bytes), self.beats.server_bytes as f64 / self.window_s.max(f64::EPSILON))
    }

    fn print(&self) {
        let (rss_mean, rss_max) = self.agent_rss_mb();
        let (beat_agent, beat_server) = self.beat_rates();
        println!(
            "fleet of {} agents: {}/{} stories done in {:.1} s (started in {:.1} s)",
            self.agents, self.done, self.stories, self.window_s, self.startup_s
        );
        println!(
            "  server    {:.3} CPU s per story ({:.3} cores), RSS {:.0} MB (peak {:.0} MB)",
            self.server_cpu_s / self.done.max(1) as f64,
            self.cores(),
            self.server_rss_kb as f64 / 1024.0,
            self.server_peak_rss_kb as f64 / 1024.0
        );
        println!("  agents    peak RSS mean {rss_mean:.0} MB, max {rss_max:.0} MB");
        println!(
            "  add → first claim       p50 {} ms, p99 {} ms ({} stories)",
            percentile(&self.add_to_claim_ms, 50),
            percentile(&self.add_to_claim_ms, 99),
            self.add_to_claim_ms.len()
        );
        println!(
            "  change → every node     p50 {} ms, p99 {} ms ({} of {} stage changes seen by all {} nodes)",
            percentile(&self.spread_ms, 50),
            percentile(&self.spread_ms, 99),
            self.spread_ms.len(),
            self.changes_seen,
            self.agents + 1
        );
        println!("  heartbeats sent         {beat_agent:.0} B/s per agent, {beat_server:.0} B/s by the server");
        println!(
            "  heartbeats checked      {:.1} per agent per second, costing {:.2} signature checks and {:.1} hashes",
            self.per_agent_s(self.beats.checked),
            self.per_agent_s(self.beats.signatures),
            self.per_agent_s(self.beats.hashes)
        );
    }

    fn table_row(&self) -> String {
        let (rss_mean, rss_max) = self.agent_rss_mb();
        let (beat_agent, beat_server) = self.beat_rates();
        format!(
            "| {} | {}/{} | {:.3} | {:.3} | {:.0} | {rss_mean:.0} / {rss_max:.0} | {} / {} | {} / {} | {beat_agent:.0} | {beat_server:.0} | {:.2} |",
            self.agents,
            self.done,
            self.stories,
            self.server_cpu_s / self.done.max(1) as f64,
            self.cores(),
            self.server_peak_rss_kb as f64 / 1024.0,
            percentile(&self.add_to_claim_ms, 50),
            percentile(&self.add_to_claim_ms, 99),
            percentile(&self.spread_ms, 50),
            percentile(&self.spread_ms, 99),
            self.per_agent_s(self.beats.signatures),
        )
    }
}

/// The `p`th percentile (nearest rank) of `xs`; 0 when empty.
fn percentile(xs: &[u64], p: usize) -> u64 {
    let mut v = xs.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n => v[((n * p).div_ceil(100)).clamp(1, n) - 1],
    }
}

fn loopback(i: usize) -> String {
    format!("127.0.0.{}", i + 1)
}

fn free_port_on(host: &str) -> Result<u16, String> {
    let l = std::net::TcpListener::bind((host, 0)).map_err(|e| format!("cannot listen on {host}: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The fleet's project: quick stand-in runs that never fail on purpose, and
/// every agent landing through the repository's gate.
fn project_toml(exe: &Path) -> String {
    let args = ["stand-in", "--duration-ms", "300", "--jitter-ms", "400", "--fail-rate", "0"];
    let args = args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let mut s = String::from("capacity = 2\n");
    for stage in ["current", "qa"] {
        s.push_str(&format!("\n[agents.{stage}]\ncommand = {:?}\nargs = [{args}]\n", exe.to_string_lossy()));
    }
    s.push_str("\n[merge]\ngates = [\"sh ci.sh\"]\nbatch = 8\n");
    s
}

fn run_fleet(a: &FleetArgs, exe: &Path, scratch: &Path, n: usize) -> Result<Outcome, CliError> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    #[allow(clippy::disallowed_methods)] // wall time of a real run
    let started = Instant::now();
    println!(
        "fleet-bench: server and {n} agents, {} stories at {}/s, scratch {}",
        a.stories,
        a.rate,
        scratch.display()
    );
    let remote = git_fixture(scratch)?;
    let envs = [("RUST_LOG", RUST_LOG)];
    let json_logs = |mut args: Vec<String>| {
        args.splice(0..0, ["--log-format".to_owned(), "json".to_owned()]);
        args
    };

    let port = free_port_on("127.0.0.1")?;
    let server_data = scratch.join("server-data");
    let server_root = scratch.join("server");
    std::fs::create_dir_all(server_root.join(".huskies")).map_err(|e| e.to_string())?;
    // The cluster's defaults: a 1 s heartbeat, a 10 s claim timeout.
    std::fs::write(server_root.join(".huskies/project.toml"), "").map_err(|e| e.to_string())?;
    let mut procs = Procs(Vec::new());
    let server_args = json_logs(server_args(port, &server_data, &server_root));
    procs.0.push(("rendezvous".into(), spawn(exe, &server_args, &scratch.join("rendezvous.log"), &envs)?));
    let key = wait_for_key(&server_data)?;
    let server = Client::new(&format!("http://127.0.0.1:{port}"), Some(key.clone()), None)?;
    wait_healthy(&server, "the server")?;

    let toml = project_toml(exe);
    let mut agents = BTreeMap::new();
    // Agents start in waves, as a fleet rolls out: 200 joins at once on 2
    // cores timed out at the server's door. They run at a lower priority
    // so the server stands in for a machine of its own.
    for wave in (1..=n).collect::<Vec<_>>().chunks(WAVE) {
        for &i in wave {
            let (name, host) = (format!("agent-{i:03}"), loopback(i));
            let root = scratch.join(&name);
            git2::Repository::clone(&s(&remote), &root).map_err(|e| e.message().to_owned())?;
            std::fs::create_dir_all(root.join(".huskies")).map_err(|e| e.to_string())?;
            std::fs::write(root.join(".huskies/project.toml"), &toml).map_err(|e| e.to_string())?;
            #[allow(clippy::disallowed_methods)] // token expiry is wall-clock time
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let token = auth::create_join_token(&server_data, 3_600, now).map_err(|e| e.to_string())?;
            let aport = free_port_on(&host)?;
            let mut agent_args = vec!["-n".into(), AGENT_NICE.into(), s(exe)];
            agent_args.extend(json_logs(vec![
                "agent".into(),
                "--rendezvous".into(),
                format!("ws://127.0.0.1:{port}/crdt-sync"),
                "--host".into(),
                host.clone(),
                "--port".into(),
                aport.to_string(),
                "--project-root".into(),
                s(&root),
                "--data-dir".into(),
                s(&scratch.join(format!("{name}-data"))),
                "--join-token".into(),
                token,
                "--node-id".into(),
                name.clone(),
            ]));
            let log = scratch.join(format!("{name}.log"));
            // nice(1) execs the agent: the pid is the agent's.
            procs.0.push((name.clone(), spawn(Path::new("nice"), &agent_args, &log, &envs)?));
            agents.insert(name, Client::new(&format!("http://{host}:{aport}"), Some(key.clone()), None)?);
        }
        for &i in wave {
            let name = format!("agent-{i:03}");
            wait_healthy(&agents[&name], &name)?;
        }
    }
    wait_all_alive(&server, n)?;
    // Let the mesh form and the first syncs settle before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let startup_s = started.elapsed().as_secs_f64();
    println!("  {n} agents alive after {startup_s:.1} s; adding stories");

    let pids: BTreeMap<String, u32> = procs.0.iter().map(|(name, c)| (name.clone(), c.id())).collect();
    let server_pid = pids["rendezvous"];
    let cpu0 = cpu_seconds(server_pid)?;
    let beats0 = Beats::scrape(&server, &agents);
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut added_ms = BTreeMap::new();
    for k in 0..a.stories {
        let due = Duration::from_secs_f64(k as f64 / a.rate);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let id = format!("fleet-{k:04}");
        added_ms.insert(id.clone(), huskies_net::node::unix_now_ms());
        let story = AddStory {
            title: format!("Fleet story {k}"),
            id: Some(id),
            stage: Some("current".into()),
            body: String::new(),
            priority: 0,
        };
        server.add_story(&story)?;
    }
    let adds_done = t0.elapsed();
    let done = loop {
        let st = server.status()?;
        let done = st.stories.iter().filter(|x| x.stage == "done").count();
        let failed = st.stories.iter().filter(|x| x.failed).count();
        if done + failed >= a.stories || t0.elapsed() > adds_done + Duration::from_secs(a.timeout_secs) {
            break done;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let window_s = t0.elapsed().as_secs_f64();
    let server_cpu_s = cpu_seconds(server_pid)? - cpu0;
    let beats = Beats::scrape(&server, &agents).since(beats0);
    let (server_rss_kb, server_peak_rss_kb) = rss_kb(server_pid)?;
    let agent_peak_rss_kb = pids
        .iter()
        .filter(|(name, _)| *name != "rendezvous")
        .filter_map(|(_, pid)| rss_kb(*pid).ok())
        .map(|r| r.1)
        .collect();
    drop(procs);

    let logs = Logs::read(scratch, pids.keys())?;
    let add_to_claim_ms =
        added_ms.iter().filter_map(|(id, at)| logs.first_claim.get(id).map(|c| c.saturating_sub(*at))).collect();
    let nodes = n + 1;
    let spread_ms = logs.seen.values().filter(|v| v.len() == nodes).map(|v| spread(v)).collect();
    Ok(Outcome {
        agents: n,
        stories: a.stories,
        done,
        startup_s,
        window_s,
        server_cpu_s,
        server_rss_kb,
        server_peak_rss_kb,
        agent_peak_rss_kb,
        add_to_claim_ms,
        spread_ms,
        changes_seen: logs.seen.len(),
        beats,
    })
}

fn spread(seen: &[u64]) -> u64 {
    let (min, max) = (seen.iter().min(), seen.iter().max());
    max.zip(min).map_or(0, |(max, min)| max - min)
}

/// Waits until the server counts `n` agents alive.
fn wait_all_alive(server: &Client, n: usize) -> Result<(), CliError> {
    #[allow(clippy::disallowed_methods)]
    let since = Instant::now();
    loop {
        let st = server.status()?;
        let alive = st.nodes.iter().filter(|x| x.alive && x.id.as_str() != "rendezvous").count();
        if alive >= n {
            return Ok(());
        }
        if since.elapsed() > Duration::from_secs(120 + n as u64) {
            return Err(format!("only {alive} of {n} agents alive after {} s", since.elapsed().as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Heartbeat counters of the fleet since start, from `/metrics`.
#[derive(Default, Clone, Copy)]
struct Beats {
    /// Bytes sent, summed over the agents.
    agent_bytes: u64,
    server_bytes: u64,
    /// Summed over the agents: beats checked, signature checks, hashes.
    checked: u64,
    signatures: u64,
    hashes: u64,
}

impl Beats {
    /// A node that does not answer counts 0 (its share is missing, not
    /// invented).
    fn scrape(server: &Client, agents: &BTreeMap<String, Client>) -> Beats {
        let texts: Vec<String> = agents.values().filter_map(|c| c.metrics().ok()).collect();
        let sum = |name: &str| texts.iter().filter_map(|t| metric(t, name)).sum::<u64>();
        Beats {
            agent_bytes: sum("huskies_heartbeat_sent_bytes_total"),
            server_bytes: server
                .metrics()
                .ok()
                .and_then(|t| metric(&t, "huskies_heartbeat_sent_bytes_total"))
                .unwrap_or(0),
            checked: sum("huskies_heartbeat_checks_total{what=\"beats\"}"),
            signatures: sum("huskies_heartbeat_checks_total{what=\"signatures\"}"),
            hashes: sum("huskies_heartbeat_checks_total{what=\"hashes\"}"),
        }
    }

    fn since(self, before: Beats) -> Beats {
        Beats {
            agent_bytes: self.agent_bytes.saturating_sub(before.agent_bytes),
            server_bytes: self.server_bytes.saturating_sub(before.server_bytes),
            checked: self.checked.saturating_sub(before.checked),
            signatures: self.signatures.saturating_sub(before.signatures),
            hashes: self.hashes.saturating_sub(before.hashes),
        }
    }
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("process {pid}: {e}"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("unreadable /proc stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("unreadable /proc stat");
    // utime and stime are fields 14 and 15 of stat(5); 12 and 13 here.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(total as f64 / hz as f64)
}

/// Resident set size now and at its peak, in kB.
fn rss_kb(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Ok((field("VmRSS:").unwrap_or(0), field("VmHWM:").unwrap_or(0)))
}

/// What the nodes' logs say, by story.
struct Logs {
    /// When a story was first claimed in `current`, by any node.
    first_claim: BTreeMap<String, u64>,
    /// For each stage change (story, from, to, token), when each node
    /// first saw it.
    seen: BTreeMap<String, Vec<u64>>,
}

impl Logs {
    fn read<'a>(scratch: &Path, names: impl Iterator<Item = &'a String>) -> Result<Logs, String> {
        let mut logs = Logs { first_claim: BTreeMap::new(), seen: BTreeMap::new() };
        for name in names {
            let path = scratch.join(format!("{name}.log"));
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut seen_here = std::collections::BTreeSet::new();
            for line in text.lines() {
                let Some((unix_ms, event)) = event_of(line) else { continue };
                let story = between(&event, "story: StoryId(\"", "\"");
                if event.starts_with("Claimed {") && between(&event, "stage: ", ",") == Some("Current") {
                    if let Some(story) = story {
                        let first = logs.first_claim.entry(story.to_owned()).or_insert(unix_ms);
                        *first = (*first).min(unix_ms);
                    }
                } else if event.starts_with("StageChanged {") {
                    let key = [
                        story,
                        between(&event, "from: ", ","),
                        between(&event, "to: ", ","),
                        between(&event, "Token(", ")"),
                    ];
                    let key = key.map(|k| k.unwrap_or("?")).join(" ");
                    if seen_here.insert(key.clone()) {
                        logs.seen.entry(key).or_default().push(unix_ms);
                    }
                }
            }
        }
        Ok(logs)
    }
}

/// `(unix_ms, event)` of a JSON log line that carries both.
fn event_of(line: &str) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    Some((fields.get("unix_ms")?.as_u64()?, fields.get("event")?.as_str()?.to_owned()))
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&xs, 50), 50);
        assert_eq!(percentile(&xs, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn reads_an_event_line() {
        let line = r#"{"timestamp":"x","level":"DEBUG","fields":{"unix_ms":1700000000123,"event":"StageChanged { story: StoryId(\"fleet-0001\"), from: Current, to: Qa, token: Token(3) }"},"target":"huskies_net::node::event_loop"}"#;
        let (ms, event) = event_of(line).expect("an event line");
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(between(&event, "story: StoryId(\"", "\""), Some("fleet-0001"));
        assert_eq!(between(&event, "to: ", ","), Some("Qa"));
        assert_eq!(between(&event, "Token(", ")"), Some("3"));
        assert!(event_of("not json").is_none());
    }

    #[test]
    fn reads_a_metric() {
        let text = "# HELP x\nhuskies_heartbeat_sent_bytes_total 12345\nhuskies_heartbeat_sent_bytes_totalx 1\nhuskies_heartbeat_checks_total{what=\"hashes\"} 7\n";
        assert_eq!(metric(text, "huskies_heartbeat_sent_bytes_total"), Some(12_345));
        assert_eq!(metric(text, "huskies_heartbeat_checks_total{what=\"hashes\"}"), Some(7));
    }
}
