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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
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
    pub fn require_commit(&self, stage: Stage) -> bool {
        self.require_commit.unwrap_or(stage == Stage::Current)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    agents: BTreeMap<String, AgentCommand>,
    #[serde(default)]
    merge: Option<MergeConfig>,
    #[serde(default)]
    git_author: Option<String>,
}

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
    pub agents: BTreeMap<Stage, AgentCommand>,
    /// `[merge]`: how this node lands stories (it works the merge stage).
    pub merge: Option<MergeConfig>,
    /// `git_author = "Name <email>"`: the identity of agents' commits on a
    /// machine whose git has none (default `huskies <node>`).
    pub git_author: Option<crate::git_identity::GitAuthor>,
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
            agents: BTreeMap::new(),
            merge: None,
            git_author: None,
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
            if cmd.command.trim().is_empty() {
                return Err(invalid(format!("[agents.{name}]: command is empty")));
            }
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
        Ok(ProjectConfig {
            capacity: raw.capacity,
            claim_timeout_ms: raw.claim_timeout_ms,
            scan_interval_ms: raw.scan_interval_ms,
            max_mesh_peers: raw.max_mesh_peers,
            retry_backoff_ms: raw.retry_backoff_ms,
            claim_stagger_ms: raw.claim_stagger_ms,
            sync_interval_ms: raw.sync_interval_ms,
            epoch_after_changes: raw.epoch_after_changes,
            agents,
            merge: raw.merge,
            git_author,
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
