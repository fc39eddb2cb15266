//! The long-running commands (server, agent) and the small ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use huskies_engine::Credentials;
use huskies_engine::NodeId;
use huskies_net::api::{AppState, Enroll};
use huskies_net::project::ProjectConfig;
use huskies_net::{NodeOptions, auth, run_node, tls};

use crate::client::{Client, http_base};
use crate::error::CliError;

/// TLS for a node's `/crdt-sync` and API, and the roots it trusts.
#[derive(clap::Args, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain: serve wss:// and https:// instead of ws:// and http://.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) trusted besides the system roots, for a cluster
    /// with its own CA.
    #[arg(long, env = "HUSKIES_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// The dashboard and metrics.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WebArgs {
    /// Let anyone who reaches this node's address read the dashboard (and
    /// the read API: status, stories, logs, metrics) without logging in.
    /// Actions still need the admin key.
    #[arg(long)]
    pub read_only_dashboard: bool,
    /// Also serve `/metrics` alone, unauthenticated, on this address (for
    /// Prometheus; keep it on a private interface), e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

impl TlsArgs {
    fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => tls::server_config(c, k).map(Some).map_err(|e| format!("--tls-cert/--tls-key: {e}")),
            _ => Ok(None),
        }
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        tls::client_config(self.ca_cert.as_deref()).map_err(|e| format!("--ca-cert: {e}"))
    }
}

/// Where the CLI finds a node and the admin key.
#[derive(clap::Args)]
pub struct Target {
    /// The node's HTTP address (the server's, or any agent's): http:// or https://.
    #[arg(long, global = true, env = "HUSKIES_SERVER", default_value = "http://127.0.0.1:3001")]
    pub server: String,
    /// PEM certificate(s) trusted besides the system roots, for an https
    /// node whose certificate comes from the cluster's own CA.
    #[arg(long, global = true, env = "HUSKIES_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The server's data dir, which holds the admin key [default:
    /// ~/.local/state/huskies/server].
    #[arg(long, global = true, env = "HUSKIES_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The admin key itself, instead of reading it from the data dir.
    #[arg(long, global = true, env = "HUSKIES_ADMIN_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl Target {
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.server, self.key_value()?, self.ca_cert.as_deref())
    }

    /// The admin key: `--key`, else read from the data dir.
    pub fn key_value(&self) -> Result<Option<String>, String> {
        let key = match &self.key {
            Some(k) => k.clone(),
            None => {
                let dir = self.data_dir.clone().map_or_else(|| state_dir("server"), Ok)?;
                auth::read_key(&dir)
                    .map_err(|e| format!("cannot read the admin key in {}: {e}", dir.display()))?
                    .ok_or_else(|| {
                        format!("no admin key in {} (pass the server's --data-dir, or --key)", dir.display())
                    })?
            }
        };
        Ok(Some(key))
    }
}

/// `$XDG_STATE_HOME/huskies/<name>`, else `~/.local/state/huskies/<name>`:
/// outside any project, so no credential sits in a tree an agent works in.
pub fn state_dir(name: &str) -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or("neither XDG_STATE_HOME nor HOME is set; pass --data-dir")?)
                .join(".local/state")
        }
    };
    Ok(base.join("huskies").join(name))
}

/// The address peers dial to reach a node listening on `listen`: `given`
/// (checked), else `ws://<listen>/crdt-sync` when that address is specific.
/// An unspecified address (0.0.0.0, ::) is refused: peers on other machines
/// would dial themselves.
pub fn advertise_url(listen: SocketAddr, given: Option<&str>, tls: bool) -> Result<String, String> {
    let scheme = if tls { "wss" } else { "ws" };
    let Some(url) = given else {
        if listen.ip().is_unspecified() {
            return Err(format!(
                "listening on {listen} (every interface), peers need an address they can reach: pass --advertise {scheme}://<this machine's address>:{}/crdt-sync",
                listen.port()
            ));
        }
        return Ok(format!("{scheme}://{listen}/crdt-sync"));
    };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| format!("--advertise {url:?} must start with ws:// or wss://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(format!("--advertise {url:?} has no host"));
    }
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(format!("--advertise {url:?} names no machine; give an address peers can reach"));
    }
    if tls != url.starts_with("wss://") {
        return Err(format!(
            "--advertise {url:?}: this node serves {}, so peers must dial {scheme}://",
            if tls { "TLS (--tls-cert)" } else { "no TLS" }
        ));
    }
    Ok(url.to_owned())
}

pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number then s, m, h or d (e.g. 1h)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3_600,
        "d" => 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?}; use s, m, h or d")),
    };
    if n == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(n * mult)
}

fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)] // token expiry is wall-clock time
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A stable node id kept in the data dir: given, or `<prefix>-<random>`.
fn node_id(data_dir: &Path, given: Option<String>, prefix: &str) -> Result<NodeId, String> {
    let path = data_dir.join("node-id");
    if let Some(g) = given {
        let id = NodeId::new(g).map_err(|e| e.to_string())?;
        auth::private_dir(data_dir).map_err(|e| e.to_string())?;
        std::fs::write(&path, id.as_str()).map_err(|e| e.to_string())?;
        return Ok(id);
    }
    if let Ok(s) = std::fs::read_to_string(&path) {
        return NodeId::new(s.trim()).map_err(|e| format!("{}: {e}", path.display()));
    }
    let suffix = auth::random_hex(3).map_err(|e| e.to_string())?;
    let id = NodeId::new(format!("{prefix}-{suffix}")).map_err(|e| e.to_string())?;
    auth::private_dir(data_dir).map_err(|e| e.to_string())?;
    std::fs::write(&path, id.as_str()).map_err(|e| e.to_string())?;
    Ok(id)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn serve(
    opts: NodeOptions,
    admin_sha256: String,
    enroll: Option<Enroll>,
    tls: Option<Arc<rustls::ServerConfig>>,
    web: WebArgs,
) -> Result<(), String> {
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
        let revoked: huskies_net::node::Revoked = Default::default();
        let ca = opts.credentials.ca;
        let (handle, task) =
            run_node(opts.clone(), revoked.clone()).map_err(|e| format!("cannot start the node: {e}"))?;
        let state = AppState {
            node: handle.clone(),
            admin_sha256: Arc::new(admin_sha256),
            enroll,
            ca,
            revoked,
            max_message_bytes: huskies_engine::Config::default().max_message_bytes,
            project_root: opts.project_root.clone(),
            data_dir: opts.data_dir.clone(),
            dashboard: Arc::new(huskies_net::dashboard::Dashboard::new(
                &opts.node_id,
                web.read_only_dashboard,
                tls.is_some(),
            )),
            node_id: opts.node_id.to_string(),
        };
        if let Some(addr) = web.metrics_listen {
            huskies_net::api::serve_metrics(addr, handle.clone())
                .await
                .map_err(|e| format!("cannot listen on --metrics-listen {addr}: {e}"))?;
            tracing::info!(%addr, "serving /metrics");
        }
        tracing::info!(node = %opts.node_id, listen = %opts.listen, advertise = %opts.advertise, "huskies node up");
        // The HTTP server stops on a signal, or when the node stops on its
        // own (its storage failed): then the error is what we report.
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let node_done = tokio::spawn(async move {
            let r = task.await;
            let _ = stopped_tx.send(());
            r
        });
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stopped_rx => {}
            }
        };
        let result = match tls {
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config).map_err(|e| e.to_string())?;
                huskies_net::api::serve(listener, state, shutdown).await
            }
            None => huskies_net::api::serve(listener, state, shutdown).await,
        };
        let result = result.map_err(|e| e.to_string());
        handle.shutdown().await;
        match node_done.await {
            Ok(Ok(Err(e))) => return Err(format!("node stopped: {e}")),
            Ok(Err(e)) | Err(e) => return Err(format!("node task failed: {e}")),
            Ok(Ok(Ok(()))) => {}
        }
        // Let the goodbye the node queued reach its peers before the
        // runtime (and the sockets) go away.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        result
    })
}

