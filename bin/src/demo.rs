//! `huskies demo`: a real local cluster in one command. It makes a scratch
//! git repo and bare remote, starts a server and three agents as separate
//! processes on loopback, adds stories, shows live progress, kills one
//! agent midway to show reclaim, and prints a summary.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use huskies_net::auth;

use crate::client::Client;
use crate::error::CliError;
use crate::local::{Procs, free_port, git_fixture, server_args, spawn, wait_for_key, wait_healthy};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stories to add (default 20; 4 with --agent, whose runs cost money).
    #[arg(long)]
    stories: Option<usize>,
    /// Agents to start.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// A real agent command instead of the stand-in, e.g.
    /// 'claude -p "Implement the story in {story_file}, then commit"'
    /// (split with shell quoting rules, no shell runs it; {id}, {title},
    /// {stage}, {attempt}, {story_file} and {body} are replaced).
    #[arg(long, conflicts_with = "agent")]
    agent_cmd: Option<String>,
    /// Drive a real coding agent: `claude` (Claude Code) or `codex`, found
    /// on the PATH or in ~/.cache/huskies/clis, against whatever
    /// ANTHROPIC_BASE_URL / OPENAI_BASE_URL name (the real API with your
    /// key, or any scripted model server). Ends with the cost ledger.
    #[arg(long, value_parser = ["claude", "codex"])]
    agent: Option<String>,
    /// The model for --agent (default: the CLI's own).
    #[arg(long, requires = "agent")]
    model: Option<String>,
    /// With --agent: the cluster's daily budget in US dollars; no new runs
    /// start past it.
    #[arg(long, default_value_t = 2.0, requires = "agent")]
    budget_usd: f64,
    /// Varies which stand-in runs fail on purpose.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stand-in failure rate.
    #[arg(long, default_value_t = 0.1)]
    fail_rate: f64,
    /// Do not kill an agent midway.
    #[arg(long)]
    no_kill: bool,
    /// Keep the cluster up after the summary (watch it on the dashboard;
    /// Ctrl-C stops it), and keep the scratch directory (repos, logs, data).
    #[arg(long)]
    keep: bool,
    /// Give up after this many seconds (default 120; 1800 with --agent).
    #[arg(long)]
    timeout_secs: Option<u64>,
}

impl DemoArgs {
    fn stories(&self) -> usize {
        self.stories.unwrap_or(if self.agent.is_some() { 4 } else { 20 })
    }

    fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(if self.agent.is_some() { 1800 } else { 120 })
    }
}

/// The stand-in agent's arguments: runs that fail, conflict and break the
/// gate on purpose, by seed.
fn standin_args(a: &DemoArgs) -> Vec<String> {
    vec![
        "stand-in".into(),
        "--duration-ms".into(),
        "600".into(),
        "--jitter-ms".into(),
        "900".into(),
        "--fail-rate".into(),
        a.fail_rate.to_string(),
        // The last attempt never fails on purpose: a front door is
        // green every time (3 failures in a row went red 1 run in 16).
        "--succeed-from-attempt".into(),
        huskies_engine::Config::default().max_attempts.to_string(),
        "--seed".into(),
        a.seed.to_string(),
        // Some stories edit a shared file (they conflict when they
        // land, and resolve it when sent back), some break the
        // gate on their first run.
        "--conflict-every".into(),
        "3".into(),
        "--break-every".into(),
        "7".into(),
    ]
}

/// A coding-agent CLI: on the PATH, else where `.ci/run` installs it.
fn find_cli(name: &str) -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path.into_iter()
        .chain([home.join(".cache/huskies/clis/node_modules/.bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let pkg = if name == "claude" { "@anthropic-ai/claude-code" } else { "@openai/codex" };
            format!("--agent {name}: `{name}` is not on the PATH (npm install -g {pkg})")
        })
}

