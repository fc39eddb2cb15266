//! The HTTP surface: `/crdt-sync` (websocket), `/healthz`, and the API the
//! CLI uses.
//!
//! - `/crdt-sync` takes nodes only: the upgrade request must carry a node id
//!   and a certificate of this cluster's CA that is not revoked (checked
//!   before the upgrade); the engine's handshake then makes the node prove
//!   it holds the certified key.
//! - `/api/*` takes the admin key as a bearer token (`/api/join` takes a
//!   one-time join token instead), or a dashboard session cookie (with its
//!   CSRF token for actions); see [`crate::dashboard`]. Agents check the
//!   key against its SHA-256.
//! - `/metrics` (Prometheus) takes what reads take; `--metrics-listen`
//!   serves it alone, unauthenticated, on an address of its own.
//! - `/` and `/ui/*` are the dashboard.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use huskies_engine::{Cert, Command, CommandError, NodeId, Reply, Stage, StoryId};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Redeem};
use crate::node::{NodeHandle, NodeMsg, Revoked};
use crate::status::{AddStory, ApiError, EditStory, JoinRequest, Joined, LogSlice, MoveStory};
use crate::ws;

/// What the server needs to admit new nodes.
#[derive(Clone)]
pub struct Enroll {
    /// Where join tokens live (`auth` locks the store across processes).
    pub dir: PathBuf,
    pub ca_secret: [u8; 32],
}

#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    /// SHA-256 (hex) of the admin key.
    pub admin_sha256: Arc<String>,
    /// Set on the server.
    pub enroll: Option<Enroll>,
    /// The cluster CA's public key.
    pub ca: [u8; 32],
    pub revoked: Revoked,
    pub max_message_bytes: usize,
    /// Where this node's run logs are (`.huskies/logs`).
    pub project_root: PathBuf,
    /// The node's data dir: its cold storage of past epochs is read from
    /// here for stories no longer in the live document.
    pub data_dir: PathBuf,
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    pub node_id: String,
}

/// What a request does: reads may be open to all (`--read-only-dashboard`);
/// writes made with a session cookie need its CSRF token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub fn router(state: AppState) -> Router {
    use crate::dashboard as ui;
    Router::new()
        .route("/", get(ui::index))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/ui/session", get(ui::session))
        .route("/ui/login", post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/events", get(ui::events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/crdt-sync", get(crdt_sync))
        .route("/api/status", get(status))
        .route("/api/queue", get(queue))
        .route("/api/stories", post(add_story))
        .route("/api/stories/{id}", get(show_story))
        .route("/api/stories/{id}/move", post(move_story))
        .route("/api/stories/{id}/edit", post(edit_story))
        .route("/api/stories/{id}/remove", post(remove_story))
        .route("/api/stories/{id}/retry", post(retry_story))
        .route("/api/logs/{id}", get(logs))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{id}/revoke", post(revoke_node))
        .route("/api/join", post(join))
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

/// Serves only `/metrics` (and `/healthz`), unauthenticated, on `addr`:
/// for `--metrics-listen` on an address Prometheus reaches and the world
/// does not. Runs until the process ends.
pub async fn serve_metrics(addr: std::net::SocketAddr, node: NodeHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let router = Router::new()
        .route("/metrics", get(move || async move { metrics_text(&node).await }))
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    metrics_text(&state.node).await
}

