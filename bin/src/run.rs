//! The long-running commands (server, agent) and the small ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use huskies_engine::NodeId;
use huskies_net::api::AppState;
use huskies_net::project::ProjectConfig;
use huskies_net::{NodeOptions, auth, run_node};

use crate::client::{Client, http_base};

/// Where the CLI finds a node and its key.
#[derive(clap::Args)]
pub struct Target {
    /// The node's HTTP address.
    #[arg(long, env = "HUSKIES_SERVER", default_value = "http://127.0.0.1:3001")]
    pub server: String,
    /// Data dir holding the cluster key (the server's or an agent's).
    #[arg(long, env = "HUSKIES_DATA_DIR", default_value = ".huskies/data")]
    pub data_dir: PathBuf,
    /// The cluster key itself, instead of reading it from the data dir.
    #[arg(long, env = "HUSKIES_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl Target {
    fn client(&self) -> Result<Client, String> {
        let key = match &self.key {
            Some(k) => k.clone(),
            None => auth::read_key(&self.data_dir)
                .map_err(|e| format!("cannot read the cluster key in {}: {e}", self.data_dir.display()))?
                .ok_or_else(|| format!("no cluster key in {} (pass --data-dir or --key)", self.data_dir.display()))?,
        };
        Ok(Client::new(&self.server, Some(key)))
    }
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
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
        std::fs::write(&path, id.as_str()).map_err(|e| e.to_string())?;
        return Ok(id);
    }
    if let Ok(s) = std::fs::read_to_string(&path) {
        return NodeId::new(s.trim()).map_err(|e| format!("{}: {e}", path.display()));
    }
    let suffix = auth::random_hex(3).map_err(|e| e.to_string())?;
    let id = NodeId::new(format!("{prefix}-{suffix}")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
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

fn serve(opts: NodeOptions, join_dir: Option<PathBuf>) -> Result<(), String> {
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
        let key = Arc::new(opts.cluster_key.clone());
        let (handle, task) = run_node(opts.clone()).map_err(|e| format!("cannot start the node: {e}"))?;
        let state = AppState {
            node: handle.clone(),
            key,
            join_dir,
            join_lock: Default::default(),
            max_message_bytes: huskies_engine::Config::default().max_message_bytes,
        };
        tracing::info!(node = %opts.node_id, listen = %opts.listen, advertise = %opts.advertise, "huskies node up");
        let result = huskies_net::api::serve(listener, state, shutdown_signal()).await.map_err(|e| e.to_string());
        handle.shutdown().await;
        let _ = task.await;
        result
    })
}

pub fn server(
    listen: SocketAddr,
    data_dir: PathBuf,
    project_root: PathBuf,
    advertise: Option<String>,
    node_id_arg: Option<String>,
) -> Result<(), String> {
    let key = auth::server_key(&data_dir).map_err(|e| format!("cluster key in {}: {e}", data_dir.display()))?;
    let node_id = node_id(&data_dir, node_id_arg, "server")?;
    let project = ProjectConfig::load(&project_root).map_err(|e| e.to_string())?;
    let opts = NodeOptions {
        label: format!("server {listen}"),
        node_id,
        listen,
        advertise: advertise.unwrap_or_else(|| format!("ws://{listen}/crdt-sync")),
        rendezvous: None,
        data_dir: data_dir.clone(),
        project_root,
        cluster_key: key,
        is_server: true,
        project,
    };
    serve(opts, Some(data_dir))
}

pub struct AgentArgs {
    pub rendezvous: String,
    pub port: u16,
    pub project_root: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub join_token: Option<String>,
    pub host: String,
    pub label: Option<String>,
    pub node_id: Option<String>,
}

