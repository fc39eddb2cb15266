//! The web dashboard in a real browser (headless Chromium driven over
//! WebDriver by chromedriver), and `/metrics` parsed after a known run.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them
//! when missing); without `/usr/bin/chromedriver` the browser test says so
//! and passes, the metrics tests still run.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{Cluster, cli, http, wait_for};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

// ---- /metrics ---------------------------------------------------------------

/// Parses Prometheus text format strictly: every sample line is
/// `name{labels} value` with a float value, and every metric family has
/// HELP and TYPE lines before its samples.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family) || typed.contains(name), "sample {name} has no TYPE line");
        assert!(samples.insert(series.to_owned(), value).is_none(), "{series} twice");
    }
    samples
}

fn scrape(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = http().get(url);
    if let Some(k) = key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut r = req.call().unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    (status, body)
}

fn stories_in(c: &Cluster, stage: &str) -> usize {
    c.stages().iter().filter(|(_, s, h)| s == stage && h.is_none()).count()
}

#[test]
fn metrics_match_a_known_run() {
    let metrics_port = support::free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut c = Cluster::with_server_args("metrics", &["--metrics-listen", &metrics_listen, "--read-only-dashboard"]);
    let agent_port = c.start_agent_at(1, 300, "127.0.0.1");
    for id in ["m1", "m2", "m3"] {
        c.add_story(id);
    }
    // One agent runs `current` only: each story is claimed once, run once
    // and advanced to qa.
    wait_for("3 stories in qa", Duration::from_secs(30), || stories_in(&c, "qa") == 3);

    // The agent counts its own work; the metrics are behind the admin key.
    let agent_url = format!("http://127.0.0.1:{agent_port}/metrics");
    assert_eq!(scrape(&agent_url, None).0, 401, "an agent's metrics need the key without --read-only-dashboard");
    let (code, text) = scrape(&agent_url, Some(&c.key));
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get("huskies_claims_total"), 3.0);
    assert_eq!(get("huskies_reclaims_total"), 0.0);
    assert_eq!(get("huskies_claim_conflicts_total"), 0.0);
    assert_eq!(get("huskies_runs_started_total"), 3.0);
    assert_eq!(get("huskies_runs_succeeded_total"), 3.0);
    assert_eq!(get("huskies_runs_failed_total"), 0.0);
    assert_eq!(get("huskies_fenced_results_total"), 0.0);
    assert_eq!(get(r#"huskies_run_duration_seconds_count{outcome="succeeded"}"#), 3.0);
    // The stand-in runs 300 ms plus up to 300 ms of jitter.
    let sum = get(r#"huskies_run_duration_seconds_sum{outcome="succeeded"}"#);
    assert!((0.9..60.0).contains(&sum), "run durations sum to {sum} s");
    assert_eq!(get(r#"huskies_run_duration_seconds_bucket{outcome="succeeded",le="+Inf"}"#), 3.0);
    assert_eq!(get(r#"huskies_stories{stage="qa"}"#), 3.0);
    assert_eq!(get("huskies_peers_connected"), 1.0);
    assert!(get("huskies_sync_messages_received_total") > 0.0);
    assert!(get("huskies_sync_sent_bytes_total") > 0.0);

    // The server: unauthenticated on --metrics-listen, and on its main
    // port with --read-only-dashboard.
    let (code, text) = scrape(&format!("http://{metrics_listen}/metrics"), None);
    assert_eq!(code, 200);
    let s = parse_metrics(&text);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get(r#"huskies_stories{stage="qa"}"#), 3.0);
    assert_eq!(get(r#"huskies_stories{stage="current"}"#), 0.0);
    assert_eq!(get("huskies_stories_failed"), 0.0);
    assert_eq!(get("huskies_claims_total"), 0.0, "the server runs nothing");
    assert_eq!(get("huskies_peers_connected"), 1.0);
    assert!(get("huskies_document_changes") >= 6.0, "3 adds and 3 claims at least");
    assert!(get("huskies_document_bytes") > 0.0);
    for kind in ["malformed", "protocol", "identity", "revoked", "peer_limit", "budget", "sync", "heartbeat"] {
        assert_eq!(get(&format!("huskies_peers_rejected_total{{kind=\"{kind}\"}}")), 0.0);
    }
    let (code, _) = scrape(&format!("http://127.0.0.1:{}/metrics", c.port), None);
    assert_eq!(code, 200, "--read-only-dashboard opens reads");

    // Read-only: reads without a login, never writes.
    let (code, _) = scrape(&format!("http://127.0.0.1:{}/api/status", c.port), None);
    assert_eq!(code, 200);
    let r = http()
        .post(format!("http://127.0.0.1:{}/api/stories", c.port))
        .send_json(json!({ "title": "not without a login" }))
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

// ---- sessions and CSRF --------------------------------------------------------

#[test]
fn sessions_need_the_key_and_actions_need_the_csrf_token() {
    let c = Cluster::new("csrf");
    let base = format!("http://127.0.0.1:{}", c.port);
    // Nothing without a login (no --read-only-dashboard).
    for path in ["/ui/events", "/api/status", "/metrics"] {
        assert_eq!(scrape(&format!("{base}{path}"), None).0, 401, "{path}");
    }
    let r = http().post(format!("{base}/ui/login")).send_json(json!({ "key": "wrong" })).unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mut r = http().post(format!("{base}/ui/login")).send_json(json!({ "key": c.key })).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "cookie {cookie:?} lacks {attr}");
    }
    let session: Value = r.body_mut().read_json().unwrap();
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("require-trusted-types-for 'script'"), "{csp}");

    let post = |csrf: Option<&str>| {
        let mut req = http().post(format!("{base}/api/stories")).header("cookie", &cookie);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.send_json(json!({ "title": "via a session" })).unwrap().status().as_u16()
    };
    assert_eq!(post(None), 403, "a session without its CSRF token cannot act");
    assert_eq!(post(Some("0000")), 403);
    assert_eq!(post(Some(&csrf)), 201);
    let status = http().get(format!("{base}/api/status")).header("cookie", &cookie).call().unwrap();
    assert_eq!(status.status().as_u16(), 200, "a session reads");
    // The CLI tells a script "refused" (4) from "unreachable" (3).
    let cli_exit = |server: &str, key: &str| {
        let out = Command::new(support::EXE).args(["status", "--server", server, "--key", key]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = cli_exit(&base, "wrong");
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("missing or wrong admin key"), "{err}");
    let (code, err) = cli_exit(&format!("http://127.0.0.1:{}", support::free_port()), &c.key);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    // Logged out, the cookie is worth nothing.
    let r =
        http().post(format!("{base}/ui/logout")).header("cookie", &cookie).header("x-csrf-token", &csrf).send_empty();
    assert_eq!(r.unwrap().status().as_u16(), 200);
    let r = http().get(format!("{base}/api/status")).header("cookie", &cookie).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

// ---- the browser ---------------------------------------------------------------

/// chromedriver and the Chromium it starts, in a process group of their
/// own: all of it is killed on drop, whatever the test did.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: support::tempdir::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: no {CHROMEDRIVER} or {CHROMIUM} (apt-get install chromium chromium-driver; .ci/run does)");
        return None;
    }
    let port = support::free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let profile = support::tempdir::TempDir::new("chromium-profile");
    let mut b = Browser { driver, client: None, _profile: profile };
    wait_for("chromedriver", Duration::from_secs(20), || {
        http().get(format!("http://127.0.0.1:{port}/status")).call().is_ok()
    });
    // The flags that keep Chromium off a closed network and quiet.
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", b._profile.0.display()),
            ]
        }
    });
    let Value::Object(caps) = caps else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    b.client = Some(client);
    Some(b)
}

impl Browser {
    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn js(&self, script: &str) -> Value {
        self.c().execute(script, vec![]).await.unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Polls `script` until it returns something truthy; returns it.
    async fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        #[allow(clippy::disallowed_methods)] // wall-clock wait for a real browser
        let start = Instant::now();
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if start.elapsed() > timeout {
                let page = self
                    .js("return [document.getElementById('feed').textContent, \
                         [...document.querySelectorAll('[data-story]')].map(c => c.closest('.column').dataset.stage + ': ' + c.textContent)]")
                    .await;
                panic!("timed out after {timeout:?} waiting for {what}; the page shows {page:#}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The column a story's card is in, or null.
    async fn column_of(&self, id: &str) -> Value {
        self.js(&format!(
            "const c = document.querySelector('[data-story=\"{id}\"]'); return c ? c.closest('.column').dataset.stage : null;"
        ))
        .await
    }
}

fn add(c: &Cluster, id: &str, title: &str, stage: &str) {
    let r = http()
        .post(format!("http://127.0.0.1:{}/api/stories", c.port))
        .header("authorization", &format!("Bearer {}", c.key))
        .send_json(json!({ "id": id, "title": title, "stage": stage }))
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

fn move_story(c: &Cluster, id: &str, stage: &str) {
    let r = http()
        .post(format!("http://127.0.0.1:{}/api/stories/{id}/move", c.port))
        .header("authorization", &format!("Bearer {}", c.key))
        .send_json(json!({ "stage": stage }))
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

const HOSTILE_TITLE: &str = r#"<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> & "q""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let Some(b) = browser().await else { return };
    let mut c = Cluster::new("dashboard");
    c.start_agent(1, 1500);
    // agent-2 also works qa, where every run fails: stories end up failed.
    let exe = support::EXE;
    let agents = format!(
        "[agents.current]\ncommand = {exe:?}\nargs = [\"stand-in\", \"--duration-ms\", \"1500\", \"--jitter-ms\", \"300\"]\n\
         [agents.qa]\ncommand = {exe:?}\nargs = [\"stand-in\", \"--duration-ms\", \"100\", \"--fail-rate\", \"1\"]\n"
    );
    c.start_agent_with(2, "127.0.0.1", &agents);
    add(&c, "xss", HOSTILE_TITLE, "backlog");
    add(&c, "lat", "latency probe", "backlog");
    let base = format!("http://127.0.0.1:{}/", c.port);

    // Logged out: the login form, no board, no feed.
    b.c().goto(&base).await.unwrap();
    b.until("the login form", Duration::from_secs(10), "return !document.getElementById('login').hidden").await;
    assert_eq!(b.js("return document.getElementById('app').hidden").await, json!(true));

    // The link `huskies dashboard` prints logs in and leaves no key behind.
    let link = cli(&["dashboard", "--server", &format!("http://127.0.0.1:{}", c.port), "--key", &c.key]);
    b.c().goto(link.trim()).await.unwrap();
    b.until("the board", Duration::from_secs(10), "return document.querySelector('[data-story=\"lat\"]')").await;
    assert_eq!(b.js("return location.href").await, json!(base), "the key is gone from the address bar");
    assert_eq!(b.js("return document.getElementById('feed').textContent").await, json!("live"));

    // A hostile title is text, never markup.
    let title = b.c().find(Locator::Css("[data-story=\"xss\"] .title")).await.unwrap().text().await.unwrap();
    assert_eq!(title, HOSTILE_TITLE);
    assert_eq!(b.js("return window.__pwned === undefined").await, json!(true));
    assert_eq!(b.js("return document.querySelectorAll('#board script, #board img').length").await, json!(0));

    // The merge queue panel: a story in `merge` with no merge node shows
    // as waiting, its hostile title as text.
    add(&c, "mq", HOSTILE_TITLE, "merge");
    b.until(
        "mq in the merge queue",
        Duration::from_secs(10),
        "const li = document.querySelector('#queue-order li[data-story=\"mq\"]'); \
         return li && /waiting for a merge node/.test(li.textContent);",
    )
    .await;
    assert_eq!(b.js("return document.getElementById('queue-count').textContent.trim()").await, json!("1"));
    assert_eq!(
        b.js("return document.querySelectorAll('#queue-panel script, #queue-panel img').length").await,
        json!(0)
    );
    assert_eq!(b.js("return window.__pwned === undefined").await, json!(true));

    // Stories move live as agents work: seen in `current` held by an
    // agent, then in `qa`.
    add(&c, "live-1", "moves on its own", "current");
    b.until(
        "live-1 held in current",
        Duration::from_secs(20),
        "const c = document.querySelector('[data-story=\"live-1\"]'); \
         return c && c.closest('.column').dataset.stage === 'current' && /held by agent-/.test(c.textContent);",
    )
    .await;
    b.until(
        "live-1 in qa",
        Duration::from_secs(30),
        "const c = document.querySelector('.column[data-stage=\"qa\"] [data-story=\"live-1\"]'); return !!c;",
    )
    .await;

    // How long a stage change takes to reach the board (an API move, seen
    // in the page; polled every 10 ms). Moves are 500 ms apart: the feed
    // sends at most one update per 200 ms, so back-to-back moves would
    // measure that pacing instead.
    let mut lags_ms = Vec::new();
    for (i, to) in ["done", "backlog", "done", "backlog", "done", "backlog", "done"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        move_story(&c, "lat", to);
        let script = format!(
            "const c = document.querySelector('.column[data-stage=\"{to}\"] [data-story=\"lat\"]'); return !!c;"
        );
        b.until(&format!("move {i} to {to}"), Duration::from_secs(10), &script).await;
        lags_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lags_ms.sort_by(f64::total_cmp);
    println!(
        "stage change to board: median {:.0} ms, max {:.0} ms over {} moves",
        lags_ms[lags_ms.len() / 2],
        lags_ms[lags_ms.len() - 1],
        lags_ms.len()
    );

    // A story added from the page shows up in `huskies status`.
    b.c().find(Locator::Id("add-title")).await.unwrap().send_keys("Added from the page").await.unwrap();
    b.c().find(Locator::Id("add-body")).await.unwrap().send_keys("Typed into the dashboard.").await.unwrap();
    b.c().find(Locator::Css("#add-form button[type=submit]")).await.unwrap().click().await.unwrap();
    b.until(
        "the add to succeed",
        Duration::from_secs(10),
        "return /^added /.test(document.getElementById('add-error').textContent)",
    )
    .await;
    let server = format!("http://127.0.0.1:{}", c.port);
    let status: Value =
        serde_json::from_str(&cli(&["status", "--server", &server, "--key", &c.key, "--json"])).unwrap();
    let added = status["stories"].as_array().unwrap().iter().find(|s| s["title"] == "Added from the page");
    let added = added.expect("the story added from the page is in `huskies status`");
    assert_eq!(added["stage"], "backlog");

    // Move from the page: open the card, pick a stage, press Move.
    b.c().find(Locator::Css("[data-story=\"lat\"]")).await.unwrap().click().await.unwrap();
    b.until(
        "the detail",
        Duration::from_secs(10),
        "return document.getElementById('detail-title').textContent === 'latency probe'",
    )
    .await;
    assert_eq!(b.js("return document.getElementById('detail-body').textContent").await, json!("(no body)"));
    b.js("const s = document.getElementById('detail-stage'); s.value = 'merge'; return true;").await;
    b.c().find(Locator::Id("detail-move")).await.unwrap().click().await.unwrap();
    b.until(
        "lat in merge",
        Duration::from_secs(10),
        "return !!document.querySelector('.column[data-stage=\"merge\"] [data-story=\"lat\"]')",
    )
    .await;
    assert!(c.stages().iter().any(|(id, stage, _)| id == "lat" && stage == "merge"));

    // Open by id (archived stories too, from cold storage): an unknown id
    // says so and leaves nothing of the story shown before; a known opens.
    let find = |id: &'static str| {
        let b = &b;
        async move {
            b.js(&format!("document.getElementById('find-id').value = '{id}'; return true;")).await;
            b.c().find(Locator::Css("#find-form button[type=submit]")).await.unwrap().click().await.unwrap();
        }
    };
    find("never-was").await;
    b.until(
        "the unknown id reported",
        Duration::from_secs(10),
        "return /^cannot load: .*never-was/.test(document.getElementById('detail-meta').textContent) \
         && document.getElementById('detail-body').textContent === '' \
         && document.querySelectorAll('#detail-runs tbody tr').length === 0 \
         && document.getElementById('detail-actions').hidden",
    )
    .await;
    find("lat").await;
    b.until(
        "lat opened by id",
        Duration::from_secs(10),
        "return document.getElementById('detail-title').textContent === 'latency probe' \
         && !document.getElementById('detail-actions').hidden",
    )
    .await;

    // Every qa run fails: live-1 gives up there and stands out as failed.
    b.until(
        "live-1 failed",
        Duration::from_secs(30),
        "const c = document.querySelector('.column[data-stage=\"qa\"] [data-story=\"live-1\"]'); \
         return c && c.classList.contains('failed') && c.querySelector('.badge').textContent === 'FAILED';",
    )
    .await;

    // Its detail: the runs (one success in current, failures in qa), where
    // its log is, and a Retry that clears the failure.
    b.c().find(Locator::Css("[data-story=\"live-1\"]")).await.unwrap().click().await.unwrap();
    b.until(
        "live-1's runs",
        Duration::from_secs(10),
        "return document.querySelectorAll('#detail-runs tbody tr.outcome-succeeded').length === 1 \
         && document.querySelectorAll('#detail-runs tbody tr.outcome-failed').length >= 1",
    )
    .await;
    b.until(
        "where its log is",
        Duration::from_secs(10),
        "return /kept by agent-/.test(document.getElementById('detail-log').textContent)",
    )
    .await;
    b.until("the retry button", Duration::from_secs(10), "return !document.getElementById('detail-retry').hidden")
        .await;
    b.c().find(Locator::Id("detail-retry")).await.unwrap().click().await.unwrap();
    wait_for("live-1 retried", Duration::from_secs(10), || {
        let s = support::status(c.port, &c.key).unwrap_or_default();
        s["stories"].as_array().into_iter().flatten().any(|x| x["id"] == "live-1" && x["failed"] == false)
    });

    // Nodes: both agents alive and linked; one killed shows dead.
    b.until(
        "two agents alive and linked",
        Duration::from_secs(10),
        "return ['agent-1','agent-2'].every(n => { const r = document.querySelector(`tr[data-node=\"${n}\"]`); \
         return r && r.dataset.state === 'alive' && r.textContent.includes('linked'); })",
    )
    .await;
    let shot = b.c().screenshot().await.unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    let out = std::env::var("HUSKIES_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| c.root().join("board.png"));
    std::fs::write(&out, &shot).unwrap();
    c.kill("agent-2", libc::SIGKILL);
    b.until(
        "agent-2 dead on the board",
        Duration::from_secs(15),
        "const r = document.querySelector('tr[data-node=\"agent-2\"]'); return r && r.dataset.state === 'dead';",
    )
    .await;

    // Page weight: what the browser fetched for the page, from its own
    // resource timing.
    let weight = b
        .js("return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')) \
             .map(e => [e.name, e.transferSize, e.encodedBodySize]);")
        .await;
    let (mut load, mut total) = (0, 0);
    for e in weight.as_array().unwrap() {
        println!("fetched {} {} bytes on the wire ({} body)", e[0], e[1], e[2]);
        let bytes = e[1].as_u64().unwrap_or(0);
        total += bytes;
        let name = e[0].as_str().unwrap_or_default();
        if name == base || name.ends_with("/ui/app.js") || name.ends_with("/ui/app.css") {
            load += bytes;
        }
    }
    println!("page load {load} bytes on the wire (page, script, style); {total} bytes over the whole test");
    assert!(load < 100_000, "the page stays light: {load} bytes");
    assert_eq!(b.column_of("xss").await, json!("backlog"));
    let client = b.client.clone();
    if let Some(client) = client {
        let _ = client.close().await;
    }
}

/// Takes the README's screenshot of a running demo's board:
/// `huskies demo --keep`, then
/// `HUSKIES_DASHBOARD_URL=<the printed link> cargo test --test dashboard -- --ignored screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running demo; see its doc comment"]
async fn screenshot_of_a_running_demo() {
    let url = std::env::var("HUSKIES_DASHBOARD_URL").expect("HUSKIES_DASHBOARD_URL");
    let Some(b) = browser().await else { return };
    // Tall enough for the nodes under the board.
    b.c().set_window_size(1400, 1250).await.unwrap();
    b.c().goto(&url).await.unwrap();
    b.until("the board", Duration::from_secs(10), "return document.querySelectorAll('[data-story]').length > 0").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shot = b.c().screenshot().await.unwrap();
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png");
    std::fs::write(out, shot).unwrap();
    println!("wrote {out}");
}
