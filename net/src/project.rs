//! `.huskies/project.toml`: which command runs for which stage, and how the
//! node paces itself.
//!
//! ```toml
//! capacity = 2              # runs at once on this node
//! claim_timeout_ms = 30000  # a silent node's stories are reclaimed after this
//! scan_interval_ms = 1000
//! max_mesh_peers = 3
//! # retry_backoff_ms = 5000 # before this node retries a story that failed here; doubles
//! # claim_stagger_ms = 2000 # default: 2 scans, at most half the claim timeout
//! # sync_interval_ms = 20   # least time between two sync messages to a peer
//! # epoch_after_changes = 2000  # server: start a new epoch (a fresh document
//! #                             # of the live state) past this many changes
//! # epoch_changes_per_live_story = 2  # server: and past this many per live
//! #                             # story (a cut reads every live story)
//! ```
//!
//! ```toml
//! # daily_budget_usd = 50.0 # server: no new claims once the cluster's agents
//! #                         # cost this much in a UTC day
//! # max_cost_usd = 5.0      # server: a story whose runs cost this much is given up
//! ```
//!
//! `claim_timeout_ms`, `claim_stagger_ms` and `sync_interval_ms` must agree
//! across the cluster: the server's file sets them for every node (they
//! travel in the document, signed by the cluster CA); an agent whose own
//! file disagrees logs a warning and uses the cluster's.
//!
//! ```toml
//!
//! [agents.current]          # one table per stage this node works
//! command = "claude"
//! args = ["-p", "Implement story {id}: {title}"]
//! ```
//!
//! `{id}`, `{title}`, `{stage}` in args are replaced; the same values are in
//! `HUSKIES_STORY_ID`, `HUSKIES_STORY_TITLE`, `HUSKIES_STAGE`.
//!
//! ```toml
//!
//! [merge]                   # this node lands merge-stage stories on the
//!                           # default branch (with or without [agents.merge])
//! gates = ["cargo test"]    # run in order on the merged tree; all must pass
//! gate_timeout_ms = 1800000 # each
//! method = "squash"         # squash (one commit per story), merge or rebase
//! # default_branch = "main" # default: the remote's HEAD
//! batch = 4                 # stories built and tested together
//! max_returns = 5           # conflicts and failed gates before a story is given up
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use huskies_engine::Stage;
use serde::Deserialize;
use thiserror::Error;

/// Which coding agent a stage runs (agent_profile.rs builds its
/// invocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// `command` with `args`, as given.
    #[default]
    Command,
    /// Claude Code (`claude -p`), reporting in stream-json.
    Claude,
    /// OpenAI's Codex CLI (`codex exec --json`).
    Codex,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Command => "command",
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    #[serde(default)]
    pub agent: AgentKind,
    /// The program; for `claude` and `codex` its default is their name.
    #[serde(default)]
    pub command: String,
    /// For `agent = "command"` only: the profiles build their own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Profiles: the model (`--model` / `-m`).
    #[serde(default)]
    pub model: Option<String>,
    /// Claude: `--max-turns`; the run fails "turn limit reached" past it.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// Claude: the tools it may use without asking (replaces the default
    /// list: file edits and the git commands an agent needs).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Claude: the project's build and test commands, allowed as
    /// `Bash(cmd)` and `Bash(cmd *)` (the `[merge] gates` are added).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Profiles: more arguments, placed before the prompt.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Profiles: the prompt, with the same placeholders as `args`;
    /// default `{story}`, the story file's text.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Runs that end on an API error that may pass (429, 529, 5xx) are
    /// started again this many times, within the same claim: they are not
    /// an attempt of the story. Default 3.
    #[serde(default)]
    pub api_retries: Option<u32>,
    /// Wait before the first such retry; doubles. Default 10000.
    #[serde(default)]
    pub api_retry_backoff_ms: Option<u64>,
    /// Fail a run that exits 0 without a new commit ("no commits").
    /// Default: on for `current`, off for the stages after it.
    #[serde(default)]
    pub require_commit: Option<bool>,
    /// Failed attempts in this stage before the story is given up.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// A run of this stage is stopped and failed after this long.
    #[serde(default)]
    pub run_timeout_ms: Option<u64>,
    /// While a run goes on, push its branch this often to
    /// `refs/heads/huskies-wip/<story>/<token>`, so a node that reclaims
    /// the story after this one dies resumes from that progress. Off by
    /// default.
    #[serde(default)]
    pub wip_push_interval_ms: Option<u64>,
}

