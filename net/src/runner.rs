//! Agent runs: one child process per story, in its worktree, no shell.
//! Stop is SIGTERM to the process group, then SIGKILL after a grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::{Input, NodeId, PushError, RunOutcome, RunReport, Stage, StoryId, Token};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::git;
use crate::git_identity::GitAuthor;
use crate::gitauth::GitCredentials;
use crate::project::ProjectConfig;
use crate::runlog;

const STOP_GRACE: Duration = Duration::from_secs(5);

/// Environment variables that may carry a huskies secret; removed from
/// every agent child's environment.
pub const SECRET_VARS: [&str; 3] = ["HUSKIES_KEY", "HUSKIES_JOIN_TOKEN", "HUSKIES_ADMIN_KEY"];

type LandCancels = Arc<Mutex<BTreeMap<huskies_engine::landing::BatchId, Arc<std::sync::atomic::AtomicBool>>>>;

/// The output streams of the agents running now, by run: what each is
/// doing (issue 20, item 5).
pub type LiveRuns = Arc<Mutex<BTreeMap<(StoryId, Token), Arc<Mutex<runlog::Lines>>>>>;

pub struct Runner {
    project_root: PathBuf,
    node: NodeId,
    pub project: Arc<Mutex<ProjectConfig>>,
    inputs: mpsc::Sender<Input>,
    stops: BTreeMap<(StoryId, Token), oneshot::Sender<()>>,
    /// Flags that call off landings in progress.
    land_cancels: LandCancels,
    rt: tokio::runtime::Handle,
    /// Read from the environment once, at start.
    git_creds: Arc<GitCredentials>,
    live: LiveRuns,
}

impl Runner {
    pub fn new(
        project_root: PathBuf,
        node: NodeId,
        project: Arc<Mutex<ProjectConfig>>,
        inputs: mpsc::Sender<Input>,
        rt: tokio::runtime::Handle,
    ) -> Runner {
        Runner {
            project_root,
            node,
            project,
            inputs,
            stops: BTreeMap::new(),
            land_cancels: Default::default(),
            rt,
            git_creds: Arc::new(GitCredentials::from_env()),
            live: Default::default(),
        }
    }

