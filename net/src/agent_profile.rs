//! The real invocation of a coding agent, from a stage's profile in
//! `project.toml` (issue 20, item 1).
//!
//! - `agent = "claude"`: `claude -p`, reporting in stream-json (whose
//!   last line is the result object agent_report.rs reads), asking nobody
//!   (`--permission-mode dontAsk`): what is not on the allow list is
//!   denied, and a denial fails the run by name. The allow list holds file
//!   edits, the git commands an agent needs, and the project's build and
//!   test commands; huskies' rules go in `--append-system-prompt`.
//! - `agent = "codex"`: `codex exec --json`, in its `workspace-write`
//!   sandbox with the repository's git directory writable (a worktree's
//!   git data lives outside it, and `git commit` must work), never asking
//!   for approval. `OPENAI_BASE_URL`, when set, becomes a model provider:
//!   Codex itself does not read it.
//! - `agent = "command"`: `command` and `args`, as given.
//!
//! `tests/agents.rs` checks every flag used here against the real CLIs'
//! `--help`, and drives both against a scripted model server.

use std::path::PathBuf;

use crate::project::{AgentCommand, AgentKind};

/// What huskies asks of every agent, beyond the story.
pub const RULES: &str = "You work on one story of a huskies pipeline, in a git worktree of its own branch. \
Commit your work on this branch (git add, git commit) before you finish: uncommitted work is lost. \
Do not push, and do not switch or create branches: huskies pushes the branch and lands it on the default branch \
after the project's tests pass. If you cannot finish, commit what you have and say what is left.";

/// Tools Claude may use unasked when the profile names none: reading and
/// editing files, and git's commands for looking and committing (no push,
/// no checkout, no reset).
pub const CLAUDE_DEFAULT_TOOLS: [&str; 20] = [
    "Read",
    "Edit",
    "Write",
    "Glob",
    "Grep",
    "Bash(git add *)",
    "Bash(git commit *)",
    "Bash(git rm *)",
    "Bash(git mv *)",
    "Bash(git status)",
    "Bash(git status *)",
    "Bash(git diff)",
    "Bash(git diff *)",
    "Bash(git log)",
    "Bash(git log *)",
    "Bash(git show *)",
    "Bash(ls *)",
    "Bash(cat *)",
    "Bash(head *)",
    "Bash(grep *)",
];

/// The flags of `claude` this module uses (checked against `--help`).
/// `--max-turns` works but is missing from `--help` (2.1.x): the turn
/// limit's end-to-end test checks it instead.
pub const CLAUDE_FLAGS: [&str; 7] =
    ["-p", "--output-format", "--verbose", "--permission-mode", "--allowedTools", "--append-system-prompt", "--model"];

/// The flags of `codex exec` this module uses (checked against `--help`).
pub const CODEX_FLAGS: [&str; 4] = ["--json", "--sandbox", "--config", "--model"];

/// A program and its arguments; no shell ever sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
}

/// What the invocation depends on beyond the profile.
pub struct ProfileInputs<'a> {
    /// The prompt, placeholders expanded.
    pub prompt: String,
    /// The `[merge] gates` of this node's project: allowed like `commands`.
    pub gates: &'a [String],
    /// The git directories a commit writes: the repository's common one
    /// (objects, refs) and the worktree's own (index, HEAD). Codex's
    /// sandbox makes a workspace's git directory read-only unless it is
    /// named as a writable root itself.
    pub git_dirs: &'a [PathBuf],
    /// `OPENAI_BASE_URL`, when set.
    pub openai_base_url: Option<String>,
}

/// The invocation of a profile (`agent = "claude"` or `"codex"`); for a
/// command, its args with `expand` applied.
pub fn invocation(cmd: &AgentCommand, inputs: &ProfileInputs, expand: impl Fn(&str) -> String) -> Invocation {
    let program = cmd.program().to_owned();
    let args = match cmd.agent {
        AgentKind::Command => cmd.args.iter().map(|a| expand(a)).collect(),
        AgentKind::Claude => claude_args(cmd, inputs),
        AgentKind::Codex => codex_args(cmd, inputs),
    };
    Invocation { program, args }
}

fn claude_args(cmd: &AgentCommand, inputs: &ProfileInputs) -> Vec<String> {
    let mut tools: Vec<String> = match &cmd.allowed_tools {
        Some(t) => t.clone(),
        None => CLAUDE_DEFAULT_TOOLS.iter().map(|t| (*t).to_owned()).collect(),
    };
    for c in cmd.commands.iter().chain(inputs.gates) {
        let c = c.trim();
        // A rule's text ends at its closing parenthesis: a command with
        // one cannot be written as a rule, and is left to the list.
        if c.is_empty() || c.contains(')') {
            continue;
        }
        for rule in [format!("Bash({c})"), format!("Bash({c} *)")] {
            if !tools.contains(&rule) {
                tools.push(rule);
            }
        }
    }
    let mut args: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "dontAsk"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    args.push("--allowedTools".into());
    args.push(tools.join(","));
    if let Some(n) = cmd.max_turns {
        args.extend(["--max-turns".into(), n.to_string()]);
    }
    if let Some(m) = &cmd.model {
        args.extend(["--model".into(), m.clone()]);
    }
    args.extend(["--append-system-prompt".into(), RULES.into()]);
    args.extend(cmd.extra_args.iter().cloned());
    // After `--`, a prompt that starts with a dash is still the prompt.
    args.extend(["--".into(), inputs.prompt.clone()]);
    args
}

