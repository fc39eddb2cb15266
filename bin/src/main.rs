//! `huskies`: coordinate a fleet of headless build agents.

mod admin;
mod client;
mod demo;
mod doctor;
mod error;
mod fleet;
mod local;
mod queue;
mod run;
mod standin;
mod stories;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::CliError;

#[derive(Parser)]
#[command(name = "huskies", version, about = "Coordinate a fleet of headless build agents over a CRDT pipeline")]
struct Cli {
    /// Log format (level via RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the rendezvous node (runs no agents).
    Server {
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: std::net::SocketAddr,
        /// Holds the cluster CA, the admin key and the document (mode 0600)
        /// [default: ~/.local/state/huskies/server].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        project_root: PathBuf,
        /// Address agents dial [default: ws://<listen>/crdt-sync; required
        /// when listening on 0.0.0.0 or ::].
        #[arg(long)]
        advertise: Option<String>,
        #[arg(long)]
        node_id: Option<String>,
        #[command(flatten)]
        tls: run::TlsArgs,
        #[command(flatten)]
        web: run::WebArgs,
    },
    /// Run a build agent.
    Agent(run::AgentArgs),
    /// A run's log, fetched from the node that ran it.
    Logs {
        #[command(flatten)]
        target: admin::Target,
        id: String,
        /// The run of this stage (default: the newest run).
        #[arg(long)]
        stage: Option<String>,
        /// Keep printing as the log grows.
        #[arg(long, short)]
        follow: bool,
    },
    /// Add, edit, show, list, move, remove or retry stories.
    Story {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        action: StoryCmd,
    },
    /// The pipeline by stage, nodes alive, claims.
    Status {
        #[command(flatten)]
        target: admin::Target,
        #[arg(long)]
        json: bool,
    },
    /// Every value the node refused to believe, by the node that wrote
    /// it, and what revoking that node would restore.
    Doctor {
        #[command(flatten)]
        target: admin::Target,
        #[arg(long)]
        json: bool,
    },
    /// The merge queue: what waits to land and in which order, what is
    /// being tested where, what landed last.
    Queue {
        #[command(flatten)]
        target: admin::Target,
        #[arg(long)]
        json: bool,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
    /// List or revoke nodes.
    Node {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Print a link that logs a browser into the node's web dashboard
    /// (the admin key rides in the URL fragment, which is never sent).
    Dashboard {
        #[command(flatten)]
        target: admin::Target,
    },
    /// Start a real local cluster (server + 3 agents) and watch it work.
    Demo(demo::DemoArgs),
    /// Benchmark a real fleet on this machine: a server and N stand-in
    /// agents on loopback addresses, stories at a steady rate; reports
    /// server CPU per story, RSS, claim and propagation latency, and
    /// heartbeat bytes.
    FleetBench(fleet::FleetArgs),
    /// The built-in stand-in agent: edits and commits a file (used by demo).
    #[command(hide = true)]
    StandIn(standin::StandInArgs),
}

#[derive(Subcommand)]
enum StoryCmd {
    /// Add a story (prints its id).
    Add {
        title: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "backlog")]
        stage: String,
        #[command(flatten)]
        body: stories::BodyArgs,
        /// Higher is claimed first; then oldest first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
    },
    /// Change a story's title, body or priority.
    Edit {
        id: String,
        #[arg(long)]
        title: Option<String>,
        #[command(flatten)]
        body: stories::BodyArgs,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i64>,
    },
    /// A story in full: state, body, and the record of every run.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    List {
        /// Include removed stories.
        #[arg(long)]
        all: bool,
    },
    Move {
        id: String,
        stage: String,
    },
    /// Remove a story: a run of it is stopped, a tombstone stays.
    Rm {
        id: String,
    },
    /// Give a failed story new attempts in its stage.
    Retry {
        id: String,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node in the document: alive, silent or revoked, and its key.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node's key: every node refuses it from then on, and its
    /// stories are reclaimed at once. Ask the server (it holds the CA).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a one-time join token (run on the server machine).
    Create {
        /// The server's data dir [default: ~/.local/state/huskies/server].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Lifetime, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = admin::parse_ttl)]
        ttl: u64,
    },
}

/// Automerge 0.12 instruments `load_changes` at info level with the whole
/// change graph as a field: under an info subscriber every sync message
/// received formatted the document's history (most of an agent's CPU in a
/// 200-agent fleet). Its spans are off unless RUST_LOG asks for them.
const DEFAULT_LOG_FILTER: &str = "info,automerge=warn";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Server { listen, data_dir, project_root, advertise, node_id, tls, web } => {
            init_logs(cli.log_format);
            run::server(listen, data_dir, project_root, advertise, node_id, tls, web)
        }
        Cmd::Agent(args) => {
            init_logs(cli.log_format);
            run::agent(args)
        }
        Cmd::Story { target, action } => match action {
            StoryCmd::Add { title, id, stage, body, priority } => {
                stories::add(&target, &title, id.as_deref(), &stage, &body, priority)
            }
            StoryCmd::Edit { id, title, body, priority } => stories::edit(&target, &id, title, &body, priority),
            StoryCmd::Show { id, json } => stories::show(&target, &id, json),
            StoryCmd::List { all } => stories::list(&target, all),
            StoryCmd::Move { id, stage } => stories::move_to(&target, &id, &stage),
            StoryCmd::Rm { id } => stories::remove(&target, &id),
            StoryCmd::Retry { id } => stories::retry(&target, &id),
        },
        Cmd::Logs { target, id, stage, follow } => stories::logs(&target, &id, stage.as_deref(), follow),
        Cmd::Status { target, json } => admin::status(&target, json),
        Cmd::Queue { target, json } => queue::show(&target, json),
        Cmd::Doctor { target, json } => doctor::run(&target, json),
        Cmd::Dashboard { target } => admin::dashboard_link(&target),
        Cmd::Token { action: TokenCmd::Create { data_dir, ttl } } => admin::token_create(data_dir, ttl),
        Cmd::Node { target, action } => match action {
            NodeCmd::List { json } => admin::node_list(&target, json),
            NodeCmd::Revoke { id } => admin::node_revoke(&target, &id),
        },
        Cmd::Demo(args) => demo::run(args),
        Cmd::FleetBench(args) => fleet::run(args),
        Cmd::StandIn(args) => standin::run(args).map_err(CliError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