    /// What each running agent is doing now, by its own stream.
    pub fn progress(&self) -> Vec<(StoryId, Token, crate::agent_stream::Progress)> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .filter_map(|((s, t), l)| l.lock().ok().map(|l| (s.clone(), *t, l.stream.progress().clone())))
            .collect()
    }

    pub fn start(&mut self, story: StoryId, title: String, stage: Stage, token: Token, attempt: u32, ctx: RunContext) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.stops.insert((story.clone(), token), stop_tx);
        let (cmd, lands, author) = {
            let p = self.project.lock().expect("project lock");
            let author = p.git_author.clone().unwrap_or_else(|| GitAuthor::for_node(self.node.as_str()));
            (p.agents.get(&stage).cloned(), p.merge.is_some(), author)
        };
        let root = self.project_root.clone();
        let node = self.node.clone();
        let inputs = self.inputs.clone();
        let git_creds = self.git_creds.clone();
        let project = self.project.clone();
        let live = self.live.clone();
        self.rt.spawn(async move {
            let finished = match cmd {
                // A node that lands needs no agent in the merge stage: the
                // gates decide (landing.rs).
                None if stage == Stage::Merge && lands => {
                    // The push that follows needs the story's branch here.
                    let (root, story, creds) = (root.clone(), story.clone(), git_creds.clone());
                    let prepared = tokio::task::spawn_blocking(move || {
                        git::prepare_worktree(&root, story.as_str(), &creds, None).map(|_| ())
                    })
                    .await;
                    match prepared {
                        Ok(Ok(())) => Some((RunOutcome::Succeeded, RunReport::default())),
                        Ok(Err(e)) => {
                            Some((RunOutcome::Failed { reason: format!("worktree: {e}") }, RunReport::default()))
                        }
                        Err(e) => Some((RunOutcome::Failed { reason: format!("worktree: {e}") }, RunReport::default())),
                    }
                }
                None => Some((
                    RunOutcome::Failed { reason: format!("no agent configured for stage {stage}") },
                    RunReport::default(),
                )),
                Some(cmd) => {
                    let run = AgentRun {
                        root,
                        node,
                        story: story.clone(),
                        title,
                        stage,
                        token,
                        attempt,
                        git_creds,
                        ctx,
                        author,
                        project,
                        live,
                    };
                    run.execute(cmd, stop_rx).await
                }
            };
            if let Some((outcome, report)) = finished {
                let _ = inputs.send(Input::RunFinished { story, token, outcome, report }).await;
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

    pub fn push(&self, story: StoryId, token: Token, stage: Stage) {
        let root = self.project_root.clone();
        let inputs = self.inputs.clone();
        let creds = self.git_creds.clone();
        let node = self.node.clone();
        self.rt.spawn(async move {
            let s = story.clone();
            let pushed = tokio::task::spawn_blocking(move || {
                let claim = git::Claim { stage: stage.as_str(), token: token.0, node: node.as_str() };
                git::push(&root, s.as_str(), claim, &creds)
            })
            .await;
            let outcome = match pushed {
                Ok(Ok(git::Pushed::Landed { replaced, .. })) => {
                    if let Some(kept) = replaced {
                        tracing::warn!(%story, %token, %kept, "replaced an older claim's tip at the remote; it is kept");
                    }
                    Ok(())
                }
                Ok(Ok(git::Pushed::Fenced { by_token, kept })) => {
                    Err(PushError::Fenced { by_token: by_token.map(Token), kept })
                }
                Ok(Err(e)) => Err(PushError::Failed(e.to_string())),
                Err(e) => Err(PushError::Failed(e.to_string())),
            };
            let _ = inputs.send(Input::PushFinished { story, token, outcome }).await;
        });
    }

    /// Lands a batch on the default branch (land.rs); answers with
    /// `LandFinished`.
    pub fn land(
        &self,
        batch: huskies_engine::landing::BatchId,
        ahead: Vec<huskies_engine::landing::LandStory>,
        stories: Vec<huskies_engine::landing::LandStory>,
    ) {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cancels = self.land_cancels.clone();
        cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(batch, cancel.clone());
        let root = self.project_root.clone();
        let inputs = self.inputs.clone();
        let creds = self.git_creds.clone();
        let node = self.node.clone();
        let merge = self.project.lock().expect("project lock").merge_config();
        self.rt.spawn(async move {
            let ids: Vec<String> = stories.iter().map(|s| s.id.to_string()).collect();
            tracing::info!(%batch, stories = %ids.join(" "), ahead = ahead.len(), "landing");
            let early = inputs.clone();
            let landed = tokio::task::spawn_blocking(move || {
                let log = runlog::logs_dir(&root).join(format!("land-{node}-{batch}.log"));
                let built = move |left_out| {
                    // A closed channel means the node is stopping: nothing to tell.
                    let _ = early.blocking_send(Input::LandBuilt { batch, left_out });
                };
                let job = crate::land::LandJob {
                    project_root: &root,
                    node: node.as_str(),
                    merge: &merge,
                    creds: &creds,
                    log,
                    cancel: &cancel,
                    built: &built,
                };
                crate::land::land(&job, &ahead, &stories)
            })
            .await;
            cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&batch);
            let report = landed.unwrap_or_else(|e| huskies_engine::landing::LandReport {
                result: huskies_engine::landing::LandResult::Failed { reason: format!("landing task: {e}") },
                ..Default::default()
            });
            tracing::info!(%batch, ?report, "landing finished");
            let _ = inputs.send(Input::LandFinished { batch, report }).await;
        });
    }

    /// Calls a landing off; it answers soon with `LandFinished`.
    pub fn cancel_land(&self, batch: huskies_engine::landing::BatchId) {
        if let Some(flag) = self.land_cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&batch) {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
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
            let _ = inputs.send(Input::WorktreeInspected { story, token, committed }).await;
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

struct AgentRun {
    root: PathBuf,
    node: NodeId,
    story: StoryId,
    title: String,
    stage: Stage,
    token: Token,
    attempt: u32,
    git_creds: Arc<GitCredentials>,
    ctx: RunContext,
    /// Its commits' identity where the machine's git has none.
    author: GitAuthor,
    project: Arc<Mutex<ProjectConfig>>,
    live: LiveRuns,
}

/// What a run is told of its story beyond the id and title.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub body: String,
    pub last_failure: Option<String>,
    /// A reclaim: the dead holder and its claim's token.
    pub resume: Option<(NodeId, Token)>,
}

/// Where a run's story file goes: inside `.huskies/`, outside any
/// worktree's tracked tree.
pub fn story_file_path(project_root: &std::path::Path, story: &StoryId) -> PathBuf {
    project_root.join(".huskies").join("stories").join(format!("{story}.md"))
}

impl AgentRun {
    /// The story file an agent reads: id, title, stage, attempt, the last
    /// failure, then the body.
    fn story_file(&self, resumed_from_wip: bool) -> String {
        let last = self.ctx.last_failure.as_deref().unwrap_or("none");
        let resume = match &self.ctx.resume {
            Some((node, token)) if resumed_from_wip => {
                format!("- resuming: the work of {node} (token {}), from the progress it pushed\n", token.0)
            }
            Some((node, token)) => {
                format!("- resuming: the work of {node} (token {}); it pushed no progress\n", token.0)
            }
            None => String::new(),
        };
        format!(
            "# {title}\n\n- id: {id}\n- stage: {stage}\n- attempt: {attempt}\n- previous attempt failed: {last}\n{resume}\n{body}\n",
            title = self.title,
            id = self.story,
            stage = self.stage,
            attempt = self.attempt,
            body = self.ctx.body,
        )
    }
    /// Runs the agent; `None` when stopped (the engine needs no answer).
    async fn execute(
        self,
        cmd: crate::project::AgentCommand,
        mut stop: oneshot::Receiver<()>,
    ) -> Option<(RunOutcome, RunReport)> {
        let Prepared { worktree, base, from_wip, default_branch, story_file, log_path, log } =
            match self.prepare().await {
                Ok(p) => p,
                Err(reason) => return Some((RunOutcome::Failed { reason }, RunReport::default())),
            };
        let story_text = self.story_file(from_wip);
        let vars = Vars { run: &self, story_file: &story_file, story: &story_text };
        let (gates, prices) = {
            let p = self.project.lock().expect("project lock");
            (p.merge.as_ref().map(|m| m.gates.clone()).unwrap_or_default(), p.prices.clone())
        };
        let git_dirs: Vec<PathBuf> = git2::Repository::open(&worktree)
            .map(|r| vec![r.commondir().to_owned(), r.path().to_owned()])
            .unwrap_or_default();
        let inputs = crate::agent_profile::ProfileInputs {
            prompt: vars.expand(cmd.prompt.as_deref().unwrap_or("{story}")),
            gates: &gates,
            git_dirs: &git_dirs,
            openai_base_url: std::env::var("OPENAI_BASE_URL").ok().filter(|u| !u.is_empty()),
        };
        let invocation = crate::agent_profile::invocation(&cmd, &inputs, |a| vars.expand(a));
        #[allow(clippy::disallowed_methods)] // a run's duration is wall time
        let started = std::time::Instant::now();
        let mut usage: Option<huskies_engine::runs::AgentUsage> = None;
        let mut backoff_ms = cmd.api_retry_backoff_ms();
        let mut tries = 0u32;
        let ended = loop {
            tries += 1;
            let ended =
                self.run_once(&invocation, &cmd, &worktree, &story_file, &default_branch, &log, &mut stop).await?;
            let said = ended.stream.report(cmd.model.as_deref(), &prices);
            if let Some(u) = said.as_ref().map(|r| r.usage()) {
                usage.get_or_insert_with(Default::default).add(&u);
            }
            let retry = said.as_ref().is_some_and(|r| r.retryable()) && tries <= cmd.api_retries();
            if !retry {
                break ended;
            }
            let why = said.and_then(|r| r.failure()).unwrap_or_default();
            tracing::warn!(story = %self.story, token = %self.token, try_ = tries, backoff_ms, reason = %why, "API error; the run starts again (not an attempt of the story)");
            if let Ok(mut l) = log.lock() {
                let _ = l.write(
                    format!(
                        "\n[huskies] {why}; starting again in {backoff_ms} ms (try {} of {})\n",
                        tries + 1,
                        cmd.api_retries() + 1
                    )
                    .as_bytes(),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                _ = &mut stop => return None,
            }
            backoff_ms = backoff_ms.saturating_mul(2);
        };
        let root = self.root.clone();
        let story = self.story.clone();
        let head = tokio::task::spawn_blocking(move || git::branch_head(&root, story.as_str())).await.ok().flatten();
        let mut report = RunReport {
            exit_code: ended.status.as_ref().ok().and_then(|s| s.code()),
            duration_ms: started.elapsed().as_millis() as u64,
            commit: head.map(|h| h.to_string()),
            stderr_tail: ended.stderr_tail.clone(),
            usage,
            finished_unix_ms: Some(crate::node::unix_now_ms()),
        };
        let outcome = self.judge(&cmd, &ended, tries, &prices, head == Some(base), &log_path);
        if report.commit.as_deref() == Some(base.to_string().as_str()) {
            report.commit = None;
        }
        Some((outcome, report))
    }

    /// The worktree (resumed from work in progress, if any), the story
    /// file the agent reads, and the run's log: what a run needs before
    /// its agent starts. An error says which failed.
    async fn prepare(&self) -> Result<Prepared, String> {
        let (root, story, creds) = (self.root.clone(), self.story.clone(), self.git_creds.clone());
        let resume_token = self.ctx.resume.as_ref().map(|(_, t)| t.0);
        let prepared =
            tokio::task::spawn_blocking(move || git::prepare_worktree(&root, story.as_str(), &creds, resume_token))
                .await;
        let (worktree, base, from_wip) = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("worktree: {e}")),
            Err(e) => return Err(format!("worktree: {e}")),
        };
        let default_branch = git2::Repository::open(&self.root)
            .ok()
            .and_then(|r| crate::land::default_branch(&r, None).ok())
            .unwrap_or_default();
        let story_file = story_file_path(&self.root, &self.story);
        let written = story_file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&story_file, self.story_file(from_wip)));
        if let Err(e) = written {
            return Err(format!("story file {}: {e}", story_file.display()));
        }
        let log_path = runlog::log_path(&self.root, self.story.as_str(), self.stage.as_str(), self.token.0);
        let log = match runlog::CappedLog::create(log_path.clone(), runlog::LOG_CAP_BYTES) {
            Ok(l) => Arc::new(Mutex::new(l)),
            Err(e) => return Err(format!("log file {}: {e}", log_path.display())),
        };
        Ok(Prepared { worktree, base, from_wip, default_branch, story_file, log_path, log })
    }

    /// How the run ended, from the agent's exit and its own account.
    fn judge(
        &self,
        cmd: &crate::project::AgentCommand,
        ended: &Ended,
        tries: u32,
        prices: &BTreeMap<String, crate::project::Price>,
        nothing_committed: bool,
        log_path: &std::path::Path,
    ) -> RunOutcome {
        // The agent's own account, when it gives one, decides first: a run
        // whose tool calls were all denied exits 0 (agent_report.rs).
        let Ended { status, stream, .. } = ended;
        let said = stream.report(cmd.model.as_deref(), prices);
        let no_result = || match cmd.agent {
            crate::project::AgentKind::Command => String::new(),
            kind => format!(" before reporting a result: {} crashed or was killed", kind.as_str()),
        };
        match status {
            // The API, not the story: after the retries above (a refused
            // key is not retried), this node steps back and the attempt is
            // not counted (RunOutcome::Unavailable).
            _ if said.as_ref().is_some_and(|r| r.retryable() || r.auth_failed()) => {
                let why = said.as_ref().and_then(|r| r.failure()).unwrap_or_default();
                let tries = if tries > 1 { format!(" ({tries} tries)") } else { String::new() };
                RunOutcome::Unavailable { reason: format!("{why}{tries}") }
            }
            _ if said.as_ref().and_then(|r| r.failure()).is_some() => {
                let why = said.as_ref().and_then(|r| r.failure()).unwrap_or_default();
                RunOutcome::Failed { reason: why }
            }
            Ok(s) if s.success() => {
                if cmd.require_commit(self.stage) && nothing_committed {
                    let mut reason = "no commits: the agent exited 0 without committing".to_owned();
                    if let Some(last) = stream.git_failures().last() {
                        reason.push_str("; its last failed git command: ");
                        reason.push_str(last);
                    }
                    RunOutcome::Failed { reason }
                } else {
                    RunOutcome::Succeeded
                }
            }
            Ok(s) => RunOutcome::Failed {
                reason: format!("agent exited with {s}{}; see {}", no_result(), log_path.display()),
            },
            Err(e) => RunOutcome::Failed { reason: e.to_string() },
        }
    }

    /// One start of the agent, to its exit; `None` when stopped (it is
    /// killed, and the engine needs no answer).
    #[allow(clippy::too_many_arguments)]
    async fn run_once(
        &self,
        invocation: &crate::agent_profile::Invocation,
        cmd: &crate::project::AgentCommand,
        worktree: &std::path::Path,
        story_file: &std::path::Path,
        default_branch: &str,
        log: &Arc<Mutex<runlog::CappedLog>>,
        stop: &mut oneshot::Receiver<()>,
    ) -> Option<Ended> {
        let mut command = Command::new(&invocation.program);
        // No credential of ours reaches the agent: it runs code we do not
        // control. (Our own secrets live in files outside the worktree;
        // these are the variables that could carry one.)
        for var in SECRET_VARS.iter().chain(&crate::gitauth::SECRET_VARS) {
            command.env_remove(var);
        }
        let identity = {
            // Read here, dropped before the next await (libgit2 handles are not Send).
            let config = crate::git_identity::worktree_config(worktree);
            crate::git_identity::identity_vars(config.as_ref(), |v| std::env::var_os(v), &self.author)
        };
        command.envs(identity);
        let spawned = command
            .args(&invocation.args)
            .current_dir(worktree)
            .env("HUSKIES_STORY_ID", self.story.as_str())
            .env("HUSKIES_STORY_TITLE", &self.title)
            .env("HUSKIES_STORY_FILE", story_file)
            .env("HUSKIES_STAGE", self.stage.as_str())
            .env("HUSKIES_TOKEN", self.token.0.to_string())
            .env("HUSKIES_ATTEMPT", self.attempt.to_string())
            .env("HUSKIES_NODE", self.node.as_str())
            .env("HUSKIES_WORKTREE", worktree)
            .env("HUSKIES_DEFAULT_BRANCH", default_branch)
            .env("HUSKIES_LAST_FAILURE", self.ctx.last_failure.as_deref().unwrap_or(""))
            .env("HUSKIES_RESUME", if self.ctx.resume.is_some() { "1" } else { "0" })
            .env("HUSKIES_PREVIOUS_NODE", self.ctx.resume.as_ref().map_or(String::new(), |(n, _)| n.to_string()))
            .env("HUSKIES_PREVIOUS_TOKEN", self.ctx.resume.as_ref().map_or(String::new(), |(_, t)| t.0.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let failed = Err(std::io::Error::new(e.kind(), format!("cannot start {:?}: {e}", invocation.program)));
                return Some(Ended { status: failed, stream: Default::default(), stderr_tail: String::new() });
            }
        };
        let tail = Arc::new(Mutex::new(runlog::Tail::new(huskies_engine::runs::MAX_STDERR_TAIL)));
        let lines = Arc::new(Mutex::new(runlog::Lines::default()));
        let key = (self.story.clone(), self.token);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), lines.clone());
        // Off the list however this start ends (stopped included).
        struct Unlist<'a>(&'a LiveRuns, (StoryId, Token));
        impl Drop for Unlist<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
            }
        }
        let _unlist = Unlist(&self.live, key);
        let pumps = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(runlog::pump(o, log.clone(), Some(runlog::Sink::Lines(lines.clone()))))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(runlog::pump(e, log.clone(), Some(runlog::Sink::Tail(tail.clone()))))),
        ];
        tracing::info!(story = %self.story, stage = %self.stage, token = %self.token, agent = cmd.agent.as_str(), "agent started");
        let wip_every = cmd.wip_push_interval_ms.map(Duration::from_millis);
        let mut wip = tokio::time::interval(wip_every.unwrap_or(Duration::from_secs(3600)));
        wip.tick().await;
        let status = loop {
            tokio::select! {
                status = child.wait() => {
                    break status.map_err(|e| std::io::Error::new(e.kind(), format!("waiting for agent: {e}")));
                }
                _ = wip.tick(), if wip_every.is_some() => {
                    // Progress a reclaim can resume from, should we die.
                    let (root, story, creds, token) = (self.root.clone(), self.story.clone(), self.git_creds.clone(), self.token.0);
                    match tokio::task::spawn_blocking(move || git::push_wip(&root, story.as_str(), token, &creds)).await {
                        Ok(Ok(true)) => tracing::info!(story = %self.story, token = %self.token, "pushed work in progress"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(story = %self.story, error = %e, "work-in-progress push failed"),
                        Err(e) => tracing::warn!(story = %self.story, error = %e, "work-in-progress push failed"),
                    }
                }
                _ = &mut *stop => {
                    if let Some(pid) = child.id() {
                        // SAFETY: kill(2) with a negative pid signals the
                        // process group we created; no memory is involved.
                        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
                    }
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    tracing::info!(story = %self.story, token = %self.token, "agent stopped");
                    return None;
                }
            }
        };
        // The pipes close when the agent (and what it left running) exits.
        for p in pumps.into_iter().flatten() {
            let _ = tokio::time::timeout(STOP_GRACE, p).await;
        }
        let stream = lines.lock().map(|mut l| std::mem::take(&mut l.stream)).unwrap_or_default();
        let stderr_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
        Some(Ended { status, stream, stderr_tail })
    }
}

