//! The web dashboard: static files embedded in the binary, browser
//! sessions, and a live feed of the board over server-sent events.
//!
//! - A browser logs in with the admin key (`POST /ui/login`) and gets a
//!   session cookie: HttpOnly (scripts cannot read it), SameSite=Strict
//!   (other sites cannot send it), Secure under TLS. Only the session id's
//!   SHA-256 is kept, in memory: a restart logs everyone out.
//! - Every action made with a session must carry the session's CSRF token
//!   in `x-csrf-token`; the page reads it from `GET /ui/session`, which
//!   other origins cannot read (no CORS headers are ever sent).
//! - `--read-only-dashboard` lets anyone who reaches the address read the
//!   board (and the read API) without logging in; actions still need a
//!   login.
//! - Every response carries a strict Content-Security-Policy: scripts and
//!   styles only from this origin, no inline code, Trusted Types enforced
//!   (so no code path can assign HTML strings), no framing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::{Access, AppState, error, refused};
use crate::auth;
use crate::status::{Board, BoardNode, Counters, StoryStatus};

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// A browser session lasts this long from login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// The feed sends at most one update per this interval (bursts of engine
/// events coalesce), and one at least every [`FEED_IDLE`] so heartbeat
/// ages stay current.
const FEED_MIN_GAP: Duration = Duration::from_millis(200);
const FEED_IDLE: Duration = Duration::from_secs(5);

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

struct Session {
    csrf: String,
    expires: Instant,
}

/// Dashboard settings and the live sessions.
pub struct Dashboard {
    /// Anyone may read without logging in.
    pub read_only_public: bool,
    /// Cookies get `Secure` (the node serves TLS).
    pub secure_cookies: bool,
    /// Cookies are per node: browsers share cookies across ports of a host.
    cookie_name: String,
    /// By SHA-256 of the session id.
    sessions: Mutex<BTreeMap<String, Session>>,
}

impl Dashboard {
    pub fn new(node: &huskies_engine::NodeId, read_only_public: bool, secure_cookies: bool) -> Dashboard {
        Dashboard {
            read_only_public,
            secure_cookies,
            // Node ids are [a-z0-9_-]: valid in a cookie name as they are.
            cookie_name: format!("huskies_session_{node}"),
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session; returns its id and CSRF token.
    fn login(&self, now: Instant) -> std::io::Result<(String, String)> {
        let id = auth::random_hex(32)?;
        let csrf = auth::random_hex(32)?;
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) else { break };
            sessions.remove(&oldest);
        }
        sessions.insert(auth::hash(&id), Session { csrf: csrf.clone(), expires: now + SESSION_TTL });
        assert!(sessions.len() <= MAX_SESSIONS);
        Ok((id, csrf))
    }

    fn session_id<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.cookie_name)
            .map(|(_, v)| v)
    }

    /// The CSRF token of the live session the request's cookie names.
    pub fn session_csrf(&self, headers: &HeaderMap, now: Instant) -> Option<String> {
        let id = self.session_id(headers)?;
        let sessions = self.sessions();
        let s = sessions.get(&auth::hash(id))?;
        (s.expires > now).then(|| s.csrf.clone())
    }

    fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = self.session_id(headers) {
            self.sessions().remove(&auth::hash(id));
        }
    }

    fn cookie(&self, value: &str, max_age_secs: u64) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}", self.cookie_name)
    }
}

/// Headers every response carries (set by a layer on the whole router).
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Deserialize)]
pub struct Login {
    key: String,
}

/// What the page learns of its session.
#[derive(Serialize)]
pub struct SessionInfo {
    logged_in: bool,
    /// May read the board.
    can_read: bool,
    csrf: Option<String>,
    node: String,
}

#[allow(clippy::disallowed_methods)] // session expiry is wall time on this machine
fn now() -> Instant {
    Instant::now()
}

pub async fn login(State(state): State<AppState>, Json(body): Json<Login>) -> Response {
    if !auth::constant_time_eq(&auth::hash(&body.key), &state.admin_sha256) {
        return error(StatusCode::UNAUTHORIZED, "wrong admin key");
    }
    match state.dashboard.login(now()) {
        Ok((id, csrf)) => {
            let cookie = state.dashboard.cookie(&id, SESSION_TTL.as_secs());
            let info = SessionInfo { logged_in: true, can_read: true, csrf: Some(csrf), node: state.node_id.clone() };
            ([(header::SET_COOKIE, cookie)], Json(info)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("no randomness for a session: {e}")),
    }
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Write) {
        return r;
    }
    state.dashboard.logout(&headers);
    let cookie = state.dashboard.cookie("", 0);
    ([(header::SET_COOKIE, cookie)], Json(serde_json::json!({ "logged_out": true }))).into_response()
}

pub async fn session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let csrf = state.dashboard.session_csrf(&headers, now());
    let logged_in = csrf.is_some();
    Json(SessionInfo {
        logged_in,
        can_read: logged_in || state.dashboard.read_only_public,
        csrf,
        node: state.node_id.clone(),
    })
    .into_response()
}