/// The stage tables of a demo agent's project.toml: a real coding agent's
/// profile for `current` and `qa`.
fn profile_agents(agent: &str, program: &Path, model: Option<&str>) -> String {
    let model = model.map_or(String::new(), |m| format!("model = {m:?}\n"));
    let turns = if agent == "claude" { "max_turns = 30\n" } else { "" };
    let mut s = String::new();
    for stage in ["current", "qa"] {
        s.push_str(&format!(
            "\n[agents.{stage}]\nagent = {agent:?}\ncommand = {:?}\n{model}{turns}commands = [\"sh ci.sh\"]\n",
            program.to_string_lossy()
        ));
    }
    s
}

fn project_toml(agents: &str) -> String {
    // Retries after 1 s (doubling), not 5 s: injected failures show
    // retries without stalling the demo.
    let mut s =
        String::from("capacity = 2\nclaim_timeout_ms = 4000\nscan_interval_ms = 250\nretry_backoff_ms = 1000\n");
    s.push_str(agents);
    // Every agent lands: merge-stage stories are built on the default
    // branch, gated by the repository's own check, and landed.
    // A story can conflict once with each other story that edits the
    // shared file, so returns are bounded by their number, not by chance.
    s.push_str("\n[merge]\ngates = [\"sh ci.sh\"]\nbatch = 4\nmax_returns = 20\n");
    s
}

