//! The real coding-agent CLIs, driven by real huskies agents against a
//! scripted model server on loopback (issue 20).
//!
//! `claude` (`@anthropic-ai/claude-code`) and `codex` (`@openai/codex`)
//! are found in `HUSKIES_AGENT_CLI_DIR`, else in
//! `~/.cache/huskies/clis/node_modules/.bin` (where `.ci/run` installs
//! them from the npm registry), else on PATH. Missing, a test says
//! "SKIPPED" loudly and passes, unless `HUSKIES_REQUIRE_AGENT_CLIS=1`
//! (set by `.ci/run`): then it fails.

#[path = "model_server.rs"]
mod model_server;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use huskies_net::agent_profile::{CLAUDE_FLAGS, CODEX_FLAGS};
use model_server::ModelServer;
use support::*;

/// The CLI `name`, or `None` after saying why the test is skipped.
fn real_cli(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::var_os("HUSKIES_AGENT_CLI_DIR").map(PathBuf::from).into_iter().collect();
    dirs.push(home.join(".cache/huskies/clis/node_modules/.bin"));
    dirs.extend(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
    if let Some(found) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    let why = format!(
        "the real `{name}` CLI is not installed (npm install @anthropic-ai/claude-code @openai/codex \
         into ~/.cache/huskies/clis, as .ci/run does)"
    );
    if std::env::var("HUSKIES_REQUIRE_AGENT_CLIS").is_ok_and(|v| v == "1") {
        panic!("{why}; HUSKIES_REQUIRE_AGENT_CLIS=1 makes that a failure");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    None
}

fn help(cli: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(cli).args(args).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A renamed or dropped flag fails here, not in a user's fleet.
#[test]
fn every_flag_huskies_passes_exists_in_the_real_clis() {
    let (Some(claude), Some(codex)) = (real_cli("claude"), real_cli("codex")) else { return };
    let text = help(&claude, &["--help"]);
    for flag in CLAUDE_FLAGS {
        assert!(
            text.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == flag),
            "claude --help lacks {flag}:\n{text}"
        );
    }
    assert!(text.contains("\"dontAsk\""), "claude's --permission-mode lost dontAsk:\n{text}");
    assert!(text.contains("\"stream-json\""), "claude's --output-format lost stream-json:\n{text}");
    let text = help(&codex, &["exec", "--help"]);
    for flag in CODEX_FLAGS {
        assert!(
            text.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == flag),
            "codex exec --help lacks {flag}:\n{text}"
        );
    }
    assert!(text.contains("workspace-write"), "codex's --sandbox lost workspace-write:\n{text}");
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    let server = format!("http://127.0.0.1:{}", c.port);
    let out = Command::new(EXE).args(args).args(["--server", &server, "--key", &c.key]).output().unwrap();
    assert!(out.status.success(), "huskies {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn story_json(c: &Cluster, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(c, &["story", "show", id, "--json"])).unwrap()
}

/// The first run of `id` once recorded.
fn first_run(c: &Cluster, id: &str, secs: u64) -> serde_json::Value {
    wait_for(&format!("a run of {id}"), Duration::from_secs(secs), || {
        story_json(c, id)["runs"].as_array().is_some_and(|r| !r.is_empty())
    });
    story_json(c, id)["runs"][0].clone()
}

/// The run's reason (printed: `--nocapture` shows every kind's words).
fn reason(run: &serde_json::Value) -> &str {
    let why = run["reason"].as_str().unwrap_or_default();
    eprintln!("reason: {why}");
    why
}

/// A cluster whose agents reach `models` as their API, in a HOME of their
/// own (the CLIs keep state there).
fn cluster_for(tag: &str, models: &ModelServer) -> Cluster {
    cluster_with(tag, models, "")
}

/// As [`cluster_for`], with `settings` added to the server's project.toml
/// (the cluster settings).
fn cluster_with(tag: &str, models: &ModelServer, settings: &str) -> Cluster {
    let toml = format!("claim_timeout_ms = 3000\nscan_interval_ms = 200\n{settings}");
    let mut c = Cluster::with_settings(tag, &toml);
    let home = c.root().join("home");
    std::fs::create_dir_all(&home).unwrap();
    for (k, v) in [
        ("HOME", home.to_string_lossy().into_owned()),
        ("ANTHROPIC_BASE_URL", models.url()),
        ("ANTHROPIC_API_KEY", "sk-ant-scripted".into()),
        // Claude Code's own retries of a 529 (ten, backing off) would hide
        // huskies' from the test; one is kept.
        ("CLAUDE_CODE_MAX_RETRIES", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("OPENAI_BASE_URL", format!("{}/v1", models.url())),
        ("OPENAI_API_KEY", "sk-scripted".into()),
    ] {
        c.env.push((k.into(), v));
    }
    c
}

fn add(c: &Cluster, id: &str, script: &str) {
    ok(
        c,
        &[
            "story",
            "add",
            &format!("Story {id}"),
            "--id",
            id,
            "--stage",
            "current",
            "--body",
            &format!("SCRIPT:{script}"),
        ],
    );
}

/// Claude Code, for real: a story done with what it cost, and each way a
/// run fails named for what it was.
#[test]
fn claude_runs_are_judged_by_what_claude_reports() {
    let Some(claude) = real_cli("claude") else { return };
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_for("claude", &models);
    let agents = format!(
        "[agents.current]\nagent = \"claude\"\ncommand = {claude:?}\nmodel = \"claude-sonnet-4-5\"\nmax_turns = 4\n\
         max_attempts = 1\napi_retries = 3\napi_retry_backoff_ms = 200\n"
    );
    c.start_agent_with(1, "127.0.0.1", &agents);
    for (id, script) in [
        ("done", "commit"),
        ("denied", "deny"),
        ("looping", "loop"),
        ("busy", "overloaded-2"),
        ("empty", "nothing"),
        ("badkey", "unauthorized"),
    ] {
        add(&c, id, script);
    }

    let run = first_run(&c, "done", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let usage = &run["usage"];
    // Four model calls of 1,000 in and 50 out at Sonnet's list price, by
    // Claude Code's own count (and its side calls, if any, on top).
    assert!(usage["cost_micro_usd"].as_u64().unwrap_or(0) >= 15_000, "{run}");
    assert!(usage["input_tokens"].as_u64().unwrap_or(0) >= 4_000, "{run}");
    assert_eq!(usage["model"], "claude-sonnet-4-5", "{run}");
    assert!(!usage["session_id"].as_str().unwrap_or("").is_empty(), "{run}");
    assert_eq!(usage["turns"], 4, "{run}");

    let run = first_run(&c, "denied", 90);
    assert_eq!((run["outcome"].as_str(), run["exit_code"].as_i64()), (Some("failed"), Some(0)), "{run}");
    assert!(reason(&run).starts_with("denied: Bash(echo hi > work-denied.md && git add work-denied.md"), "{run}");

    let run = first_run(&c, "looping", 90);
    assert!(reason(&run).starts_with("turn limit reached"), "{run}");

    // Two 529s, each ending a try of Claude Code (its own one retry
    // spends the second); huskies starts it again within the claim.
    let run = first_run(&c, "busy", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(story_json(&c, "busy")["runs"].as_array().map(Vec::len), Some(1), "one run, not two attempts");

    // A refused key is the node's trouble, not the story's: the claim goes
    // back uncounted and the node stops claiming for a while.
    let run = first_run(&c, "badkey", 90);
    assert!(
        reason(&run).starts_with("not counted, agent-1 could not run it: API authentication failed (401)"),
        "{run}"
    );
    let d = story_json(&c, "badkey");
    assert_eq!((d["attempts"].as_u64(), d["failed"].as_bool()), (Some(0), Some(false)), "{d}");
    // Claude Code says it committed; git said otherwise, and the reason
    // carries git's answer.
    let run = first_run(&c, "empty", 90);
    let why = reason(&run);
    assert!(why.starts_with("no commits: the agent exited 0 without committing; its last failed git command: `git commit -q -m 'empty: scripted work'` answered:"), "{run}");
    assert!(why.contains("nothing"), "{run}");
    let show = ok(&c, &["story", "show", "done"]);
    assert!(show.contains("cost $0.0"), "{show}");
}

/// Codex, for real: its sandbox lets it commit, its tokens are priced by
/// the table, and a 401 is named.
#[test]
fn codex_runs_commit_from_the_sandbox_and_are_priced() {
    let Some(codex) = real_cli("codex") else { return };
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_for("codex", &models);
    let agents = format!(
        "[agents.current]\nagent = \"codex\"\ncommand = {codex:?}\nmodel = \"gpt-5-codex\"\n\
         max_attempts = 1\napi_retries = 2\napi_retry_backoff_ms = 200\n"
    );
    let port = c.start_agent_with(1, "127.0.0.1", &agents);
    add(&c, "done", "commit");
    add(&c, "badkey", "unauthorized");
    add(&c, "busy", "overloaded-3");

    let run = first_run(&c, "done", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let usage = &run["usage"];
    // Two responses of 1,000 in and 50 out at gpt-5-codex's list price
    // ($1.25 and $10 a million): 2 × (1,250 + 500) micro-USD.
    assert_eq!(usage["cost_micro_usd"], 3_500, "{run}");
    assert_eq!((usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()), (Some(2_000), Some(100)), "{run}");
    assert_eq!(usage["model"], "gpt-5-codex", "{run}");

    let run = first_run(&c, "badkey", 90);
    assert!(
        reason(&run).starts_with("not counted, agent-1 could not run it: API authentication failed (401)"),
        "{run}"
    );
    let paused = status(port, &c.key).map(|s| s["paused"].clone()).unwrap_or_default();
    assert!(paused["reason"].as_str().is_some_and(|r| r.starts_with("API authentication failed (401)")), "{paused}");
    let run = first_run(&c, "busy", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
}

/// The README's recipe, as written, with the real `claude` on the PATH.
#[test]
fn the_readme_recipe_works_as_written() {
    let Some(claude) = real_cli("claude") else { return };
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = &readme[readme.find("### Claude Code and Codex").expect("the agents section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let recipe = &section[start..start + section[start..].find("```").unwrap()];
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_for("recipe", &models);
    let dir = claude.parent().unwrap().display().to_string();
    c.env.push(("PATH".into(), format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())));
    c.start_agent_with(1, "127.0.0.1", recipe);
    add(&c, "blue", "commit");
    let run = first_run(&c, "blue", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["usage"]["model"], "claude-sonnet-4-5", "{run}");
}

fn claude_agent(claude: &std::path::Path, extra: &str) -> String {
    format!("[agents.current]\nagent = \"claude\"\ncommand = {claude:?}\nmodel = \"claude-sonnet-4-5\"\n{extra}")
}

fn status_text(c: &Cluster) -> String {
    ok(c, &["status"])
}

/// The daily budget: once the day's spend reaches it no node claims, and
/// `status` says so; raised on the server, work goes on. Cost counts once
/// per run, whichever node is asked.
#[test]
fn a_spent_daily_budget_stops_claims_until_it_is_raised() {
    let Some(claude) = real_cli("claude") else { return };
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_with("budget", &models, "daily_budget_usd = 0.01\n");
    c.start_agent_with(1, "127.0.0.1", &claude_agent(&claude, ""));
    add(&c, "first", "commit");
    let run = first_run(&c, "first", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let cost = run["usage"]["cost_micro_usd"].as_u64().unwrap();
    assert!(cost >= 10_000, "the first run spends the budget: {run}");
    wait_for("the server to count the spend", Duration::from_secs(20), || {
        status_text(&c).contains("the daily budget is spent")
    });
    add(&c, "second", "commit");
    std::thread::sleep(Duration::from_secs(4));
    let second = story_json(&c, "second");
    assert!(second["runs"].as_array().is_some_and(|r| r.is_empty()) && second["holder"].is_null(), "{second}");
    let status: serde_json::Value = serde_json::from_str(&ok(&c, &["status", "--json"])).unwrap();
    let costs = &status["costs"];
    assert_eq!(costs["spent_today_micro_usd"].as_u64(), Some(cost), "counted once: {costs}");
    assert_eq!(costs["budget_spent"], true, "{costs}");
    let all: u64 = costs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["day"] == "all")
        .map(|l| l["cost_micro_usd"].as_u64().unwrap())
        .sum();
    assert_eq!(all, cost, "{costs}");

    // The admin raises it: the server's file is the cluster's settings.
    let toml = c.root().join("server/.huskies/project.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace("daily_budget_usd = 0.01", "daily_budget_usd = 5.0");
    std::fs::write(&toml, text).unwrap();
    let run = first_run(&c, "second", 90);
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(!status_text(&c).contains("budget is spent"));
}

/// A story past its own budget is given up with that reason, before its
/// attempts run out.
#[test]
fn a_story_past_its_budget_fails_with_that_reason() {
    let Some(claude) = real_cli("claude") else { return };
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_with("story-budget", &models, "max_cost_usd = 0.012\n");
    c.start_agent_with(1, "127.0.0.1", &claude_agent(&claude, "max_attempts = 5\n"));
    add(&c, "pricey", "deny");
    wait_for("pricey to be given up", Duration::from_secs(120), || story_json(&c, "pricey")["failed"] == true);
    let d = story_json(&c, "pricey");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("over budget: its runs cost $0.0"), "{d}");
    assert!(reason.contains("of the story's $0.0120"), "{d}");
    let runs = d["runs"].as_array().unwrap().len();
    assert!((1..5).contains(&runs), "given up for its cost, not its attempts: {runs} runs: {d}");
}

/// `kill -9` of the agent node in the middle of a real Claude Code run:
/// another node reclaims the story after the claim timeout and resumes
/// from the progress the dead one pushed (a session cannot be resumed on
/// another machine; the branch can).
#[test]
fn a_killed_agent_nodes_story_is_resumed_from_its_pushed_branch() {
    let Some(claude) = real_cli("claude") else { return };
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_for("kill", &models);
    let agent = claude_agent(&claude, "wip_push_interval_ms = 300\n");
    let ports = [c.start_agent_with(1, "127.0.0.1", &agent), c.start_agent_with(2, "127.0.0.1", &agent)];
    add(&c, "resumed", "slow-commit");
    // Live progress: the node running it says what Claude Code is doing.
    wait_for("the run's progress on its node", Duration::from_secs(60), || {
        ports.iter().any(|p| {
            status(*p, &c.key).is_some_and(|s| {
                s["runs"].as_array().is_some_and(|runs| {
                    runs.iter().any(|r| {
                        r["progress"]["turns"].as_u64() >= Some(1)
                            && r["progress"]["target"].as_str().is_some_and(|t| t.contains("work-resumed.md"))
                    })
                })
            })
        })
    });
    let remote = c.root().join("remote.git");
    let wip = || -> Option<String> {
        let repo = git2::Repository::open_bare(&remote).ok()?;
        let mut refs = repo.references_glob("refs/heads/huskies-wip/resumed/*").ok()?;
        let r = refs.next()?.ok()?;
        r.target().map(|o| o.to_string())
    };
    wait_for("the first run's commit pushed as progress", Duration::from_secs(60), || wip().is_some());
    let pushed = wip().unwrap();
    let holder = story_json(&c, "resumed")["holder"].as_str().unwrap_or_default().to_owned();
    assert!(holder.starts_with("agent-"), "held while it runs: {holder:?}");
    c.kill(&holder, libc::SIGKILL);

    wait_for("a run of the other node to succeed", Duration::from_secs(90), || {
        story_json(&c, "resumed")["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["outcome"] == "succeeded" && x["node"] != holder.as_str()))
    });
    let repo = git2::Repository::open_bare(&remote).unwrap();
    let tip = repo.find_reference("refs/heads/huskies/resumed").unwrap().peel_to_commit().unwrap();
    let pushed = git2::Oid::from_str(&pushed).unwrap();
    assert!(tip.id() == pushed || repo.graph_descendant_of(tip.id(), pushed).unwrap(), "the dead node's work is kept");
    let entry = tip.tree().unwrap().get_path(std::path::Path::new("work-resumed.md")).unwrap();
    let text = String::from_utf8_lossy(repo.find_blob(entry.id()).unwrap().content()).into_owned();
    assert!(text.contains(&format!("resuming {holder}")), "the new run knew it resumed: {text}");
}

/// A CLI that dies before it reports (here a stand-in for `claude` that
/// prints one event and kills itself) fails with a reason that says so.
#[test]
fn a_cli_that_dies_before_reporting_is_named() {
    let models = ModelServer::start("127.0.0.1:0");
    let mut c = cluster_for("crash", &models);
    let fake = c.root().join("claude-crashes");
    std::fs::write(&fake, "#!/bin/sh\necho '{\"type\":\"system\",\"subtype\":\"init\"}'\nkill -9 $$\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.start_agent_with(1, "127.0.0.1", &claude_agent(&fake, "max_attempts = 1\n"));
    add(&c, "crashed", "commit");
    let run = first_run(&c, "crashed", 60);
    let why = reason(&run);
    assert!(why.starts_with("agent exited with signal: 9 (SIGKILL)"), "{run}");
    assert!(why.contains("before reporting a result: claude crashed or was killed"), "{run}");
}
