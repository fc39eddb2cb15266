//! The node task: owns the engine, feeds it inputs, carries out its outputs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huskies_engine::{
    ClusterSettings, Command, CommandError, CommandId, Config, ConnId, Engine, Event, Input, Millis, NodeId, Output,
    PersistKind, PersistSeq, Reply,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::{Metrics, RunEnd};
use crate::project::ProjectConfig;
use crate::runner::Runner;
use crate::status::{Board, BoardNode, NodeStatus, RunStatus, Status, StoryStatus};
use crate::storage::Storage;
use crate::ws;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    pub label: String,
    pub listen: SocketAddr,
    /// What peers dial to reach us (`ws://host:port/crdt-sync`).
    pub advertise: String,
    pub rendezvous: Option<String>,
    pub data_dir: PathBuf,
    pub project_root: PathBuf,
    /// This node's key and certificate, and the CA (plus the CA secret on
    /// the server).
    pub credentials: huskies_engine::Credentials,
    /// The rendezvous runs no agents.
    pub is_server: bool,
    pub project: ProjectConfig,
    /// Roots for `wss://` dials: the system's plus `--ca-cert`.
    pub tls_client: Arc<rustls::ClientConfig>,
}

/// Messages to the node task.
pub enum NodeMsg {
    Input(Input),
    Command(Command, oneshot::Sender<Result<Reply, CommandError>>),
    Status(oneshot::Sender<Status>),
    /// What the dashboard shows: stories, nodes, links, counters.
    Board(oneshot::Sender<Board>),
    /// The merge queue.
    Queue(oneshot::Sender<crate::status::Queue>),
    /// The metrics in Prometheus text format, gauges set as of now.
    Metrics(oneshot::Sender<String>),
    /// One story in full: body and run history.
    Story(huskies_engine::StoryId, oneshot::Sender<Option<crate::status::StoryDetail>>),
    /// An accepted websocket wants an id and an outbox.
    Accept {
        out: mpsc::Sender<Vec<u8>>,
        reply: oneshot::Sender<ConnId>,
    },
    /// A dial we were asked for succeeded.
    Connected {
        conn: ConnId,
        out: mpsc::Sender<Vec<u8>>,
    },
    Shutdown,
}

/// A cloneable handle to the node task.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) tx: mpsc::Sender<NodeMsg>,
    /// Bumped after every input that produced an engine event: watchers
    /// (the dashboard's feed) wake on it instead of polling.
    pub changes: watch::Receiver<u64>,
}