pub fn run(a: DemoArgs) -> Result<(), CliError> {
    #[allow(clippy::disallowed_methods)] // wall time of a real run
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let scratch = std::env::temp_dir().join(format!("huskies-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let result = run_in(&a, &exe, &scratch, started);
    if a.keep || result.is_err() {
        println!("scratch directory kept: {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

fn run_in(a: &DemoArgs, exe: &Path, scratch: &Path, started: Instant) -> Result<(), CliError> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let stories = a.stories();
    println!("huskies demo: {} agents, {} stories, scratch {}", a.agents, stories, scratch.display());
    let remote = git_fixture(scratch)?;
    let command_agents = |cmd: &str, args: &[String]| {
        let args = args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        ["current", "qa"]
            .iter()
            .map(|stage| format!("\n[agents.{stage}]\ncommand = {cmd:?}\nargs = [{args}]\n"))
            .collect::<String>()
    };
    let agents = match (&a.agent, &a.agent_cmd) {
        (Some(agent), _) => profile_agents(agent, &find_cli(agent)?, a.model.as_deref()),
        (None, Some(c)) => {
            let parts = shlex::split(c).ok_or_else(|| format!("--agent-cmd {c:?}: unbalanced quotes"))?;
            let mut parts = parts.into_iter();
            let cmd = parts.next().ok_or("--agent-cmd is empty")?;
            command_agents(&cmd, &parts.collect::<Vec<_>>())
        }
        (None, None) => command_agents(&s(exe), &standin_args(a)),
    };

    // The server.
    let port = free_port()?;
    let server_data = scratch.join("server-data");
    let server_root = scratch.join("server");
    std::fs::create_dir_all(server_root.join(".huskies")).map_err(|e| e.to_string())?;
    // Everyone must agree on when a silent node counts as dead.
    let mut server_toml = String::from("claim_timeout_ms = 4000\nscan_interval_ms = 250\n");
    if a.agent.is_some() {
        // Real agents cost real money: the cluster stops claiming past it.
        server_toml.push_str(&format!("daily_budget_usd = {}\n", a.budget_usd));
    }
    std::fs::write(server_root.join(".huskies/project.toml"), server_toml).map_err(|e| e.to_string())?;
    let mut procs = Procs(Vec::new());
    let server_args = server_args(port, &server_data, &server_root);
    procs.0.push(("server".into(), spawn(exe, &server_args, &scratch.join("server.log"), &[])?));
    let key = wait_for_key(&server_data)?;
    let server = Client::new(&format!("http://127.0.0.1:{port}"), Some(key.clone()), None)?;
    wait_healthy(&server, "the server")?;
    // The key rides in the fragment: the page trades it for a session
    // cookie, and fragments never reach a server or its logs.
    println!("dashboard: http://127.0.0.1:{port}/#key={key}");

    // The agents, each with its own clone, joining with a one-time token.
    let mut agent_ports = BTreeMap::new();
    for i in 1..=a.agents {
        let root = scratch.join(format!("agent-{i}"));
        git2::Repository::clone(&s(&remote), &root).map_err(|e| e.message().to_owned())?;
        std::fs::create_dir_all(root.join(".huskies")).map_err(|e| e.to_string())?;
        std::fs::write(root.join(".huskies/project.toml"), project_toml(&agents)).map_err(|e| e.to_string())?;
        #[allow(clippy::disallowed_methods)] // token expiry is wall-clock time
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let token = auth::create_join_token(&server_data, 600, now).map_err(|e| e.to_string())?;
        let aport = free_port()?;
        let agent_args = vec![
            "agent".into(),
            "--rendezvous".into(),
            format!("ws://127.0.0.1:{port}/crdt-sync"),
            "--port".into(),
            aport.to_string(),
            "--project-root".into(),
            s(&root),
            "--data-dir".into(),
            s(&scratch.join(format!("agent-{i}-data"))),
            "--join-token".into(),
            token,
            "--node-id".into(),
            format!("agent-{i}"),
        ];
        procs.0.push((format!("agent-{i}"), spawn(exe, &agent_args, &scratch.join(format!("agent-{i}.log")), &[])?));
        agent_ports.insert(format!("agent-{i}"), aport);
    }
    for (name, p) in &agent_ports {
        wait_healthy(&Client::new(&format!("http://127.0.0.1:{p}"), None, None)?, name)?;
    }

    add_demo_stories(a, &server, stories)?;
    let (done, killed) = watch(a, &server, &mut procs, started)?;
    let (landed, main_name) = summarize(a, &server, &agent_ports, &key, &remote, done, killed.as_deref(), started)?;
    if a.keep {
        println!("cluster kept up: dashboard http://127.0.0.1:{port}/#key={key}");
        println!(
            "(add stories there or with `huskies story add --server http://127.0.0.1:{port} --key {key} TITLE`; Ctrl-C stops the cluster)"
        );
        wait_for_ctrl_c()?;
    }
    if done != stories {
        return Err(format!("{} stories failed for good", stories - done).into());
    }
    if landed != stories {
        return Err(format!("{landed} of {} stories are on {main_name}", stories).into());
    }
    Ok(())
}

/// Adds the demo's stories through the server, as a user would.
fn add_demo_stories(a: &DemoArgs, server: &Client, stories: usize) -> Result<(), CliError> {
    for k in 0..stories {
        let title = format!("Demo story {k}: make the widget {}", ["faster", "safer", "smaller", "clearer"][k % 4]);
        let story = huskies_net::status::AddStory {
            title: title.clone(),
            id: Some(format!("story-{k:02}")),
            stage: Some("current".into()),
            body: if a.agent.is_some() { real_body(k) } else { String::new() },
            priority: 0,
        };
        server.add_story(&story)?;
    }
    match &a.agent {
        Some(agent) => println!("added {stories} stories; {agent} at work (daily budget ${})", a.budget_usd),
        None => println!(
            "added {stories} stories; agents at work (runs fail {}% of the time on purpose)",
            a.fail_rate * 100.0
        ),
    }
    Ok(())
}

/// Shows the pipeline as it moves, and kills the busiest agent with -9
/// once a quarter of the stories are done. Returns the stories done and
/// the agent killed.
fn watch(
    a: &DemoArgs,
    server: &Client,
    procs: &mut Procs,
    started: Instant,
) -> Result<(usize, Option<String>), CliError> {
    let (stories, timeout_secs) = (a.stories(), a.timeout_secs());
    let tty = std::io::stdout().is_terminal();
    let mut killed: Option<String> = None;
    let mut last_counts = String::new();
    let mut last_print = Duration::ZERO;
    let done = loop {
        let st = server.status()?;
        let count = |stage: &str| st.stories.iter().filter(|x| x.stage == stage).count();
        let done = count("done");
        let failed = st.stories.iter().filter(|x| x.failed).count();
        let alive = st.nodes.iter().filter(|n| n.alive && n.id.as_str() != "rendezvous").count();
        let claims = st.stories.iter().filter(|x| x.holder.is_some()).count();
        let counts = format!(
            "current {:>2} | qa {:>2} | merge {:>2} | done {:>2}/{} | failed {} | agents alive {} | claims {}",
            count("current"),
            count("qa"),
            count("merge"),
            done,
            stories,
            failed,
            alive,
            claims
        );
        let line = format!("[{:>5.1}s] {counts}", started.elapsed().as_secs_f64());
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if counts != last_counts && started.elapsed() >= last_print + Duration::from_secs(2) {
            // Piped output: a line every couple of seconds, only on change.
            println!("{line}");
            last_print = started.elapsed();
            last_counts = counts;
        }
        if killed.is_none() && !a.no_kill && done * 4 >= stories && a.agents > 1 {
            // Kill the busiest agent with -9: its claims must be reclaimed.
            let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
            for x in &st.stories {
                if let Some(h) = &x.holder {
                    *holders.entry(h.as_str()).or_default() += 1;
                }
            }
            let victim = holders.iter().max_by_key(|(_, n)| **n).map(|(h, _)| h.to_string());
            if let Some(v) = victim
                && let Some((_, child)) = procs.0.iter_mut().find(|(name, _)| *name == v)
            {
                let _ = child.kill();
                let _ = child.wait();
                let held = holders[v.as_str()];
                if tty {
                    println!();
                }
                println!("kill -9 {v} while it holds {held} claims; the others reclaim them after the 4 s timeout");
                killed = Some(v);
            }
        }
        if done + failed >= stories {
            break done;
        }
        if started.elapsed() > Duration::from_secs(timeout_secs) {
            if tty {
                println!();
            }
            return Err(format!("timed out after {} s with {done}/{} done", timeout_secs, stories).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if tty {
        println!();
    }
    Ok((done, killed))
}

/// Prints what the cluster did, read back from the nodes, the document
/// and the git remote. Returns how many stories are on the default
/// branch, and its name.
#[allow(clippy::too_many_arguments)]
fn summarize(
    a: &DemoArgs,
    server: &Client,
    agent_ports: &BTreeMap<String, u16>,
    key: &str,
    remote: &Path,
    done: usize,
    killed: Option<&str>,
    started: Instant,
) -> Result<(usize, String), CliError> {
    let stories = a.stories();
    let (mut reclaims, mut losses, mut stopped, mut batches) = (0, 0, 0, 0);
    for (name, p) in agent_ports {
        if Some(name.as_str()) == killed {
            continue;
        }
        if let Ok(st) =
            Client::new(&format!("http://127.0.0.1:{p}"), Some(key.to_owned()), None).and_then(|c| c.status())
        {
            reclaims += st.counters.reclaims;
            losses += st.counters.claim_losses;
            stopped += st.counters.runs_stopped;
            batches += st.counters.land_batches;
        }
    }
    let branches = git2::Repository::open_bare(remote)
        .and_then(|r| r.references_glob("refs/heads/huskies/*").map(|refs| refs.count()))
        .map_err(|e| e.message().to_owned())?;
    let (landed, main_name) = landed_on_default(remote)?;
    // Runs as the document records them (the killed agent's unfinished
    // runs left no record: it never reported them).
    let (mut total_runs, mut failed_runs, mut stages) = (0, 0, 0);
    let (mut conflicts, mut gate_failures) = (0, 0);
    for k in 0..stories {
        let d = server.story(&format!("story-{k:02}"))?;
        total_runs += d.runs.len();
        failed_runs += d.runs.iter().filter(|r| r.outcome == huskies_engine::RunOutcomeKind::Failed).count();
        stages += d.runs.iter().map(|r| r.stage).collect::<std::collections::BTreeSet<_>>().len();
        let returned = d.runs.iter().filter(|r| r.outcome == huskies_engine::RunOutcomeKind::Returned);
        for r in returned {
            match r.reason.as_deref() {
                Some(why) if why.starts_with("gate") => gate_failures += 1,
                _ => conflicts += 1,
            }
        }
    }
    println!("summary:");
    println!("  stories done       {done}/{}", stories);
    println!("  branches pushed    {branches}");
    println!(
        "  landed on {main_name:<8}{landed:>3}/{} ({batches} batches{}, {conflicts} conflicts sent back, {gate_failures} gate failures)",
        stories,
        if killed.is_some() { " by the agents alive" } else { "" }
    );
    println!("  agent runs         {total_runs} recorded for {stages} story-stages ({failed_runs} failed and retried)");
    println!("  reclaims           {reclaims}");
    println!("  duplicate claims   {losses} (concurrent claims that lost; most never started a run)");
    println!("  runs stopped       {stopped} (claim lost to another node, story moved, or run hung)");
    println!("  killed             {}", killed.unwrap_or("none"));
    println!("  wall time          {:.1} s", started.elapsed().as_secs_f64());
    if a.agent.is_some() {
        print!("{}", ledger_summary(server, stories)?);
    }
    Ok((landed, main_name))
}

/// A story a real coding agent can do in a few turns, in the demo repo.
fn real_body(k: usize) -> String {
    format!(
        "Create the file notes/story-{k:02}.md with a heading and one short paragraph on how to make the widget \
         {}. Commit it with git (git add, then git commit). Nothing else needs to change.",
        ["faster", "safer", "smaller", "clearer"][k % 4]
    )
}

/// The demo's ledger: cost per story (its runs), then per node and per
/// stage (the cluster's ledger, all time), and the total.
fn ledger_summary(server: &Client, stories: usize) -> Result<String, CliError> {
    use huskies_net::costs::usd;
    use std::fmt::Write;
    let mut out = String::from("ledger:\n  per story\n");
    for k in 0..stories {
        let d = server.story(&format!("story-{k:02}"))?;
        let usages: Vec<_> = d.runs.iter().filter_map(|r| r.report.usage.as_ref()).collect();
        let cost = usages.iter().map(|u| u.cost_micro_usd).fold(0, u64::saturating_add);
        let tokens: u64 =
            usages.iter().map(|u| u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens).sum();
        let _ = writeln!(out, "    {:<10} {:>10}  {} runs  {tokens} tokens", d.story.id, usd(cost), d.runs.len());
    }
    let costs = server.status()?.costs;
    for (what, sums) in [
        ("per node", costs.all_time_by(|l| l.node.clone())),
        ("per stage", costs.all_time_by(|l| l.line.stage.to_string())),
        ("per model", costs.all_time_by(|l| l.line.model.clone())),
    ] {
        let _ = writeln!(out, "  {what}");
        for (k, (runs, cost)) in sums {
            let _ = writeln!(out, "    {k:<18} {:>10}  {runs} runs", usd(cost));
        }
    }
    let total = costs.all_time_by(|_| ()).get(&()).map_or(0, |(_, c)| *c);
    let _ = writeln!(out, "  total              {:>10}", usd(total));
    Ok(out)
}

/// Stories landed on the remote's default branch (their trailers), and its name.
fn landed_on_default(remote: &Path) -> Result<(usize, String), String> {
    let err = |e: git2::Error| e.message().to_owned();
    let repo = git2::Repository::open_bare(remote).map_err(err)?;
    let head = repo.find_reference("HEAD").map_err(err)?;
    let name = head.symbolic_target().ok().flatten().unwrap_or("refs/heads/master").to_owned();
    let tip = repo.refname_to_id(&name).map_err(err)?;
    let mut walk = repo.revwalk().map_err(err)?;
    walk.push(tip).map_err(err)?;
    walk.simplify_first_parent().map_err(err)?;
    let mut stories = std::collections::BTreeSet::new();
    for oid in walk {
        let c = repo.find_commit(oid.map_err(err)?).map_err(err)?;
        if let Some((story, _)) = c.message().ok().and_then(huskies_net::land::landed_of) {
            stories.insert(story.to_owned());
        }
    }
    Ok((stories.len(), name.trim_start_matches("refs/heads/").to_owned()))
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_ctrl_c() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot wait for signals: {e}"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}