/// How one start of an agent ended.
/// What `AgentRun::prepare` made ready.
struct Prepared {
    worktree: PathBuf,
    /// The commit the worktree started from.
    base: git2::Oid,
    /// Resumed from an earlier claim's work in progress.
    from_wip: bool,
    default_branch: String,
    story_file: PathBuf,
    log_path: PathBuf,
    log: Arc<Mutex<runlog::CappedLog>>,
}

struct Ended {
    status: std::io::Result<std::process::ExitStatus>,
    stream: crate::agent_stream::AgentStream,
    stderr_tail: String,
}

/// The placeholders of an agent's args.
struct Vars<'a> {
    run: &'a AgentRun,
    story_file: &'a std::path::Path,
    /// The story file's text.
    story: &'a str,
}

impl Vars<'_> {
    /// Replaces `{id}`, `{title}`, `{stage}`, `{attempt}`, `{story_file}`,
    /// `{story}` (the story file's text) and `{body}` in one argument, in
    /// one pass: text that comes in through a placeholder is never taken
    /// for another. No shell ever sees the result.
    fn expand(&self, arg: &str) -> String {
        let r = self.run;
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let close = after.find('}').map(|c| c + 1);
            let value = close.and_then(|c| match &after[..c] {
                "{id}" => Some(r.story.as_str().to_owned()),
                "{title}" => Some(r.title.clone()),
                "{stage}" => Some(r.stage.as_str().to_owned()),
                "{attempt}" => Some(r.attempt.to_string()),
                "{story_file}" => Some(self.story_file.to_string_lossy().into_owned()),
                "{story}" => Some(self.story.to_owned()),
                "{body}" => Some(r.ctx.body.clone()),
                _ => None,
            });
            match (value, close) {
                (Some(v), Some(c)) => {
                    out.push_str(&v);
                    rest = &after[c..];
                }
                _ => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_in_one_pass() {
        let run = AgentRun {
            root: PathBuf::from("/p"),
            node: NodeId::new("agent-1").unwrap(),
            story: StoryId::new("s1").unwrap(),
            title: "Title with {id} in it".into(),
            stage: Stage::Current,
            token: Token(7),
            attempt: 2,
            git_creds: Arc::new(GitCredentials::default()),
            ctx: RunContext { body: "body mentions {title} and {".into(), last_failure: None, resume: None },
            author: GitAuthor::for_node("agent-1"),
            project: Default::default(),
            live: Default::default(),
        };
        let vars = Vars { run: &run, story_file: std::path::Path::new("/p/.huskies/stories/s1.md"), story: "STORY" };
        assert_eq!(vars.expand("{id}/{stage}/{attempt}"), "s1/current/2");
        assert_eq!(vars.expand("{title}"), "Title with {id} in it", "no second pass");
        assert_eq!(vars.expand("x {body} y"), "x body mentions {title} and { y");
        assert_eq!(vars.expand("{story_file} {story} {unknown} {"), "/p/.huskies/stories/s1.md STORY {unknown} {");
    }
}