async fn metrics_text(node: &NodeHandle) -> Response {
    match node.metrics().await {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

pub(crate) fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// `None` when the request may go on, else the 401 or 403 to send: the
/// admin key as a bearer token, or a dashboard session (with its CSRF token
/// in `x-csrf-token` for writes), or a read while reads are open to all.
pub(crate) fn refused(state: &AppState, headers: &HeaderMap, access: Access) -> Option<Response> {
    if let Some(t) = bearer(headers) {
        return match auth::constant_time_eq(&auth::hash(t), &state.admin_sha256) {
            true => None,
            false => Some(error(StatusCode::UNAUTHORIZED, "missing or wrong admin key")),
        };
    }
    #[allow(clippy::disallowed_methods)] // session expiry is wall time on this machine
    let now = std::time::Instant::now();
    match (state.dashboard.session_csrf(headers, now), access) {
        (Some(_), Access::Read) => None,
        (Some(csrf), Access::Write) => {
            let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            match auth::constant_time_eq(sent, &csrf) {
                true => None,
                false => Some(error(StatusCode::FORBIDDEN, "missing or wrong CSRF token")),
            }
        }
        (None, Access::Read) if state.dashboard.read_only_public => None,
        (None, _) => Some(error(StatusCode::UNAUTHORIZED, "missing or wrong admin key")),
    }
}

/// `None` when the upgrade request names a node with a valid, unrevoked
/// certificate of this cluster.
fn refused_node(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(node), Some(cert)) = (header(ws::NODE_HEADER), header(ws::CERT_HEADER)) else {
        return Some(error(StatusCode::UNAUTHORIZED, "no node credentials (x-huskies-node, x-huskies-cert)"));
    };
    let Ok(node) = NodeId::new(node) else { return Some(error(StatusCode::UNAUTHORIZED, "bad node id")) };
    let Some(cert) = Cert::from_hex(cert) else { return Some(error(StatusCode::UNAUTHORIZED, "bad certificate")) };
    if !huskies_engine::identity::verify_cert(&state.ca, &node, &cert) {
        return Some(error(StatusCode::UNAUTHORIZED, "certificate not issued by this cluster"));
    }
    if state.revoked.read().is_ok_and(|r| r.contains(&(node.clone(), cert.key))) {
        return Some(error(StatusCode::FORBIDDEN, format!("node {node} was revoked")));
    }
    None
}

async fn crdt_sync(State(state): State<AppState>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    if let Some(r) = refused_node(&state, &headers) {
        return r;
    }
    let node = state.node.tx.clone();
    upgrade.max_message_size(state.max_message_bytes).max_frame_size(state.max_message_bytes).on_upgrade(
        move |socket| async move {
            let (out_tx, out_rx) = mpsc::channel(ws::OUTBOX_FRAMES);
            let (reply_tx, reply_rx) = oneshot::channel();
            if node.send(NodeMsg::Accept { out: out_tx, reply: reply_tx }).await.is_err() {
                return;
            }
            if let Ok(conn) = reply_rx.await {
                ws::pump_accepted(socket, conn, out_rx, node).await;
            }
        },
    )
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    match state.node.status().await {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

async fn queue(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    match state.node.queue().await {
        Some(q) => Json(q).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

async fn run(state: &AppState, command: Command) -> Response {
    match state.node.command(command).await {
        Some(Ok(Reply::Added { id })) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id.as_str() }))).into_response()
        }
        Some(Ok(Reply::Moved { id, from, to, token })) => Json(serde_json::json!({
            "id": id.as_str(), "from": from.as_str(), "to": to.as_str(), "token": token.0
        }))
        .into_response(),
        Some(Ok(Reply::Revoked { node })) => Json(serde_json::json!({ "revoked": node.as_str() })).into_response(),
        Some(Ok(Reply::Enrolled { node })) => Json(serde_json::json!({ "enrolled": node.as_str() })).into_response(),
        Some(Ok(Reply::Edited { id })) => Json(serde_json::json!({ "edited": id.as_str() })).into_response(),
        Some(Ok(Reply::Removed { id, token })) => {
            Json(serde_json::json!({ "removed": id.as_str(), "token": token.0 })).into_response()
        }
        Some(Ok(Reply::Retried { id, token })) => {
            Json(serde_json::json!({ "retried": id.as_str(), "token": token.0 })).into_response()
        }
        Some(Ok(Reply::Left)) => Json(serde_json::json!({ "left": true })).into_response(),
        Some(Ok(Reply::Settings { revision })) => {
            Json(serde_json::json!({ "settings_revision": revision })).into_response()
        }
        Some(Ok(Reply::Stages { stages })) => {
            Json(serde_json::json!({ "stages": stages.iter().map(|s| s.as_str()).collect::<Vec<_>>() })).into_response()
        }
        Some(Err(e @ (CommandError::UnknownStory(_) | CommandError::UnknownNode(_)))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Some(Err(e @ (CommandError::StoryExists(_) | CommandError::Removed(_) | CommandError::NotFailed(_)))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Some(Err(e @ (CommandError::NotAuthority | CommandError::ServerOnly))) => {
            error(StatusCode::FORBIDDEN, e.to_string())
        }
        Some(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

async fn add_story(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<AddStory>) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Write) {
        return r;
    }
    let id = match body.id.map(StoryId::new).transpose() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let stage = match body.stage.as_deref().unwrap_or("backlog").parse::<Stage>() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Creation time orders stories: the wall clock of the adding node.
    let created = huskies_engine::UnixMs(crate::node::unix_now_ms());
    let new =
        huskies_engine::NewStory { id, title: body.title, stage, body: body.body, priority: body.priority, created };
    run(&state, Command::AddStory(new)).await
}

async fn move_story(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<MoveStory>,
) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Write) {
        return r;
    }
    let id = match StoryId::new(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match body.stage.parse::<Stage>() {
        Ok(stage) => run(&state, Command::MoveStory { id, stage }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn story_id(id: String) -> Result<StoryId, Box<Response>> {
    StoryId::new(id).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))
}

async fn show_story(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    let id = match story_id(id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match state.node.story(id.clone()).await {
        Some(Some(detail)) => Json(detail).into_response(),
        Some(None) => {
            // Not live: archived at an epoch's cut, maybe. Past epochs'
            // documents are read off the node task (they can be large).
            let dir = state.data_dir.clone();
            let key = id.clone();
            match tokio::task::spawn_blocking(move || crate::cold::find_story(&dir, &key)).await {
                Ok(Some(detail)) => Json(detail).into_response(),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no story {id}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading cold storage failed: {e}")),
            }
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

async fn edit_story(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<EditStory>,
) -> Response {
    story_command(&state, &headers, id, |id| Command::EditStory {
        id,
        title: body.title,
        body: body.body,
        priority: body.priority,
    })
    .await
}

/// An admin command on one story named in the path.
async fn story_command(
    state: &AppState,
    headers: &HeaderMap,
    id: String,
    command: impl FnOnce(StoryId) -> Command,
) -> Response {
    if let Some(r) = refused(state, headers, Access::Write) {
        return r;
    }
    match story_id(id) {
        Ok(id) => run(state, command(id)).await,
        Err(r) => *r,
    }
}

async fn remove_story(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    story_command(&state, &headers, id, |id| Command::RemoveStory { id }).await
}

async fn retry_story(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    story_command(&state, &headers, id, |id| Command::RetryStory { id }).await
}

#[derive(serde::Deserialize)]
struct LogQuery {
    stage: Option<String>,
    #[serde(default)]
    offset: u64,
    /// The last this many bytes instead (overrides `offset`).
    tail: Option<u64>,
}

/// Largest slice of a log one request returns.
const LOG_SLICE_BYTES: u64 = 1 << 20;

/// The newest log this node kept of a story's runs.
async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    let id = match story_id(id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    if let Some(stage) = &q.stage
        && stage.parse::<Stage>().is_err()
    {
        return error(StatusCode::BAD_REQUEST, format!("unknown stage {stage:?}"));
    }
    let root = state.project_root.clone();
    let found = tokio::task::spawn_blocking(move || {
        let path = crate::runlog::newest_log(&root, id.as_str(), q.stage.as_deref())?;
        let read = match q.tail {
            Some(tail) => crate::runlog::read_log(&path, u64::MAX, 0).and_then(|(_, total)| {
                crate::runlog::read_log(&path, total.saturating_sub(tail), LOG_SLICE_BYTES.min(tail))
            }),
            None => crate::runlog::read_log(&path, q.offset, LOG_SLICE_BYTES),
        };
        Some((path, read))
    })
    .await;
    match found {
        Ok(Some((path, Ok((bytes, total))))) => Json(LogSlice {
            file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            offset: q.tail.map_or(q.offset, |t| total.saturating_sub(t)).min(total),
            total,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
        .into_response(),
        Ok(Some((_, Err(e)))) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the log: {e}")),
        Ok(None) => error(StatusCode::NOT_FOUND, "this node has no log of that story"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn nodes(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    match state.node.status().await {
        Some(s) => Json(s.nodes).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
}

async fn revoke_node(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Write) {
        return r;
    }
    match NodeId::new(id) {
        Ok(node) => run(&state, Command::RevokeNode { node }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn join(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<JoinRequest>) -> Response {
    let Some(enroll) = &state.enroll else {
        return error(StatusCode::NOT_FOUND, "join tokens are redeemed at the server");
    };
    let Some(token) = bearer(&headers) else { return error(StatusCode::UNAUTHORIZED, "no join token") };
    let node = match NodeId::new(body.node) {
        Ok(n) if huskies_engine::schema::is_reserved(&n) => {
            return error(StatusCode::BAD_REQUEST, huskies_engine::CommandError::ReservedNodeId(n).to_string());
        }
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(key) = huskies_engine::identity::unhex(&body.key).and_then(|k| <[u8; 32]>::try_from(k).ok()) else {
        return error(StatusCode::BAD_REQUEST, "key must be 32 bytes of hex");
    };
    #[allow(clippy::disallowed_methods)] // token expiry is wall-clock time on one machine
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match auth::redeem_join_token(&enroll.dir, token, now) {
        Ok(Redeem::Ok) => {
            let cert = huskies_engine::identity::certify(&enroll.ca_secret, &node, &key);
            // Recorded (and persisted) before the node hears it joined, so
            // the server can always revoke it, connected or not.
            match state.node.command(Command::EnrollNode { node: node.clone(), cert }).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                None => return error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
            }
            tracing::info!(%node, "node joined");
            Json(Joined {
                ca: huskies_engine::identity::hex(&state.ca),
                cert: cert.to_hex(),
                admin_sha256: state.admin_sha256.to_string(),
            })
            .into_response()
        }
        Ok(Redeem::AlreadyUsed) => error(StatusCode::FORBIDDEN, "join token already used"),
        Ok(Redeem::Expired) => error(StatusCode::FORBIDDEN, "join token expired"),
        Ok(Redeem::Unknown) => error(StatusCode::UNAUTHORIZED, "unknown join token"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("token store: {e}")),
    }
}

/// Serves the router on `listener` (plain TCP, or [`crate::tls::TlsListener`])
/// until `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