/// How merge-stage stories are landed on the default branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    /// One commit per story on top of the default branch.
    #[default]
    Squash,
    /// A merge commit per story (its branch's history kept).
    Merge,
    /// The story's commits replayed one by one.
    Rebase,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// Commands (run by `sh -c` in a scratch worktree of the merged tree),
    /// in order; the default branch moves only when all pass.
    #[serde(default)]
    pub gates: Vec<String>,
    #[serde(default = "default_gate_timeout")]
    pub gate_timeout_ms: u64,
    #[serde(default)]
    pub method: MergeMethod,
    /// `None`: the remote's HEAD (or main, or master).
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Returns to `current` (conflicts, failed gates) before a story is
    /// given up; `None`: the engine's default (5).
    #[serde(default)]
    pub max_returns: Option<u32>,
}

fn default_gate_timeout() -> u64 {
    30 * 60 * 1_000
}
fn default_batch() -> usize {
    4
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            gates: Vec::new(),
            gate_timeout_ms: default_gate_timeout(),
            method: MergeMethod::default(),
            default_branch: None,
            batch: default_batch(),
            max_returns: None,
        }
    }
}

impl AgentCommand {
    pub fn api_retries(&self) -> u32 {
        self.api_retries.unwrap_or(3)
    }

    pub fn api_retry_backoff_ms(&self) -> u64 {
        self.api_retry_backoff_ms.unwrap_or(10_000)
    }

    /// The program to start.
    pub fn program(&self) -> &str {
        match (self.agent, self.command.trim().is_empty()) {
            (AgentKind::Command, _) | (_, false) => &self.command,
            (kind, true) => kind.as_str(),
        }
    }

    /// What makes no sense for this kind of agent, if anything.
    fn check(&self) -> Result<(), String> {
        let kind = self.agent.as_str();
        match self.agent {
            AgentKind::Command => {
                if self.command.trim().is_empty() {
                    return Err("command is empty".into());
                }
                let profile_only = [
                    ("model", self.model.is_some()),
                    ("max_turns", self.max_turns.is_some()),
                    ("allowed_tools", self.allowed_tools.is_some()),
                    ("commands", !self.commands.is_empty()),
                    ("extra_args", !self.extra_args.is_empty()),
                    ("prompt", self.prompt.is_some()),
                ];
                if let Some((key, _)) = profile_only.iter().find(|(_, set)| *set) {
                    return Err(format!("{key} needs agent = \"claude\" or \"codex\" (a command takes args)"));
                }
            }
            AgentKind::Claude | AgentKind::Codex => {
                if !self.args.is_empty() {
                    return Err(format!("agent = \"{kind}\" builds its own arguments: use extra_args and prompt"));
                }
                if self.agent == AgentKind::Codex && (self.max_turns.is_some() || self.allowed_tools.is_some()) {
                    return Err("codex has no turn limit or tool allow list: use its sandbox (extra_args)".into());
                }
            }
        }
        if self.max_turns == Some(0) {
            return Err("max_turns must be positive".into());
        }
        Ok(())
    }

    pub fn require_commit(&self, stage: Stage) -> bool {
        self.require_commit.unwrap_or(stage == Stage::Current)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_capacity")]
    capacity: u32,
    #[serde(default = "default_claim_timeout")]
    claim_timeout_ms: u64,
    #[serde(default = "default_scan")]
    scan_interval_ms: u64,
    #[serde(default = "default_mesh")]
    max_mesh_peers: usize,
    #[serde(default)]
    retry_backoff_ms: Option<u64>,
    #[serde(default)]
    claim_stagger_ms: Option<u64>,
    #[serde(default)]
    sync_interval_ms: Option<u64>,
    #[serde(default)]
    epoch_after_changes: Option<u64>,
    #[serde(default)]
    epoch_changes_per_live_story: Option<u64>,
    #[serde(default)]
    agents: BTreeMap<String, AgentCommand>,
    #[serde(default)]
    merge: Option<MergeConfig>,
    #[serde(default)]
    git_author: Option<String>,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    daily_budget_usd: Option<f64>,
    #[serde(default)]
    max_cost_usd: Option<f64>,
}

/// USD per million tokens, as price lists give them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    output: f64,
}