/// One message of the feed: the stories that changed since the last one
/// (all of them when `reset`), the ids gone, and the small parts whole.
#[derive(Serialize)]
struct Update<'a> {
    reset: bool,
    node: &'a str,
    is_server: bool,
    stages: &'a [String],
    stories: Vec<&'a StoryStatus>,
    gone: Vec<String>,
    nodes: &'a [BoardNode],
    connected: &'a [String],
    counters: &'a Counters,
    queue: &'a crate::status::Queue,
    costs: &'a crate::costs::Costs,
    runs: &'a [crate::status::RunStatus],
    refused: &'a crate::status::Refused,
}

/// What one feed connection last sent, to send only what changed.
#[derive(Default)]
struct Sent {
    stories: BTreeMap<String, String>,
    /// The whole board went out once already.
    sent_once: bool,
}

impl Sent {
    fn update(&mut self, board: &Board) -> String {
        let reset = !self.sent_once;
        self.sent_once = true;
        let mut changed = Vec::new();
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        for s in &board.stories {
            let json = serde_json::to_string(s).unwrap_or_default();
            if reset || self.stories.get(s.id.as_str()) != Some(&json) {
                changed.push(s);
            }
            now.insert(s.id.to_string(), json);
        }
        let gone = self.stories.keys().filter(|id| !now.contains_key(*id)).cloned().collect();
        self.stories = now;
        let update = Update {
            reset,
            node: &board.node,
            is_server: board.is_server,
            stages: &board.stages,
            stories: changed,
            gone,
            nodes: &board.nodes,
            connected: &board.connected,
            counters: &board.counters,
            queue: &board.queue,
            costs: &board.costs,
            runs: &board.runs,
            refused: &board.refused,
        };
        serde_json::to_string(&update).unwrap_or_default()
    }
}

/// `GET /ui/events`: the board, then what changes, as engine events
/// happen (coalesced to one message per 200 ms at most), and a refresh
/// every 5 s when nothing happens. The browser's EventSource reconnects by
/// itself and gets the whole board again.
pub async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&state, &headers, Access::Read) {
        return r;
    }
    let feed =
        Feed { node: state.node.clone(), changes: state.node.changes.clone(), sent: Sent::default(), last: None };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        if let Some(last) = feed.last {
            // Wait for a change, or refresh when idle.
            let _ = tokio::time::timeout(FEED_IDLE, feed.changes.changed()).await;
            tokio::time::sleep_until(tokio::time::Instant::from_std(last + FEED_MIN_GAP)).await;
        }
        feed.changes.mark_unchanged();
        let board = feed.node.board().await?;
        feed.last = Some(now());
        let data = feed.sent.update(&board);
        Some((Ok::<Event, Infallible>(Event::default().event("board").data(data)), feed))
    });
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    // Proxies (nginx) must pass events through as they come.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Feed {
    node: crate::NodeHandle,
    changes: tokio::sync::watch::Receiver<u64>,
    sent: Sent,
    last: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(id: &str, stage: &str) -> StoryStatus {
        StoryStatus {
            id: huskies_engine::StoryId::new(id).unwrap(),
            title: format!("t {id}"),
            stage: stage.into(),
            token: 1,
            holder: None,
            attempts: 0,
            failed: false,
            last_result_by: None,
            reason: None,
            removed: false,
            priority: 0,
            created_ms: 0,
            landed: None,
            returns: 0,
            cost_micro_usd: 0,
        }
    }

    fn board(stories: Vec<StoryStatus>) -> Board {
        Board {
            node: "n".into(),
            is_server: true,
            stages: vec!["backlog".into()],
            stories,
            nodes: vec![],
            connected: vec![],
            counters: Counters::default(),
            queue: Default::default(),
            costs: Default::default(),
            runs: vec![],
            refused: Default::default(),
        }
    }

    #[test]
    fn feed_sends_everything_then_only_changes() {
        let mut sent = Sent::default();
        let first: serde_json::Value =
            serde_json::from_str(&sent.update(&board(vec![story("a", "backlog"), story("b", "qa")]))).unwrap();
        assert_eq!(first["reset"], true);
        assert_eq!(first["stories"].as_array().unwrap().len(), 2);
        let same: serde_json::Value =
            serde_json::from_str(&sent.update(&board(vec![story("a", "backlog"), story("b", "qa")]))).unwrap();
        assert_eq!(same["reset"], false);
        assert!(same["stories"].as_array().unwrap().is_empty());
        let moved: serde_json::Value = serde_json::from_str(&sent.update(&board(vec![story("a", "current")]))).unwrap();
        assert_eq!(moved["stories"][0]["stage"], "current");
        assert_eq!(moved["gone"], serde_json::json!(["b"]));
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let d = Dashboard::new(&huskies_engine::NodeId::new("srv").unwrap(), false, false);
        let t0 = now();
        for _ in 0..MAX_SESSIONS + 10 {
            d.login(t0).unwrap();
        }
        assert_eq!(d.sessions().len(), MAX_SESSIONS);
        let (id, csrf) = d.login(t0).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("other=1; huskies_session_srv={id}").parse().unwrap());
        assert_eq!(d.session_csrf(&h, t0), Some(csrf));
        assert_eq!(d.session_csrf(&h, t0 + SESSION_TTL), None, "expired");
        d.logout(&h);
        assert_eq!(d.session_csrf(&h, t0), None, "logged out");
    }
}
