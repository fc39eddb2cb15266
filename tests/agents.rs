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

fn reason(run: &serde_json::Value) -> &str {
    run["reason"].as_str().unwrap_or_default()
}

/// A cluster whose agents reach `models` as their API, in a HOME of their
/// own (the CLIs keep state there).
fn cluster_for(tag: &str, models: &ModelServer) -> Cluster {
    let mut c = Cluster::new(tag);
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

    let run = first_run(&c, "badkey", 90);
    assert!(reason(&run).starts_with("API authentication failed (401)"), "{run}");
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
    c.start_agent_with(1, "127.0.0.1", &agents);
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
    assert!(reason(&run).starts_with("API authentication failed (401)"), "{run}");
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