pub fn server(
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    project_root: PathBuf,
    advertise: Option<String>,
    node_id_arg: Option<String>,
    tls_args: TlsArgs,
    web: WebArgs,
) -> Result<(), CliError> {
    let tls = tls_args.server_config()?;
    let advertise = advertise_url(listen, advertise.as_deref(), tls.is_some())?;
    let tls_client = tls_args.client_config()?;
    let data_dir = data_dir.map_or_else(|| state_dir("server"), Ok)?;
    let key = auth::server_key(&data_dir).map_err(|e| format!("admin key in {}: {e}", data_dir.display()))?;
    let ca = auth::server_ca(&data_dir).map_err(|e| format!("cluster CA in {}: {e}", data_dir.display()))?;
    let node_id = node_id(&data_dir, node_id_arg, "server")?;
    let stored = auth::load_node(&data_dir).map_err(|e| e.to_string())?;
    let credentials = match stored {
        Some((n, c, _)) if n == node_id && c.ca == huskies_engine::identity::public_key(&ca) => c,
        _ => {
            // The server certifies its own key with the CA it holds.
            let c = Credentials::issue(&ca, &node_id, auth::random_32().map_err(|e| e.to_string())?);
            auth::store_node(&data_dir, &node_id, &c, &auth::hash(&key)).map_err(|e| e.to_string())?;
            c
        }
    };
    let credentials = Credentials { ca_secret: Some(ca), ..credentials };
    let project = ProjectConfig::load(&project_root).map_err(|e| e.to_string())?;
    let opts = NodeOptions {
        label: format!("server {listen}"),
        node_id,
        listen,
        advertise,
        rendezvous: None,
        data_dir: data_dir.clone(),
        project_root,
        credentials,
        is_server: true,
        project,
        tls_client,
    };
    let enroll = Enroll { dir: data_dir, ca_secret: ca };
    Ok(serve(opts, auth::hash(&key), Some(enroll), tls, web)?)
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The rendezvous, e.g. ws://10.0.0.1:3001/crdt-sync.
    #[arg(long)]
    pub rendezvous: String,
    /// Port for this agent's /crdt-sync (mesh peers dial it).
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = ".")]
    pub project_root: PathBuf,
    /// Holds this node's key and the document (mode 0600), outside the
    /// project [default: ~/.local/state/huskies/agent-<port>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// One-time token from `huskies token create` on the server.
    #[arg(long, env = "HUSKIES_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Interface to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Address mesh peers dial, e.g. ws://10.0.0.5:3101/crdt-sync
    /// [default: ws://<host>:<port>/crdt-sync; required with --host
    /// 0.0.0.0 or ::].
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub web: WebArgs,
}

pub fn agent(a: AgentArgs) -> Result<(), CliError> {
    // Checked before anything else, so a bad address spends no join token.
    let listen: SocketAddr = format!("{}:{}", a.host, a.port).parse().map_err(|e| format!("bad --host/--port: {e}"))?;
    let tls = a.tls.server_config()?;
    let tls_client = a.tls.client_config()?;
    let advertise = advertise_url(listen, a.advertise.as_deref(), tls.is_some())?;
    let project_root = a.project_root.canonicalize().map_err(|e| format!("{}: {e}", a.project_root.display()))?;
    git2::Repository::open(&project_root).map_err(|e| {
        format!(
            "{} is not a git repository ({}); agents need one with an `origin` remote",
            project_root.display(),
            e.message()
        )
    })?;
    let project = ProjectConfig::load(&project_root).map_err(|e| e.to_string())?;
    if project.stages().is_empty() {
        return Err(format!(
            "{} configures no agents; add e.g. [agents.current] command = \"claude\", or [merge] to land stories",
            ProjectConfig::path(&project_root).display()
        )
        .into());
    }
    let data_dir = a.data_dir.map_or_else(|| state_dir(&format!("agent-{}", a.port)), Ok)?;
    let (node_id, credentials, admin_sha256) = match auth::load_node(&data_dir).map_err(|e| e.to_string())? {
        Some((n, _, _)) if a.node_id.as_deref().is_some_and(|want| want != n.as_str()) => {
            return Err(format!(
                "{} holds the credentials of node {n}; use another --data-dir for another node id",
                data_dir.display()
            )
            .into());
        }
        Some(stored) => stored,
        None => {
            let token = a.join_token.ok_or_else(|| {
                "this agent has no credentials yet: pass --join-token (make one on the server with `huskies token create`)"
                    .to_owned()
            })?;
            let node_id = node_id(&data_dir, a.node_id, "agent")?;
            let secret = auth::random_32().map_err(|e| e.to_string())?;
            let key = huskies_engine::identity::public_key(&secret);
            let joined = Client::new(&http_base(&a.rendezvous)?, None, a.tls.ca_cert.as_deref())?
                .join(&token, node_id.as_str(), &huskies_engine::identity::hex(&key))
                .map_err(|e| format!("join refused: {e}"))?;
            let bad = || "the server answered the join with malformed credentials".to_owned();
            let ca = huskies_engine::identity::unhex(&joined.ca)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(bad)?;
            let cert = huskies_engine::Cert::from_hex(&joined.cert).filter(|c| c.key == key).ok_or_else(bad)?;
            if !huskies_engine::identity::verify_cert(&ca, &node_id, &cert) {
                return Err(bad().into());
            }
            let creds = Credentials { ca, secret, cert, ca_secret: None };
            auth::store_node(&data_dir, &node_id, &creds, &joined.admin_sha256).map_err(|e| e.to_string())?;
            (node_id, creds, joined.admin_sha256)
        }
    };
    let opts = NodeOptions {
        label: a.label.unwrap_or_else(|| node_id.to_string()),
        node_id,
        listen,
        advertise,
        rendezvous: Some(a.rendezvous),
        data_dir,
        project_root,
        credentials,
        is_server: false,
        project,
        tls_client,
    };
    Ok(serve(opts, admin_sha256, None, tls, a.web)?)
}