pub fn agent(a: AgentArgs) -> Result<(), String> {
    let project_root = a.project_root.canonicalize().map_err(|e| format!("{}: {e}", a.project_root.display()))?;
    git2::Repository::open(&project_root).map_err(|e| {
        format!(
            "{} is not a git repository ({}); agents need one with an `origin` remote",
            project_root.display(),
            e.message()
        )
    })?;
    let project = ProjectConfig::load(&project_root).map_err(|e| e.to_string())?;
    if project.agents.is_empty() {
        return Err(format!(
            "{} configures no agents; add e.g. [agents.current] command = \"claude\"",
            ProjectConfig::path(&project_root).display()
        ));
    }
    let data_dir = a.data_dir.unwrap_or_else(|| project_root.join(".huskies").join("data"));
    let key = match auth::read_key(&data_dir).map_err(|e| e.to_string())? {
        Some(k) => k,
        None => {
            let token = a.join_token.ok_or_else(|| {
                "this agent has no cluster credential yet: pass --join-token (make one on the server with `huskies token create --data-dir <server data dir>`)".to_owned()
            })?;
            let key =
                Client::new(&http_base(&a.rendezvous)?, None).join(&token).map_err(|e| format!("join refused: {e}"))?;
            auth::write_key(&data_dir, &key).map_err(|e| e.to_string())?;
            key
        }
    };
    let listen: SocketAddr = format!("{}:{}", a.host, a.port).parse().map_err(|e| format!("bad --host/--port: {e}"))?;
    let node_id = node_id(&data_dir, a.node_id, "agent")?;
    let opts = NodeOptions {
        label: a.label.unwrap_or_else(|| node_id.to_string()),
        node_id,
        listen,
        advertise: format!("ws://{listen}/crdt-sync"),
        rendezvous: Some(a.rendezvous),
        data_dir,
        project_root,
        cluster_key: key,
        is_server: false,
        project,
    };
    serve(opts, None)
}

pub fn token_create(data_dir: &Path, ttl: u64) -> Result<(), String> {
    auth::server_key(data_dir).map_err(|e| e.to_string())?;
    let token = auth::create_join_token(data_dir, ttl, unix_now()).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

pub fn story_add(t: &Target, title: &str, id: Option<&str>, stage: &str) -> Result<(), String> {
    let id = t.client()?.add_story(title, id, stage)?;
    println!("{id}");
    Ok(())
}

pub fn story_move(t: &Target, id: &str, stage: &str) -> Result<(), String> {
    let v = t.client()?.move_story(id, stage)?;
    println!("{id}: {} -> {}", v["from"].as_str().unwrap_or("?"), v["to"].as_str().unwrap_or("?"));
    Ok(())
}

pub fn story_list(t: &Target) -> Result<(), String> {
    let s = t.client()?.status()?;
    for st in s.stories {
        let holder = st.holder.map(|h| format!(" [{h}]")).unwrap_or_default();
        let failed = if st.failed { " FAILED" } else { "" };
        println!("{:<28} {:<9} {}{holder}{failed}", st.id, st.stage, st.title);
    }
    Ok(())
}

pub fn status(t: &Target, json: bool) -> Result<(), String> {
    let s = t.client()?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("node {} ({}), {} peers", s.node, s.label, s.peers);
    println!("pipeline:");
    for stage in huskies_engine::Stage::ALL {
        let n = s.stories.iter().filter(|st| st.stage == stage.as_str()).count();
        let failed = s.stories.iter().filter(|st| st.stage == stage.as_str() && st.failed).count();
        let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
        println!("  {:<9} {n}{failed}", stage.as_str());
    }
    println!("nodes:");
    for n in &s.nodes {
        let claims = s.stories.iter().filter(|st| st.holder.as_deref() == Some(n.id.as_str())).count();
        let state = if n.alive { "alive" } else { "silent" };
        println!("  {:<20} {:<7} capacity {} claims {claims}  {}", n.id, state, n.capacity, n.label);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl() {
        assert_eq!(super::parse_ttl("1h"), Ok(3600));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert!(super::parse_ttl("1w").unwrap_err().contains("unknown unit"));
        assert!(super::parse_ttl("abc").is_err());
        assert!(super::parse_ttl("0s").is_err());
    }
}