impl NodeHandle {
    pub async fn command(&self, command: Command) -> Option<Result<Reply, CommandError>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Command(command, tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn story(&self, id: huskies_engine::StoryId) -> Option<Option<crate::status::StoryDetail>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Story(id, tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn queue(&self) -> Option<crate::status::Queue> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Queue(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn board(&self) -> Option<Board> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Board(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn metrics(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(NodeMsg::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn shutdown(&self) {
        let _ = self.tx.send(NodeMsg::Shutdown).await;
    }
}

/// Why a node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Acknowledging what cannot be stored would break the one promise
    /// storage makes, so the node stops instead.
    #[error("cannot persist the document in {dir}: {source}")]
    Storage { dir: PathBuf, source: std::io::Error },
    #[error("cannot start the engine thread's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Ends when the node task does: `Ok` after a shutdown, the error that
/// stopped it otherwise.
pub type NodeTask = tokio::task::JoinHandle<Result<(), NodeError>>;

/// Node keys revoked in the document, shared with the HTTP layer so a
/// revoked node is refused at the websocket upgrade.
pub type Revoked = Arc<std::sync::RwLock<std::collections::BTreeSet<(NodeId, [u8; 32])>>>;

pub fn engine_config(opts: &NodeOptions) -> Config {
    let p = &opts.project;
    let mut c = Config {
        credentials: Some(opts.credentials.clone()),
        address: Some(opts.advertise.clone()),
        label: opts.label.clone(),
        rendezvous: opts.rendezvous.clone(),
        capacity: if opts.is_server { 0 } else { p.capacity },
        stages: if opts.is_server { Vec::new() } else { p.stages() },
        land_batch: p.merge_config().batch,
        max_returns: p.merge_config().max_returns.unwrap_or(Config::default().max_returns),
        max_mesh_peers: if opts.is_server { 0 } else { p.max_mesh_peers },
        claim_timeout_ms: p.claim_timeout_ms,
        heartbeat_interval_ms: (p.claim_timeout_ms / 6).max(100),
        scan_interval_ms: p.scan_interval_ms,
        claim_stagger_ms: p.claim_stagger_ms.unwrap_or((p.scan_interval_ms * 2).min(p.claim_timeout_ms / 2)),
        ..Config::default()
    };
    c.stage_limits = p
        .agents
        .iter()
        .map(|(stage, a)| {
            (*stage, huskies_engine::StageLimits { max_attempts: a.max_attempts, run_timeout_ms: a.run_timeout_ms })
        })
        .collect();
    if let Some(m) = &p.merge {
        // A landing runs every gate, maybe on several tips (the branch
        // moved) and waits for a batch ahead: the merge stage's deadline
        // must outlast that, or a slow but healthy landing is failed.
        let gates = m.gates.len().max(1) as u64;
        let landing_ms = m.gate_timeout_ms.saturating_mul(gates).saturating_mul(6);
        let limits = c.stage_limits.entry(huskies_engine::Stage::Merge).or_default();
        let agent_ms = limits.run_timeout_ms.unwrap_or(c.run_timeout_ms);
        limits.run_timeout_ms = Some(agent_ms.max(landing_ms));
    }
    if let Some(ms) = p.retry_backoff_ms {
        c.retry_backoff_ms = ms;
    }
    c.daily_budget_micro_usd = p.daily_budget_micro_usd;
    c.max_story_cost_micro_usd = p.max_cost_micro_usd;
    if let Some(n) = p.epoch_after_changes {
        c.epoch_after_changes = n;
    }
    if let Some(ms) = p.sync_interval_ms {
        c.sync_interval_ms = ms;
        c.mesh_sync_interval_ms = c.mesh_sync_interval_ms.max(ms);
    }
    c.dial_backoff_max_ms = c.dial_backoff_max_ms.min(p.claim_timeout_ms / 2);
    c
}

struct NodeLoop {
    engine: Engine,
    epoch: Instant,
    /// Writes and fsyncs persists on a thread of its own, in order, and
    /// confirms each on `persisted`; the engine keeps handling inputs
    /// meanwhile and releases what a persist covers once it is confirmed.
    writer: std::sync::mpsc::SyncSender<(PersistSeq, PersistKind, Vec<u8>)>,
    /// Bytes of the document on disk, as the writer last left them.
    disk_bytes: Arc<std::sync::atomic::AtomicU64>,
    runner: Runner,
    conns: BTreeMap<ConnId, mpsc::Sender<Vec<u8>>>,
    next_inbound: u64,
    next_command: u64,
    pending_replies: BTreeMap<CommandId, oneshot::Sender<Result<Reply, CommandError>>>,
    metrics: Arc<Metrics>,
    /// The last landings seen, for the queue view.
    landed: crate::queue::LandedLog,
    /// Set when an input produced an event; `changes` is bumped once the
    /// input is done (also when the engine's index changed).
    changed: bool,
    changes: watch::Sender<u64>,
    /// Set when storage failed: the node stops.
    failed: Option<NodeError>,
    /// Inputs raised while executing outputs (a peer dropped for being
    /// slow), fed in once the current batch is done.
    deferred: Vec<Input>,
    tx: mpsc::Sender<NodeMsg>,
    dialer: Arc<ws::Dialer>,
    revoked: Revoked,
    /// The main runtime: dials and agent runs live there, not on the
    /// engine's own thread.
    rt: tokio::runtime::Handle,
    /// As started, with the project as last reloaded.
    opts: NodeOptions,
    /// The cluster settings this node's own project.toml asks for.
    local_settings: ClusterSettings,
    /// The last wall-clock minute told to the engine.
    wall_minute: u64,
}

/// Run and push results waiting for the engine.
const INPUT_QUEUE: usize = 1_024;

/// Persists queued for the writer before the engine thread waits.
const WRITE_QUEUE: usize = 64;

type WriteJob = (PersistSeq, PersistKind, Vec<u8>);

/// The storage writer: a thread that applies persists in order, fsyncs,
/// and confirms each (or reports the first failure and stops).
fn start_writer(
    mut storage: Storage,
    disk_bytes: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<(std::sync::mpsc::SyncSender<WriteJob>, mpsc::UnboundedReceiver<std::io::Result<PersistSeq>>)> {
    let (jobs_tx, jobs) = std::sync::mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
    // The writer never waits to report: if it could, a node thread blocked
    // on a full job queue and a writer blocked on a full result queue
    // would wait for each other. Results cannot pile up past what the
    // bounded job queue lets through while the node is not reading.
    let (done_tx, done) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("huskies-storage".into()).spawn(move || {
        let mut last = PersistSeq(0);
        while let Ok(first) = jobs.recv() {
            // Group commit: everything queued behind the first write goes
            // down with it, one fsync for the lot, one confirmation (of
            // the last, which covers all before it).
            let group: Vec<WriteJob> = std::iter::once(first).chain(jobs.try_iter().take(WRITE_QUEUE)).collect();
            for (seq, _, _) in &group {
                assert!(*seq > last, "persists arrive in order: {} after {}", seq.0, last.0);
                last = *seq;
            }
            let result =
                storage.persist_all(group.iter().map(|(_, kind, bytes)| (*kind, bytes.as_slice()))).map(|()| last);
            disk_bytes.store(storage.bytes_on_disk(), std::sync::atomic::Ordering::Relaxed);
            let failed = result.is_err();
            if done_tx.send(result).is_err() || failed {
                // The node is gone, or storage failed: nothing after this
                // write may be applied over it.
                break;
            }
        }
    })?;
    Ok((jobs_tx, done))
}

/// Starts the node task on a thread of its own; returns its handle and a
/// task that ends with it. Must be called inside a tokio runtime.
///
/// The engine gets its own thread because Automerge work on a large sync
/// message takes milliseconds to seconds of CPU: on the shared runtime it
/// stalled `/healthz` and the socket pumps of every other peer.
pub fn run_node(opts: NodeOptions, revoked: Revoked) -> std::io::Result<(NodeHandle, NodeTask)> {
    if opts.credentials.is_dev() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "refusing dev credentials (their CA secret is public)",
        ));
    }
    let (storage, bytes) = Storage::open(&opts.data_dir)?;
    let disk_bytes = Arc::new(std::sync::atomic::AtomicU64::new(storage.bytes_on_disk()));
    let (writer, persisted) = start_writer(storage, disk_bytes.clone())?;
    let config = engine_config(&opts);
    if let Err(e) = config.validate() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()));
    }
    let seed = u64::from_str_radix(&crate::auth::random_hex(8)?, 16).unwrap_or(0);
    #[allow(clippy::disallowed_methods)] // the driver owns the clock; the engine only sees Millis
    let epoch = Instant::now();
    let max_message_bytes = config.max_message_bytes;
    let config_copy = config.clone();
    let engine = Engine::new(config, opts.node_id.clone(), seed, Millis(0));
    let (tx, rx) = mpsc::channel(4_096);
    let (changes_tx, changes) = watch::channel(0u64);
    // Run and push results: one per run, so a few hundred at most queue.
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let project = Arc::new(Mutex::new(opts.project.clone()));
    let rt = tokio::runtime::Handle::current();
    let runner = Runner::new(opts.project_root.clone(), opts.node_id.clone(), project.clone(), input_tx, rt.clone());
    let mut node = NodeLoop {
        engine,
        epoch,
        writer,
        disk_bytes,
        runner,
        conns: BTreeMap::new(),
        next_inbound: 0,
        next_command: 0,
        pending_replies: BTreeMap::new(),
        metrics: Arc::new(Metrics::new()),
        landed: Default::default(),
        changed: false,
        changes: changes_tx,
        failed: None,
        deferred: Vec::new(),
        tx: tx.clone(),
        dialer: Arc::new(ws::Dialer {
            identity: (opts.node_id.to_string(), opts.credentials.cert.to_hex()),
            max_message_bytes,
            tls: opts.tls_client.clone(),
        }),
        revoked,
        rt,
        local_settings: ClusterSettings::of(&config_copy),
        wall_minute: 0,
        opts: opts.clone(),
    };
    node.input(Input::StorageLoaded { bytes });
    node.tell_wall_clock();
    node.share_revocations();
    if opts.is_server {
        // The server's project.toml sets what every node adopts.
        node.internal_command(Command::SetClusterSettings { settings: node.local_settings.clone() });
    }
    let root = opts.project_root.clone();
    let (done_tx, done_rx) = oneshot::channel::<Result<(), NodeError>>();
    std::thread::Builder::new().name("huskies-engine".into()).spawn(move || {
        let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(local) => local.block_on(node.run(rx, input_rx, persisted, project, root)),
            Err(e) => Err(NodeError::Runtime(e)),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "node stopped");
        }
        let _ = done_tx.send(result);
    })?;
    let task = tokio::spawn(async move { done_rx.await.unwrap_or(Ok(())) });
    Ok((NodeHandle { tx, changes }, task))
}