pub fn token_create(data_dir: Option<PathBuf>, ttl: u64) -> Result<(), CliError> {
    let data_dir = &data_dir.map_or_else(|| state_dir("server"), Ok)?;
    auth::server_key(data_dir).map_err(|e| e.to_string())?;
    let token = auth::create_join_token(data_dir, ttl, unix_now()).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

pub fn node_list(t: &Target, json: bool) -> Result<(), CliError> {
    let nodes = t.client()?.nodes()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes).map_err(|e| e.to_string())?);
        return Ok(());
    }
    for n in nodes {
        let state = if n.revoked {
            "revoked"
        } else if n.alive {
            "alive"
        } else {
            "silent"
        };
        let key = n.key.as_deref().map_or("-", |k| &k[..16.min(k.len())]);
        println!("{:<24} {:<8} key {key}  {}  {}", n.id, state, n.address.as_deref().unwrap_or("-"), n.label);
    }
    Ok(())
}

pub fn node_revoke(t: &Target, id: &str) -> Result<(), CliError> {
    t.client()?.revoke(id)?;
    println!("{id}: revoked; every node refuses it and its stories are reclaimed");
    Ok(())
}

pub fn status(t: &Target, json: bool) -> Result<(), CliError> {
    let s = t.client()?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "node {} ({}), {} peers: {}",
        s.node,
        s.label,
        s.peers,
        s.connected.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
    );
    match &s.settings {
        Some(c) => println!(
            "cluster settings (revision {}): claim timeout {} ms, heartbeat {} ms, stagger {} ms, sync {} ms",
            c.revision, c.claim_timeout_ms, c.heartbeat_interval_ms, c.claim_stagger_ms, c.sync_interval_ms
        ),
        None => println!("cluster settings: none from the server yet (using this node's project.toml)"),
    }
    if !s.stages.is_empty() {
        println!("works stages: {}", s.stages.join(", "));
    }
    println!("pipeline:");
    for stage in huskies_engine::Stage::ALL {
        let n = s.stories.iter().filter(|st| st.stage == stage.as_str() && !st.removed).count();
        let failed = s.stories.iter().filter(|st| st.stage == stage.as_str() && st.failed && !st.removed).count();
        let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
        println!("  {:<9} {n}{failed}", stage.as_str());
    }
    let failed: Vec<_> = s.stories.iter().filter(|st| st.failed && !st.removed).collect();
    if !failed.is_empty() {
        println!("failed (huskies story retry ID gives new attempts):");
        for st in failed {
            println!("  {:<28} {:<8} {}", st.id, st.stage, st.reason.as_deref().unwrap_or("no reason recorded"));
        }
    }
    if !s.fenced.is_empty() {
        println!("fenced runs (a newer claim's result stands; this work is kept beside it):");
        for f in &s.fenced {
            println!("  {:<28} {:<8} token {:<4} {:<12} {}", f.story, f.stage, f.token, f.node, f.reason);
        }
    }
    println!("nodes:");
    for n in &s.nodes {
        let claims = s.stories.iter().filter(|st| st.holder.as_ref() == Some(&n.id)).count();
        let state = if n.alive { "alive" } else { "silent" };
        println!("  {:<20} {:<7} capacity {} claims {claims}  {}", n.id, state, n.capacity, n.label);
    }
    if s.refused.total > 0 {
        println!(
            "values refused ({} in all; the last valid values stand; revoke the writer if it is hostile):",
            s.refused.total
        );
        for r in s.refused.newest.iter().rev().take(10) {
            println!("  {r}");
        }
    }
    if let Some(p) = &s.paused {
        println!("claims paused for {} s: this node's agent could not run: {}", p.seconds_left, p.reason);
    }
    if !s.runs.is_empty() {
        println!("runs on this node:");
        for r in &s.runs {
            let now = r
                .progress
                .as_ref()
                .filter(|p| p.turns > 0)
                .map_or(String::new(), |p| format!("  turn {} {} {}", p.turns, p.tool, p.target));
            println!("  {:<28} {:<8} token {:<4}{now}", r.story, r.stage, r.token);
        }
    }
    print!("{}", ledger_text(&s.costs));
    Ok(())
}

