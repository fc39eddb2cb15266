//! The node task: owns the engine, feeds it inputs, carries out its outputs.
//!
//! Here: the options, the handle other tasks talk to the node through, and
//! starting it. By concern: `event_loop.rs` (inputs in, outputs carried
//! out), `writer.rs` (the storage thread, group commit), `config.rs` (the
//! engine's config, `project.toml` reloads), `view.rs` (status, board).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use huskies_engine::{
    ClusterSettings, Command, CommandError, CommandId, ConnId, Engine, Input, Millis, NodeId, PersistKind, PersistSeq,
    Reply,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::project::ProjectConfig;
use crate::runner::Runner;
use crate::status::{Board, Status};
use crate::storage::Storage;
use crate::ws;

mod config;
mod event_loop;
mod view;
mod writer;

pub use config::engine_config;
use config::watch_config;
use writer::start_writer;

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

/// Milliseconds since the Unix epoch by the wall clock (0 before it).
pub fn unix_now_ms() -> u64 {
    #[allow(clippy::disallowed_methods)] // the ledger's day is wall time
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
