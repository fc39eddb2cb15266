//! Agent runs: one child process per story, in its worktree, no shell.
//! Stop is SIGTERM to the process group, then SIGKILL after a grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::{Input, NodeId, RunOutcome, Stage, StoryId, Token};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::git;
use crate::gitauth::GitCredentials;
use crate::project::ProjectConfig;

const STOP_GRACE: Duration = Duration::from_secs(5);

/// Environment variables that may carry a huskies secret; removed from
/// every agent child's environment.
pub const SECRET_VARS: [&str; 3] = ["HUSKIES_KEY", "HUSKIES_JOIN_TOKEN", "HUSKIES_ADMIN_KEY"];

pub struct Runner {
    project_root: PathBuf,
    node: NodeId,
    pub project: Arc<Mutex<ProjectConfig>>,
    inputs: mpsc::UnboundedSender<Input>,
    stops: BTreeMap<(StoryId, Token), oneshot::Sender<()>>,
    rt: tokio::runtime::Handle,
    /// Read from the environment once, at start.
    git_creds: Arc<GitCredentials>,
}

/// Replaces `{id}`, `{title}` and `{stage}` in one argument.
fn expand(arg: &str, story: &StoryId, title: &str, stage: Stage) -> String {
    arg.replace("{id}", story.as_str()).replace("{title}", title).replace("{stage}", stage.as_str())
}

impl Runner {
    pub fn new(
        project_root: PathBuf,
        node: NodeId,
        project: Arc<Mutex<ProjectConfig>>,
        inputs: mpsc::UnboundedSender<Input>,
        rt: tokio::runtime::Handle,
    ) -> Runner {
        Runner {
            project_root,
            node,
            project,
            inputs,
            stops: BTreeMap::new(),
            rt,
            git_creds: Arc::new(GitCredentials::from_env()),
        }
    }

    pub fn start(&mut self, story: StoryId, title: String, stage: Stage, token: Token, attempt: u32) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.stops.insert((story.clone(), token), stop_tx);
        let cmd = self.project.lock().expect("project lock").agents.get(&stage).cloned();
        let root = self.project_root.clone();
        let node = self.node.clone();
        let inputs = self.inputs.clone();
        let git_creds = self.git_creds.clone();
        self.rt.spawn(async move {
            let outcome = match cmd {
                None => Some(RunOutcome::Failed { reason: format!("no agent configured for stage {stage}") }),
                Some(cmd) => {
                    let run = Run { root, node, story: story.clone(), title, stage, token, attempt, git_creds };
                    run.execute(cmd, stop_rx).await
                }
            };
            if let Some(outcome) = outcome {
                let _ = inputs.send(Input::RunFinished { story, token, outcome });
            }
        });
    }

    pub fn stop(&mut self, story: &StoryId, token: Token) {
        if let Some(tx) = self.stops.remove(&(story.clone(), token)) {
            let _ = tx.send(());
        }
    }

    pub fn finished(&mut self, story: &StoryId, token: Token) {
        self.stops.remove(&(story.clone(), token));
    }

    pub fn push(&self, story: StoryId, token: Token) {
        let root = self.project_root.clone();
        let inputs = self.inputs.clone();
        let creds = self.git_creds.clone();
        self.rt.spawn(async move {
            let s = story.clone();
            let outcome = tokio::task::spawn_blocking(move || git::push(&root, s.as_str(), &creds))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.message().to_owned()));
            let _ = inputs.send(Input::PushFinished { story, token, outcome });
        });
    }

    pub fn inspect(&self, story: StoryId, token: Token) {
        let root = self.project_root.clone();
        let inputs = self.inputs.clone();
        let creds = self.git_creds.clone();
        self.rt.spawn(async move {
            let s = story.clone();
            let committed = tokio::task::spawn_blocking(move || git::has_unpushed_work(&root, s.as_str(), &creds))
                .await
                .unwrap_or(false);
            let _ = inputs.send(Input::WorktreeInspected { story, token, committed });
        });
    }

    pub fn prune(&self, story: StoryId) {
        let root = self.project_root.clone();
        self.rt.spawn_blocking(move || {
            if let Err(e) = git::prune(&root, story.as_str()) {
                tracing::warn!(%story, error = %e, "worktree prune failed");
            }
        });
    }
}

struct Run {
    root: PathBuf,
    node: NodeId,
    story: StoryId,
    title: String,
    stage: Stage,
    token: Token,
    attempt: u32,
    git_creds: Arc<GitCredentials>,
}

impl Run {
    /// Runs the agent; `None` when stopped (the engine needs no answer).
    async fn execute(self, cmd: crate::project::AgentCommand, mut stop: oneshot::Receiver<()>) -> Option<RunOutcome> {
        let failed = |reason: String| Some(RunOutcome::Failed { reason });
        let (root, story, creds) = (self.root.clone(), self.story.clone(), self.git_creds.clone());
        let prepared = tokio::task::spawn_blocking(move || git::prepare_worktree(&root, story.as_str(), &creds)).await;
        let worktree = match prepared {
            Ok(Ok((path, _base))) => path,
            Ok(Err(e)) => return failed(format!("worktree: {}", e.message())),
            Err(e) => return failed(format!("worktree: {e}")),
        };
        let logs = self.root.join(".huskies").join("logs");
        let log_path = logs.join(format!("{}-{}-{}.log", self.story, self.stage, self.token));
        let log = match std::fs::create_dir_all(&logs).and_then(|_| std::fs::File::create(&log_path)) {
            Ok(f) => f,
            Err(e) => return failed(format!("log file {}: {e}", log_path.display())),
        };
        let err_log = match log.try_clone() {
            Ok(f) => f,
            Err(e) => return failed(format!("log file: {e}")),
        };
        let args: Vec<String> = cmd.args.iter().map(|a| expand(a, &self.story, &self.title, self.stage)).collect();
        let mut command = Command::new(&cmd.command);
        // No credential of ours reaches the agent: it runs code we do not
        // control. (Our own secrets live in files outside the worktree;
        // these are the variables that could carry one.)
        for var in SECRET_VARS.iter().chain(&crate::gitauth::SECRET_VARS) {
            command.env_remove(var);
        }
        let mut child = match command
            .args(&args)
            .current_dir(&worktree)
            .env("HUSKIES_STORY_ID", self.story.as_str())
            .env("HUSKIES_STORY_TITLE", &self.title)
            .env("HUSKIES_STAGE", self.stage.as_str())
            .env("HUSKIES_TOKEN", self.token.0.to_string())
            .env("HUSKIES_ATTEMPT", self.attempt.to_string())
            .env("HUSKIES_NODE", self.node.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return failed(format!("cannot start {:?}: {e}", cmd.command)),
        };
        tracing::info!(story = %self.story, stage = %self.stage, token = %self.token, log = %log_path.display(), "agent started");
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) if s.success() => Some(RunOutcome::Succeeded),
                Ok(s) => failed(format!("agent exited with {s}; see {}", log_path.display())),
                Err(e) => failed(format!("waiting for agent: {e}")),
            },
            _ = &mut stop => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) with a negative pid signals the
                    // process group we created; no memory is involved.
                    unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
                }
                if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                tracing::info!(story = %self.story, token = %self.token, "agent stopped");
                None
            }
        }
    }
}
