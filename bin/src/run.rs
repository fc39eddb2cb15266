//! The long-running commands: a server, an agent.

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
}