/// A model's price, in micro-USD per million tokens (whole numbers keep
/// the config comparable and the sums exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input_micro_per_mtok: u64,
    pub cached_input_micro_per_mtok: u64,
    pub output_micro_per_mtok: u64,
}

impl Price {
    const fn usd(input: f64, cached_input: f64, output: f64) -> Price {
        Price {
            input_micro_per_mtok: (input * 1e6) as u64,
            cached_input_micro_per_mtok: (cached_input * 1e6) as u64,
            output_micro_per_mtok: (output * 1e6) as u64,
        }
    }

    /// Cost in micro-USD of `input` fresh and `cached` cached input tokens
    /// and `output` output tokens.
    pub fn cost_micro_usd(&self, input: u64, cached: u64, output: u64) -> u64 {
        let part = |tokens: u64, per_mtok: u64| (u128::from(tokens) * u128::from(per_mtok) / 1_000_000) as u64;
        part(input, self.input_micro_per_mtok)
            .saturating_add(part(cached, self.cached_input_micro_per_mtok))
            .saturating_add(part(output, self.output_micro_per_mtok))
    }
}

/// List prices (USD per million tokens: input, cached input, output) of
/// the models Codex runs by default, for runs whose agent reports tokens
/// but no price. `[prices."model"]` in project.toml adds or replaces.
const DEFAULT_PRICES: [(&str, Price); 5] = [
    ("gpt-5", Price::usd(1.25, 0.125, 10.0)),
    ("gpt-5-codex", Price::usd(1.25, 0.125, 10.0)),
    ("gpt-5.1-codex", Price::usd(1.25, 0.125, 10.0)),
    ("gpt-5-mini", Price::usd(0.25, 0.025, 2.0)),
    ("codex-mini-latest", Price::usd(1.5, 0.375, 6.0)),
];

fn default_capacity() -> u32 {
    2
}
fn default_claim_timeout() -> u64 {
    30_000
}
fn default_scan() -> u64 {
    1_000
}
fn default_mesh() -> usize {
    3
}

fn default_prices() -> BTreeMap<String, Price> {
    DEFAULT_PRICES.iter().map(|(m, p)| ((*m).to_owned(), *p)).collect()
}