fn codex_args(cmd: &AgentCommand, inputs: &ProfileInputs) -> Vec<String> {
    let toml_str = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let roots: Vec<String> = inputs.git_dirs.iter().map(|d| toml_str(&d.to_string_lossy())).collect();
    let mut args: Vec<String> = vec![
        "exec".into(),
        "--json".into(),
        "--sandbox".into(),
        "workspace-write".into(),
        "--config".into(),
        format!("sandbox_workspace_write.writable_roots=[{}]", roots.join(",")),
        "--config".into(),
        "approval_policy=\"never\"".into(),
    ];
    if let Some(url) = &inputs.openai_base_url {
        args.extend([
            "--config".into(),
            "model_provider=\"huskies-openai\"".into(),
            "--config".into(),
            format!(
                "model_providers.huskies-openai={{name=\"OpenAI (OPENAI_BASE_URL)\",base_url={},env_key=\"OPENAI_API_KEY\",wire_api=\"responses\"}}",
                toml_str(url)
            ),
        ]);
    }
    if let Some(m) = &cmd.model {
        args.extend(["--model".into(), m.clone()]);
    }
    args.extend(cmd.extra_args.iter().cloned());
    // Codex has no system prompt flag: the rules open the prompt.
    args.extend(["--".into(), format!("{RULES}\n\n{}", inputs.prompt)]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(toml_text: &str) -> AgentCommand {
        let text = format!("[agents.current]\n{toml_text}");
        let p = crate::project::ProjectConfig::parse(&text, std::path::Path::new("project.toml")).unwrap();
        p.agents[&huskies_engine::Stage::Current].clone()
    }

    fn inputs<'a>(gates: &'a [String], git_dirs: &'a [PathBuf]) -> ProfileInputs<'a> {
        ProfileInputs {
            prompt: "- story".into(),
            gates,
            git_dirs,
            openai_base_url: Some("http://127.0.0.1:9/v1".into()),
        }
    }

    #[test]
    fn claude_asks_nobody_and_may_run_the_projects_commands() {
        let gates = vec!["cargo test".to_owned()];
        let cmd = profile(
            "agent = \"claude\"\nmodel = \"claude-sonnet-4-5\"\nmax_turns = 30\ncommands = [\"cargo build\"]\n",
        );
        let inv = invocation(&cmd, &inputs(&gates, &[]), |a| a.to_owned());
        assert_eq!(inv.program, "claude");
        let a = inv.args.join(" ");
        assert!(
            a.starts_with("-p --output-format stream-json --verbose --permission-mode dontAsk --allowedTools Read,")
        );
        let tools = &inv.args[inv.args.iter().position(|x| x == "--allowedTools").unwrap() + 1];
        for rule in ["Bash(git commit *)", "Bash(cargo build)", "Bash(cargo build *)", "Bash(cargo test *)"] {
            assert!(tools.split(',').any(|t| t == rule), "{rule} in {tools}");
        }
        assert!(!tools.contains("push"), "{tools}");
        assert!(a.contains("--max-turns 30 --model claude-sonnet-4-5 --append-system-prompt"));
        assert_eq!(&inv.args[inv.args.len() - 2..], ["--", "- story"]);
    }

    #[test]
    fn codex_may_commit_from_its_sandbox_and_uses_the_named_endpoint() {
        let cmd = profile("agent = \"codex\"\nmodel = \"gpt-5-codex\"\nextra_args = [\"--skip-git-repo-check\"]\n");
        let dirs = [PathBuf::from("/repo/.git"), PathBuf::from("/repo/.git/worktrees/s1")];
        let inv = invocation(&cmd, &inputs(&[], &dirs), |a| a.to_owned());
        assert_eq!(inv.program, "codex");
        let a = inv.args.join(" ");
        assert!(a.starts_with("exec --json --sandbox workspace-write"), "{a}");
        assert!(
            a.contains("sandbox_workspace_write.writable_roots=[\"/repo/.git\",\"/repo/.git/worktrees/s1\"]"),
            "{a}"
        );
        assert!(a.contains("base_url=\"http://127.0.0.1:9/v1\""), "{a}");
        assert!(a.contains("--model gpt-5-codex --skip-git-repo-check --"), "{a}");
        assert!(inv.args.last().unwrap().starts_with(RULES) && inv.args.last().unwrap().ends_with("- story"));
    }

    #[test]
    fn a_command_keeps_its_args_and_profiles_refuse_them() {
        let cmd = profile("command = \"./agent.sh\"\nargs = [\"{id}\"]\n");
        assert_eq!(invocation(&cmd, &inputs(&[], &[]), |a| a.replace("{id}", "s1")).args, ["s1"]);
        let bad = |t: &str| {
            let text = format!("[agents.current]\n{t}");
            crate::project::ProjectConfig::parse(&text, std::path::Path::new("p")).unwrap_err().to_string()
        };
        assert!(bad("agent = \"claude\"\nargs = [\"-p\"]\n").contains("extra_args"));
        assert!(bad("command = \"x\"\nmodel = \"m\"\n").contains("model needs agent"));
        assert!(bad("agent = \"codex\"\nmax_turns = 3\n").contains("codex has no turn limit"));
        assert!(bad("agent = \"claude\"\nmax_turns = 0\n").contains("positive"));
        assert!(bad("agent = \"gemini\"\n").contains("gemini"));
    }
}