impl NodeLoop {
    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<NodeMsg>,
        mut inputs: mpsc::Receiver<Input>,
        mut persisted: mpsc::UnboundedReceiver<std::io::Result<PersistSeq>>,
        project: Arc<Mutex<ProjectConfig>>,
        project_root: PathBuf,
    ) -> Result<(), NodeError> {
        let config_path = ProjectConfig::path(&project_root);
        // Config changes arrive from a file watcher; where one cannot be
        // set up (inotify limits), a poll every 2 s stands in.
        // One pending notice is enough: the reload reads the file once.
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let watcher = watch_config(&config_path, changed_tx);
        let polling = watcher.is_none();
        let mut config_mtime = std::fs::metadata(&config_path).and_then(|m| m.modified()).ok();
        let mut poll = tokio::time::interval(Duration::from_secs(2));
        loop {
            if let Some(e) = self.failed.take() {
                drop(watcher);
                return Err(e);
            }
            let deadline = self.engine.poll_timeout().map(|t| self.epoch + Duration::from_millis(t.0));
            let sleep = tokio::time::sleep_until(
                deadline
                    .map(tokio::time::Instant::from_std)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(NodeMsg::Shutdown) => {
                        // A signed last beat to every peer: our stories
                        // are reclaimed now, not after the claim timeout.
                        self.internal_command(Command::Leave);
                        // The goodbye waits for its persist, like any
                        // output: see it written, then go.
                        while self.engine.awaiting_persist() && self.failed.is_none() {
                            match tokio::time::timeout(Duration::from_secs(2), persisted.recv()).await {
                                Ok(Some(done)) => self.handle_persisted(done),
                                _ => break,
                            }
                        }
                        break;
                    }
                    None => break,
                    Some(msg) => self.handle_msg(msg),
                },
                Some(input) = inputs.recv() => self.input(input),
                Some(done) = persisted.recv() => self.handle_persisted(done),
                _ = sleep => {
                    self.tell_wall_clock();
                    self.input(Input::Timeout);
                }
                Some(()) = changed.recv() => {
                    // Editors write in steps (truncate, write, rename): let
                    // them finish, then read once.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while changed.try_recv().is_ok() {}
                    self.reload(&project_root, &project);
                }
                _ = poll.tick(), if polling => {
                    let mtime = std::fs::metadata(&config_path).and_then(|m| m.modified()).ok();
                    if mtime != config_mtime {
                        config_mtime = mtime;
                        self.reload(&project_root, &project);
                    }
                }
            }
        }
        drop(watcher);
        tracing::info!("node stopping");
        Ok(())
    }

    /// `project.toml` changed: agent commands and stages take effect at
    /// once; cluster settings are written by the server, and compared with
    /// the cluster's at an agent.
    fn reload(&mut self, project_root: &std::path::Path, project: &Arc<Mutex<ProjectConfig>>) {
        let p = match ProjectConfig::load(project_root) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "config change ignored");
                return;
            }
        };
        tracing::info!(path = %ProjectConfig::path(project_root).display(), "reloaded project.toml");
        let opts = NodeOptions { project: p.clone(), ..self.opts.clone() };
        self.local_settings = ClusterSettings::of(&engine_config(&opts));
        *project.lock().expect("project lock") = p.clone();
        self.opts = opts;
        if self.opts.is_server {
            self.internal_command(Command::SetClusterSettings { settings: self.local_settings.clone() });
        } else {
            self.internal_command(Command::SetStages { stages: p.stages() });
            self.compare_settings();
        }
    }

    /// The wall clock, for the cost ledger's day: once a minute is enough.
    fn tell_wall_clock(&mut self) {
        let unix_ms = unix_now_ms();
        if unix_ms / 60_000 != self.wall_minute {
            self.wall_minute = unix_ms / 60_000;
            self.input(Input::WallClock { unix_ms });
        }
    }

    /// A command of the node's own (not from the API); its reply is logged.
    fn internal_command(&mut self, command: Command) {
        self.next_command += 1;
        let id = CommandId(self.next_command);
        let (tx, mut rx) = oneshot::channel();
        self.pending_replies.insert(id, tx);
        self.input(Input::Command { id, command });
        // The engine answers within `handle`, so the reply is here now.
        match rx.try_recv() {
            Ok(Ok(reply)) => tracing::debug!(?reply, "internal command"),
            Ok(Err(e)) => tracing::error!(error = %e, "internal command refused"),
            Err(_) => {}
        }
    }

    /// Warns when this node's own file disagrees with the cluster's settings.
    fn compare_settings(&self) {
        let Some(cluster) = self.engine.cluster_settings() else { return };
        let diff = self.local_settings.differences(cluster);
        if !diff.is_empty() {
            tracing::warn!(
                revision = cluster.revision,
                differences = %diff.join(", "),
                "project.toml disagrees with the cluster settings the server set (local vs cluster); using the cluster's"
            );
        }
    }

    fn handle_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Input(Input::PeerClosed { conn }) => {
                // Only for conns we still hold (a hang-up needs no close).
                if self.conns.remove(&conn).is_some() || conn.is_outbound() {
                    self.input(Input::PeerClosed { conn });
                }
            }
            NodeMsg::Input(input) => self.input(input),
            NodeMsg::Command(command, reply) => {
                self.next_command += 1;
                let id = CommandId(self.next_command);
                self.pending_replies.insert(id, reply);
                self.input(Input::Command { id, command });
            }
            NodeMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            NodeMsg::Board(reply) => {
                let _ = reply.send(self.board());
            }
            NodeMsg::Queue(reply) => {
                let _ = reply.send(crate::queue::queue(&mut self.engine, &self.landed));
            }
            NodeMsg::Metrics(reply) => {
                let changes = self.engine.change_count();
                let stories = self.engine.stories().map(|(_, v)| (v.state.stage, v.state.failed, v.state.removed));
                self.metrics.set_state(
                    stories,
                    self.engine.peer_count(),
                    self.disk_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    changes,
                );
                self.metrics.set_epoch(self.engine.epoch());
                let costs = crate::costs::Costs::of(&mut self.engine);
                let _ = reply.send(self.metrics.encode_with(&costs));
            }
            NodeMsg::Story(id, reply) => {
                let _ = reply.send(self.story_detail(&id));
            }
            NodeMsg::Accept { out, reply } => {
                self.next_inbound += 1;
                let conn = ConnId(self.next_inbound);
                self.conns.insert(conn, out);
                if reply.send(conn).is_ok() {
                    self.input(Input::PeerConnected { conn });
                } else {
                    self.conns.remove(&conn);
                }
            }
            NodeMsg::Connected { conn, out } => {
                self.conns.insert(conn, out);
                self.input(Input::PeerConnected { conn });
            }
            NodeMsg::Shutdown => {}
        }
    }

    fn input(&mut self, input: Input) {
        if self.failed.is_some() {
            // Storage failed: nothing more is fed or carried out.
            return;
        }
        let version = self.engine.index_version();
        let mut next = Some(input);
        while let Some(input) = next.take().or_else(|| self.deferred.pop()) {
            if let Input::PeerMessage { bytes, .. } = &input {
                self.metrics.sync_received(bytes.len());
            }
            let now = self.now();
            self.engine.handle(now, input);
            while let Some(out) = self.engine.poll_output() {
                if self.failed.is_some() {
                    // Outputs after a failed write may reveal state that
                    // was never stored: none of them goes out.
                    break;
                }
                self.execute(out);
            }
        }
        // Events, and merges that change what stories or nodes show (a
        // claim by another node raises no event here).
        if std::mem::take(&mut self.changed) | (self.engine.index_version() != version) {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn execute(&mut self, out: Output) {
        match out {
            Output::Persist { seq, kind, bytes } => {
                // Blocks only when 64 writes are queued: back-pressure.
                if self.writer.send((seq, kind, bytes)).is_err() {
                    let source = std::io::Error::other("the storage writer stopped");
                    self.failed = Some(NodeError::Storage { dir: self.opts.data_dir.clone(), source });
                }
            }
            Output::Send { conn, bytes } => {
                let len = bytes.len();
                if let Some(out) = self.conns.get(&conn)
                    && out.try_send(bytes).is_err()
                {
                    tracing::warn!(?conn, "peer too slow or gone; disconnecting");
                    // Dropping the sender closes the socket; the engine
                    // hears of it right after this batch of outputs.
                    self.conns.remove(&conn);
                    self.deferred.push(Input::PeerClosed { conn });
                } else {
                    self.metrics.sync_sent(len);
                }
            }
            Output::Dial { conn, address } => {
                self.rt.spawn(ws::dial(self.dialer.clone(), address, conn, self.tx.clone()));
            }
            Output::HangUp { conn } => {
                self.conns.remove(&conn);
            }
            Output::StartRun { story, title, stage, token, attempt, body, last_failure, resume } => {
                #[allow(clippy::disallowed_methods)] // run durations are wall time
                self.metrics.run_started(&story, token, Instant::now());
                let ctx = crate::runner::RunContext { body, last_failure, resume };
                self.runner.start(story, title, stage, token, attempt, ctx);
            }
            Output::StopRun { story, token } => {
                #[allow(clippy::disallowed_methods)]
                self.metrics.run_ended(&story, token, RunEnd::Stopped, Instant::now());
                self.runner.stop(&story, token);
            }
            Output::Push { story, token, stage } => {
                self.runner.finished(&story, token);
                self.runner.push(story, token, stage);
            }
            Output::InspectWorktree { story, token } => self.runner.inspect(story, token),
            Output::Land { batch, stories, ahead, .. } => self.runner.land(batch, ahead, stories),
            Output::CancelLand { batch } => self.runner.cancel_land(batch),
            Output::PruneWorktree { story } => self.runner.prune(story),
            Output::Reply { id, result } => {
                if let Some(tx) = self.pending_replies.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Output::Event(e) => self.observe(e),
        }
    }

    /// The writer made a persist durable (release what it covers), or
    /// failed: then the node stops, and the binary reports the error and
    /// exits non-zero. Nothing a failed write covers ever goes out.
    fn handle_persisted(&mut self, done: std::io::Result<PersistSeq>) {
        match done {
            Ok(seq) => self.input(Input::Persisted { seq }),
            Err(source) => {
                if self.failed.is_none() {
                    self.failed = Some(NodeError::Storage { dir: self.opts.data_dir.clone(), source });
                }
            }
        }
    }

    fn observe(&mut self, e: Event) {
        self.changed = true;
        #[allow(clippy::disallowed_methods)] // run durations are wall time
        self.metrics.observe(&e, Instant::now());
        #[allow(clippy::disallowed_methods)] // when a landing was seen is wall time
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.landed.observe(&self.engine, &e, unix_ms);
        match &e {
            Event::NodeRevoked { .. } => self.share_revocations(),
            Event::SettingsAdopted { .. } if !self.opts.is_server => self.compare_settings(),
            _ => {}
        }
        match &e {
            Event::PeerRejected { .. }
            | Event::StorageCorrupt { .. }
            | Event::RunFailed { .. }
            | Event::SettingsRejected { .. }
            | Event::ValueRefused { .. }
            | Event::EpochStarted { gap: true, .. }
            | Event::Fenced { .. } => {
                tracing::warn!(event = ?e)
            }
            Event::PeerUp { .. } | Event::PeerDown { .. } | Event::StageChanged { .. } => tracing::debug!(event = ?e),
            _ => tracing::info!(event = ?e),
        }
    }

    fn share_revocations(&self) {
        if let Ok(mut r) = self.revoked.write() {
            r.clone_from(&self.engine.revoked_keys());
        }
    }

    fn story_detail(&mut self, id: &huskies_engine::StoryId) -> Option<crate::status::StoryDetail> {
        let view = self.engine.stories().find(|(s, _)| *s == id).map(|(_, v)| v.clone())?;
        Some(crate::status::StoryDetail {
            story: StoryStatus::of(id, &view),
            body: self.engine.story_body(id),
            runs: self.engine.story_runs(id),
        })
    }

    fn board(&mut self) -> Board {
        let now = self.now();
        let me = self.engine.node_id().clone();
        let alive = self.engine.alive_nodes();
        let revoked = self.engine.revoked_keys();
        let connected = self.engine.connected_nodes();
        let heard: BTreeMap<NodeId, (Millis, u32)> =
            self.engine.heartbeats().map(|(n, at, free)| (n.clone(), (at, free))).collect();
        let mut holding: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, v) in self.engine.stories() {
            if let Some(h) = &v.state.holder {
                *holding.entry(h.as_str()).or_default() += 1;
            }
        }
        let nodes = self
            .engine
            .nodes()
            .map(|(id, r)| {
                let is_self = *id == me;
                let beat = heard.get(id);
                BoardNode {
                    id: id.to_string(),
                    label: r.label.clone(),
                    address: r.address.clone(),
                    capacity: r.capacity,
                    alive: alive.contains(id),
                    revoked: r.cert.is_some_and(|c| revoked.contains(&(id.clone(), c.key))),
                    holding: holding.get(id.as_str()).copied().unwrap_or(0),
                    free_slots: if is_self {
                        Some(r.capacity.saturating_sub(self.engine.runs().count() as u32))
                    } else {
                        beat.map(|(_, free)| *free)
                    },
                    heartbeat_age_ms: if is_self { Some(0) } else { beat.map(|(at, _)| now.0.saturating_sub(at.0)) },
                    linked: connected.contains(id),
                    is_self,
                }
            })
            .collect();
        let costs = crate::costs::Costs::of(&mut self.engine);
        Board {
            node: me.to_string(),
            is_server: self.opts.is_server,
            stages: huskies_engine::Stage::ALL.iter().map(|s| s.to_string()).collect(),
            stories: self.board_stories(&costs),
            nodes,
            connected: connected.iter().map(|n| n.to_string()).collect(),
            counters: self.metrics.counters(),
            queue: crate::queue::queue(&mut self.engine, &self.landed),
            costs,
            runs: self.run_statuses(),
            refused: crate::status::Refused::of(&self.engine),
        }
    }

    /// The board's stories with what each cost (its kept run records;
    /// not read for archived stories, which the board folds away).
    fn board_stories(&mut self, costs: &crate::costs::Costs) -> Vec<StoryStatus> {
        let mut stories: Vec<StoryStatus> = self.engine.stories().map(|(id, v)| StoryStatus::of(id, v)).collect();
        // Run records are read only once some agent reported a cost: a
        // cluster of plain commands pays nothing for the column.
        if costs.lines.is_empty() {
            return stories;
        }
        let skip = [huskies_engine::Stage::Archived.as_str(), huskies_engine::Stage::Backlog.as_str()];
        for s in stories.iter_mut().filter(|s| !skip.contains(&s.stage.as_str())) {
            if let Ok(id) = huskies_engine::StoryId::new(&s.id) {
                s.cost_micro_usd = self.engine.story_cost_micro_usd(&id);
            }
        }
        stories
    }

    /// Our runs, with what each agent is doing now.
    fn run_statuses(&self) -> Vec<RunStatus> {
        let progress: BTreeMap<(huskies_engine::StoryId, huskies_engine::Token), crate::agent_stream::Progress> =
            self.runner.progress().into_iter().map(|(s, t, p)| ((s, t), p)).collect();
        self.engine
            .runs()
            .map(|(s, t, st)| RunStatus {
                story: s.to_string(),
                stage: st.to_string(),
                token: t.0,
                progress: progress.get(&(s.clone(), t)).cloned(),
            })
            .collect()
    }

    fn status(&mut self) -> Status {
        let alive = self.engine.alive_nodes();
        let revoked = self.engine.revoked_keys();
        let mut nodes: Vec<NodeStatus> = self
            .engine
            .nodes()
            .map(|(id, r)| NodeStatus {
                id: id.to_string(),
                label: r.label.clone(),
                address: r.address.clone(),
                capacity: r.capacity,
                alive: alive.contains(id),
                key: r.cert.map(|c| huskies_engine::identity::hex(&c.key)),
                revoked: r.cert.is_some_and(|c| revoked.contains(&(id.clone(), c.key))),
            })
            .collect();
        // Nodes known only by a handshake or a revocation, without a record.
        let bare = self.engine.node_keys().iter().flat_map(|(id, ks)| ks.iter().map(|k| (id.clone(), *k, false)));
        for (id, key, is_revoked) in bare.chain(revoked.iter().map(|(id, k)| (id.clone(), *k, true))) {
            if !nodes.iter().any(|n| n.id == id.as_str()) {
                nodes.push(NodeStatus {
                    id: id.to_string(),
                    label: String::new(),
                    address: None,
                    capacity: 0,
                    alive: alive.contains(&id),
                    key: Some(huskies_engine::identity::hex(&key)),
                    revoked: is_revoked,
                });
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<huskies_engine::StoryId> = self.engine.stories().map(|(id, _)| id.clone()).collect();
        let mut fenced = Vec::new();
        for id in ids {
            for r in self.engine.story_runs(&id) {
                if r.outcome == huskies_engine::RunOutcomeKind::Fenced {
                    let kept = r.reason.clone().unwrap_or_default();
                    fenced.push(crate::status::FencedRun {
                        story: id.to_string(),
                        node: r.node.to_string(),
                        token: r.token.0,
                        stage: r.stage.to_string(),
                        reason: kept,
                    });
                }
            }
        }
        Status {
            fenced,
            epoch: self.engine.epoch(),
            costs: crate::costs::Costs::of(&mut self.engine),
            paused: {
                let now = self.now();
                self.engine.claims_paused().map(|(until, reason)| crate::status::Paused {
                    reason: reason.to_owned(),
                    seconds_left: until.0.saturating_sub(now.0).div_ceil(1000),
                })
            },
            refused: crate::status::Refused::of(&self.engine),
            node: self.engine.node_id().to_string(),
            label: self
                .engine
                .nodes()
                .find(|(id, _)| *id == self.engine.node_id())
                .map(|(_, r)| r.label.clone())
                .unwrap_or_default(),
            peers: self.engine.peer_count(),
            connected: self.engine.connected_nodes().iter().map(|n| n.to_string()).collect(),
            mesh_peers: self.engine.mesh_peer_count(),
            stories: self.engine.stories().map(|(id, v)| StoryStatus::of(id, v)).collect(),
            nodes,
            runs: self.run_statuses(),
            counters: self.metrics.counters(),
            settings: self.engine.cluster_settings().cloned(),
            stages: self.engine.stages().iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Watches `project.toml` (its directory, since editors replace the file by
/// rename); sends on `changed` for every event touching it. `None` when no
/// watcher can be set up.
fn watch_config(path: &std::path::Path, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path.parent()?.to_owned();
    let name = path.file_name()?.to_owned();
    if !dir.is_dir() {
        // No .huskies yet: poll until one appears.
        return None;
    }
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for config changes; polling");
            return None;
        }
    };
    match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for config changes; polling");
            None
        }
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 before it).
pub fn unix_now_ms() -> u64 {
    #[allow(clippy::disallowed_methods)] // the ledger's day is wall time
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