/// A validated project configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectConfig {
    pub capacity: u32,
    pub claim_timeout_ms: u64,
    pub scan_interval_ms: u64,
    pub max_mesh_peers: usize,
    /// Wait before this node retries a story that failed here (doubles
    /// per attempt); `None`: the engine's default (5 s).
    pub retry_backoff_ms: Option<u64>,
    /// `None`: derived from the scan interval and claim timeout.
    pub claim_stagger_ms: Option<u64>,
    /// `None`: the engine's default.
    pub sync_interval_ms: Option<u64>,
    /// Read by the server only (it alone starts epochs); `None`: the
    /// engine's default (2,000), `Some(0)`: never.
    pub epoch_after_changes: Option<u64>,
    /// Read by the server only; `None`: the engine's default (2), `Some(0)`:
    /// `epoch_after_changes` alone.
    pub epoch_changes_per_live_story: Option<u64>,
    pub agents: BTreeMap<Stage, AgentCommand>,
    /// `[merge]`: how this node lands stories (it works the merge stage).
    pub merge: Option<MergeConfig>,
    /// `git_author = "Name <email>"`: the identity of agents' commits on a
    /// machine whose git has none (default `huskies <node>`).
    pub git_author: Option<crate::git_identity::GitAuthor>,
    /// Per model: what a token costs, for agents that report no price.
    pub prices: BTreeMap<String, Price>,
    /// Server: no new claims once the cluster's agents cost this much in a
    /// UTC day (micro-USD); a cluster setting.
    pub daily_budget_micro_usd: Option<u64>,
    /// Server: a story whose runs cost this much is given up (micro-USD);
    /// a cluster setting.
    pub max_cost_micro_usd: Option<u64>,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig {
            capacity: default_capacity(),
            claim_timeout_ms: default_claim_timeout(),
            scan_interval_ms: default_scan(),
            max_mesh_peers: default_mesh(),
            retry_backoff_ms: None,
            claim_stagger_ms: None,
            sync_interval_ms: None,
            epoch_after_changes: None,
            epoch_changes_per_live_story: None,
            agents: BTreeMap::new(),
            merge: None,
            git_author: None,
            prices: default_prices(),
            daily_budget_micro_usd: None,
            max_cost_micro_usd: None,
        }
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProjectError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ProjectConfig {
    pub fn path(project_root: &Path) -> PathBuf {
        project_root.join(".huskies").join("project.toml")
    }

    /// Loads and validates; a missing file is the default (no agents).
    pub fn load(project_root: &Path) -> Result<ProjectConfig, ProjectError> {
        let path = Self::path(project_root);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProjectConfig::default()),
            Err(source) => Err(ProjectError::Read { path, source }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<ProjectConfig, ProjectError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| ProjectError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let invalid = |message: String| ProjectError::Invalid { path: path.to_owned(), message };
        if raw.claim_timeout_ms < 3_000 {
            return Err(invalid(format!("claim_timeout_ms = {} is below the 3000 ms minimum", raw.claim_timeout_ms)));
        }
        if raw.scan_interval_ms == 0 || raw.scan_interval_ms > raw.claim_timeout_ms {
            return Err(invalid(format!(
                "scan_interval_ms = {} must be within 1..=claim_timeout_ms",
                raw.scan_interval_ms
            )));
        }
        if raw.claim_stagger_ms.is_some_and(|s| s > raw.claim_timeout_ms) {
            return Err(invalid("claim_stagger_ms must not exceed claim_timeout_ms".into()));
        }
        if raw.sync_interval_ms.is_some_and(|s| s == 0 || s > raw.claim_timeout_ms / 3) {
            return Err(invalid("sync_interval_ms must be within 1..=claim_timeout_ms/3".into()));
        }
        let mut agents = BTreeMap::new();
        for (name, cmd) in raw.agents {
            let stage: Stage = name.parse().map_err(|e| invalid(format!("[agents.{name}]: {e}")))?;
            if !stage.is_active() {
                return Err(invalid(format!("[agents.{name}]: agents run in current, qa or merge, not {stage}")));
            }
            cmd.check().map_err(|e| invalid(format!("[agents.{name}]: {e}")))?;
            if cmd.max_attempts == Some(0) || cmd.run_timeout_ms == Some(0) || cmd.wip_push_interval_ms == Some(0) {
                return Err(invalid(format!(
                    "[agents.{name}]: max_attempts, run_timeout_ms and wip_push_interval_ms must be positive"
                )));
            }
            agents.insert(stage, cmd);
        }
        if let Some(m) = &raw.merge {
            if m.batch == 0 || m.batch > 64 {
                return Err(invalid(format!("[merge] batch = {} must be within 1..=64", m.batch)));
            }
            if m.gate_timeout_ms == 0 || m.max_returns == Some(0) {
                return Err(invalid("[merge] gate_timeout_ms and max_returns must be positive".into()));
            }
            if m.gates.iter().any(|g| g.trim().is_empty()) {
                return Err(invalid("[merge] a gate is empty".into()));
            }
            if m.default_branch.as_deref().is_some_and(|b| git2::Branch::name_is_valid(b) != Ok(true)) {
                return Err(invalid(format!(
                    "[merge] default_branch {:?} is not a valid branch name",
                    m.default_branch
                )));
            }
        }
        let git_author =
            raw.git_author.as_deref().map(crate::git_identity::GitAuthor::parse).transpose().map_err(invalid)?;
        let budget = |name: &str, usd: Option<f64>| match usd {
            None => Ok(None),
            Some(x) if x.is_finite() && x > 0.0 && x <= 1e9 => Ok(Some((x * 1e6).round() as u64)),
            Some(x) => Err(invalid(format!("{name} = {x} must be a positive number of US dollars"))),
        };
        let daily_budget_micro_usd = budget("daily_budget_usd", raw.daily_budget_usd)?;
        let max_cost_micro_usd = budget("max_cost_usd", raw.max_cost_usd)?;
        let mut prices = default_prices();
        for (model, p) in raw.prices {
            let ok = |x: f64| x.is_finite() && (0.0..=10_000.0).contains(&x);
            if !ok(p.input) || !ok(p.output) || !p.cached_input.is_none_or(ok) {
                return Err(invalid(format!("[prices.{model:?}]: prices are USD per million tokens, 0 to 10000")));
            }
            let cached = p.cached_input.unwrap_or(p.input);
            prices.insert(model, Price::usd(p.input, cached, p.output));
        }
        Ok(ProjectConfig {
            capacity: raw.capacity,
            claim_timeout_ms: raw.claim_timeout_ms,
            scan_interval_ms: raw.scan_interval_ms,
            max_mesh_peers: raw.max_mesh_peers,
            retry_backoff_ms: raw.retry_backoff_ms,
            claim_stagger_ms: raw.claim_stagger_ms,
            sync_interval_ms: raw.sync_interval_ms,
            epoch_after_changes: raw.epoch_after_changes,
            epoch_changes_per_live_story: raw.epoch_changes_per_live_story,
            agents,
            merge: raw.merge,
            git_author,
            prices,
            daily_budget_micro_usd,
            max_cost_micro_usd,
        })
    }

    /// The stages this node works: those with an agent, and `merge` when
    /// it lands.
    pub fn stages(&self) -> Vec<Stage> {
        let mut s: Vec<Stage> = self.agents.keys().copied().collect();
        if self.merge.is_some() && !s.contains(&Stage::Merge) {
            s.push(Stage::Merge);
        }
        s.sort();
        s
    }

    /// How this node lands: `[merge]`, or its defaults when only
    /// `[agents.merge]` is given.
    pub fn merge_config(&self) -> MergeConfig {
        self.merge.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProjectConfig, ProjectError> {
        ProjectConfig::parse(s, Path::new("project.toml"))
    }

    #[test]
    fn parses_and_validates() {
        let c = parse("capacity = 3\n[agents.current]\ncommand = \"claude\"\nargs = [\"-p\", \"{title}\"]\n").unwrap();
        assert_eq!(c.capacity, 3);
        assert_eq!(c.agents[&Stage::Current].command, "claude");
        assert_eq!(parse("").unwrap().max_mesh_peers, 3);
        let e = parse("[agents.review]\ncommand = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("review") && e.contains("unknown stage"), "{e}");
        let e = parse("[agents.done]\ncommand = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("not done"), "{e}");
        let e = parse("capacity = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("capacity"), "{e}");
        let e = parse("claim_timeout_ms = 10\n").unwrap_err().to_string();
        assert!(e.contains("3000"), "{e}");
        assert!(parse("colour = 1\n").is_err(), "unknown keys are refused");
        let m = parse("[merge]\ngates = [\"sh ci.sh\"]\nmethod = \"rebase\"\n").unwrap();
        assert_eq!(m.stages(), vec![Stage::Merge]);
        assert_eq!(m.merge_config().method, MergeMethod::Rebase);
        assert_eq!(m.merge_config().batch, 4);
        let e = parse("[merge]\nmethod = \"octopus\"\n").unwrap_err().to_string();
        assert!(e.contains("octopus"), "{e}");
        let e = parse("[merge]\nbatch = 0\n").unwrap_err().to_string();
        assert!(e.contains("batch"), "{e}");
        let e = parse("[merge]\ndefault_branch = \"a..b\"\n").unwrap_err().to_string();
        assert!(e.contains("default_branch"), "{e}");
    }
}