/// `status`'s cost part: the day against its budget, then sums per node,
/// stage and day (the ledger's lines, models folded together).
pub fn ledger_text(k: &huskies_net::costs::Costs) -> String {
    use huskies_net::costs::usd;
    use std::fmt::Write;
    let mut out = String::new();
    let budget = k.daily_budget_micro_usd.map_or(" (no daily budget)".to_owned(), |b| format!(" of {}", usd(b)));
    let today = k.today.as_deref().unwrap_or("today");
    let _ = writeln!(out, "agent cost {today} (UTC): {}{budget}", usd(k.spent_today_micro_usd));
    if k.budget_spent {
        let _ = writeln!(
            out,
            "  the daily budget is spent: no node claims new agent runs (current, qa) until tomorrow (UTC) or a higher budget"
        );
    }
    if let Some(m) = k.max_story_cost_micro_usd {
        let _ = writeln!(out, "  a story is given up once its runs cost {}", usd(m));
    }
    if k.lines.is_empty() {
        return out;
    }
    // (day, node, stage) -> (runs, cost, tokens in, tokens out)
    type Key<'a> = (std::cmp::Reverse<&'a str>, &'a str, &'a str);
    let mut sums: std::collections::BTreeMap<Key, (u64, u64, u64, u64)> = Default::default();
    for l in &k.lines {
        let day = if l.day == "all" { "~all" } else { l.day.as_str() };
        let x = &l.line;
        let e = sums.entry((std::cmp::Reverse(day), &l.node, x.stage.as_str())).or_default();
        e.0 += x.runs;
        e.1 = e.1.saturating_add(x.cost_micro_usd);
        e.2 = e.2.saturating_add(x.input_tokens + x.cache_read_tokens + x.cache_write_tokens);
        e.3 = e.3.saturating_add(x.output_tokens);
    }
    let _ = writeln!(out, "agent cost by day, node and stage:");
    for ((std::cmp::Reverse(day), node, stage), (runs, cost, tin, tout)) in sums {
        let day = if day == "~all" { "all time" } else { day };
        let _ = writeln!(
            out,
            "  {day:<10} {node:<20} {stage:<8} {runs:>5} runs  {:>10}  tokens in {tin} out {tout}",
            usd(cost)
        );
    }
    out
}

/// `huskies dashboard`: the node's dashboard URL with the admin key in the
/// fragment (the page trades it for a session cookie and drops it).
pub fn dashboard_link(target: &Target) -> Result<(), CliError> {
    let key = target.key_value()?.ok_or("no admin key")?;
    let base = target.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!("--server {base:?}: expected an http:// or https:// address").into());
    }
    println!("{base}/#key={key}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn advertise() {
        use super::advertise_url;
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(advertise_url(at("10.0.0.5:3101"), None, false).unwrap(), "ws://10.0.0.5:3101/crdt-sync");
        assert_eq!(advertise_url(at("10.0.0.5:3101"), None, true).unwrap(), "wss://10.0.0.5:3101/crdt-sync");
        assert!(advertise_url(at("0.0.0.0:3101"), None, false).unwrap_err().contains("--advertise ws://"));
        assert!(advertise_url(at("0.0.0.0:3101"), None, true).unwrap_err().contains("--advertise wss://"));
        assert!(advertise_url(at("[::]:3101"), None, false).is_err());
        let given = "wss://agent-7.example.com:443/crdt-sync";
        assert_eq!(advertise_url(at("0.0.0.0:3101"), Some(given), true).unwrap(), given);
        assert!(advertise_url(at("0.0.0.0:3101"), Some(given), false).unwrap_err().contains("no TLS"));
        assert!(advertise_url(at("0.0.0.0:1"), Some("ws://a:1/crdt-sync"), true).unwrap_err().contains("wss://"));
        assert!(advertise_url(at("0.0.0.0:1"), Some("ws://0.0.0.0:1/crdt-sync"), false).is_err());
        assert!(advertise_url(at("0.0.0.0:1"), Some("ws://[::]:1/crdt-sync"), false).is_err());
        assert!(advertise_url(at("0.0.0.0:1"), Some("http://x:1/"), false).is_err());
        assert!(advertise_url(at("0.0.0.0:1"), Some("ws:///crdt-sync"), false).is_err());
    }

    #[test]
    fn ttl() {
        assert_eq!(super::parse_ttl("1h"), Ok(3600));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert!(super::parse_ttl("1w").unwrap_err().contains("unknown unit"));
        assert!(super::parse_ttl("abc").is_err());
        assert!(super::parse_ttl("0s").is_err());
    }
}
