//! Prometheus metrics of one node (`GET /metrics`, text format 0.0.4).
//!
//! Counters are bumped by the node task as the engine's outputs and events
//! go by; gauges (stories by stage, document size) are set from the engine
//! when a scrape asks, so an idle node does no metric work. The same
//! counters feed the `counters` of `GET /api/status`: one source.

use std::collections::BTreeMap;
use std::time::Instant;

use huskies_engine::{Event, RejectKind, Stage, StoryId, Token};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::Counters;

type Label = [(&'static str, &'static str); 1];

/// How a run ended, for the run-duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Its result advanced the story.
    Succeeded,
    Failed,
    /// Stopped by the engine: claim lost, story moved, or hung.
    Stopped,
    /// Its push was fenced by a newer claim.
    Fenced,
}

impl RunEnd {
    fn as_str(self) -> &'static str {
        match self {
            RunEnd::Succeeded => "succeeded",
            RunEnd::Failed => "failed",
            RunEnd::Stopped => "stopped",
            RunEnd::Fenced => "fenced",
        }
    }
}

/// Runs whose start time is kept for the histogram. A run whose end the
/// node never hears of (its process outlived a restart) must not grow the
/// map for ever.
const MAX_TIMED_RUNS: usize = 4_096;

pub struct Metrics {
    registry: Registry,
    claims: Counter,
    reclaims: Counter,
    claim_conflicts: Counter,
    fenced: Counter,
    stale_results: Counter,
    values_refused: Counter,
    advanced: Counter,
    runs_started: Counter,
    runs_succeeded: Counter,
    runs_failed: Counter,
    runs_stopped: Counter,
    run_duration_seconds: Family<Label, Histogram>,
    sync_messages_in: Counter,
    sync_messages_out: Counter,
    sync_bytes_in: Counter,
    sync_bytes_out: Counter,
    /// Within `sync_bytes_out`: heartbeat envelopes (the membership
    /// traffic a node pays for the fleet's size).
    heartbeat_bytes_out: Counter,
    /// Heartbeats checked, and what checking them cost: signature checks
    /// and chain hashes (`liveness/chain.rs`).
    heartbeat_checks: Family<Label, Counter>,
    peers_connected: Gauge,
    peers_rejected: Family<Label, Counter>,
    stories: Family<Label, Gauge>,
    stories_failed: Gauge,
    document_bytes: Gauge,
    document_changes: Gauge,
    epoch: Gauge,
    landed: Counter,
    land_conflicts: Counter,
    land_gate_failures: Counter,
    land_batches: Counter,
    land_batch_size: Histogram,
    merge_to_landed_seconds: Histogram,
    /// When each story was seen reaching `merge` (bounded like `started`).
    reached_merge: std::sync::Mutex<BTreeMap<StoryId, Instant>>,
    /// When each of our runs started (node task only).
    started: std::sync::Mutex<BTreeMap<(StoryId, Token), Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("huskies"),
            claims: Counter::default(),
            reclaims: Counter::default(),
            claim_conflicts: Counter::default(),
            fenced: Counter::default(),
            stale_results: Counter::default(),
            values_refused: Counter::default(),
            advanced: Counter::default(),
            runs_started: Counter::default(),
            runs_succeeded: Counter::default(),
            runs_failed: Counter::default(),
            runs_stopped: Counter::default(),
            // 0.5 s to about 2.3 h.
            run_duration_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.5, 2.0, 15))),
            sync_messages_in: Counter::default(),
            sync_messages_out: Counter::default(),
            sync_bytes_in: Counter::default(),
            sync_bytes_out: Counter::default(),
            heartbeat_bytes_out: Counter::default(),
            heartbeat_checks: Family::default(),
            peers_connected: Gauge::default(),
            peers_rejected: Family::default(),
            stories: Family::default(),
            stories_failed: Gauge::default(),
            document_bytes: Gauge::default(),
            document_changes: Gauge::default(),
            epoch: Gauge::default(),
            landed: Counter::default(),
            land_conflicts: Counter::default(),
            land_gate_failures: Counter::default(),
            land_batches: Counter::default(),
            land_batch_size: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0]),
            // 1 s to about 4.5 h.
            merge_to_landed_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            reached_merge: Default::default(),
            started: Default::default(),
        };
        let r = &mut m.registry;
        r.register("claims", "Claims this node won", m.claims.clone());
        r.register("reclaims", "Claims taken over from a dead node", m.reclaims.clone());
        r.register("claim_conflicts", "Claims of ours another node's concurrent claim beat", m.claim_conflicts.clone());
        r.register("fenced_results", "Pushes of ours a newer claim fenced at the git remote", m.fenced.clone());
        r.register("stale_results", "Results that arrived for a superseded claim", m.stale_results.clone());
        r.register(
            "values_refused",
            "Values of the document that broke the schema and were not believed",
            m.values_refused.clone(),
        );
        r.register("advanced", "Stories this node advanced to the next stage", m.advanced.clone());
        r.register("runs_started", "Agent runs started", m.runs_started.clone());
        r.register("runs_succeeded", "Agent runs whose result advanced the story", m.runs_succeeded.clone());
        r.register("runs_failed", "Agent runs or pushes that failed", m.runs_failed.clone());
        r.register("runs_stopped", "Agent runs stopped: claim lost, story moved, or hung", m.runs_stopped.clone());
        r.register(
            "run_duration_seconds",
            "Wall time of agent runs, by how they ended",
            m.run_duration_seconds.clone(),
        );
        r.register("sync_messages_received", "Peer messages received", m.sync_messages_in.clone());
        r.register("sync_messages_sent", "Peer messages sent", m.sync_messages_out.clone());
        r.register("sync_received_bytes", "Bytes of peer messages received", m.sync_bytes_in.clone());
        r.register("sync_sent_bytes", "Bytes of peer messages sent", m.sync_bytes_out.clone());
        r.register(
            "heartbeat_sent_bytes",
            "Bytes of heartbeat envelopes sent (own beats and relays), counted within sync_sent_bytes",
            m.heartbeat_bytes_out.clone(),
        );
        r.register(
            "heartbeat_checks",
            "Heartbeats checked (what=beats), and the signature checks and chain hashes that cost (what=signatures, hashes)",
            m.heartbeat_checks.clone(),
        );
        r.register("peers_connected", "Peers with a finished handshake", m.peers_connected.clone());
        r.register("peers_rejected", "Peers disconnected for breaking the protocol, by kind", m.peers_rejected.clone());
        r.register("stories", "Stories by stage (removed stories not counted)", m.stories.clone());
        r.register("stories_failed", "Stories that gave up after their last attempt", m.stories_failed.clone());
        r.register("document_bytes", "Size of the pipeline document on disk", m.document_bytes.clone());
        r.register("document_changes", "Changes in the pipeline document's history", m.document_changes.clone());
        r.register(
            "epoch",
            "The epoch of this node's document (a new one starts from the live state)",
            m.epoch.clone(),
        );
        r.register("landed", "Stories this node landed on the default branch", m.landed.clone());
        r.register(
            "land_conflicts",
            "Stories landing sent back to current for a merge conflict",
            m.land_conflicts.clone(),
        );
        r.register(
            "land_gate_failures",
            "Stories landing sent back to current for a failed gate",
            m.land_gate_failures.clone(),
        );
        r.register("land_batches", "Landing batches this node built and tested", m.land_batches.clone());
        r.register("land_batch_size", "Stories per landing batch", m.land_batch_size.clone());
        r.register(
            "merge_to_landed_seconds",
            "Time from a story reaching merge (as this node saw it) to this node landing it",
            m.merge_to_landed_seconds.clone(),
        );
        for kind in RejectKind::ALL {
            // Every kind shows, at zero, before its first rejection.
            let _ = m.peers_rejected.get_or_create(&[("kind", kind.as_str())]);
        }
        for end in [RunEnd::Succeeded, RunEnd::Failed, RunEnd::Stopped, RunEnd::Fenced] {
            let _ = m.run_duration_seconds.get_or_create(&[("outcome", end.as_str())]);
        }
        m
    }

    pub fn sync_received(&self, bytes: usize) {
        self.sync_messages_in.inc();
        self.sync_bytes_in.inc_by(bytes as u64);
    }

    pub fn sync_sent(&self, bytes: usize) {
        self.sync_messages_out.inc();
        self.sync_bytes_out.inc_by(bytes as u64);
    }

    /// Catches the heartbeat counters up with the engine's own counts
    /// since start: bytes sent, and beats checked and what they cost.
    pub fn set_heartbeats(&self, sent_bytes: u64, checks: huskies_engine::BeatChecks) {
        catch_up(&self.heartbeat_bytes_out, sent_bytes);
        for (what, total) in [("beats", checks.beats), ("signatures", checks.signatures), ("hashes", checks.hashes)] {
            catch_up(&self.heartbeat_checks.get_or_create(&[("what", what)]), total);
        }
    }

    pub fn run_started(&self, story: &StoryId, token: Token, now: Instant) {
        self.runs_started.inc();
        remember(&self.started, (story.clone(), token), now, true);
    }

    /// A run ended; its duration goes into the histogram once (the first
    /// end heard wins: a stopped run may report a failure after).
    pub fn run_ended(&self, story: &StoryId, token: Token, end: RunEnd, now: Instant) {
        match end {
            RunEnd::Succeeded => self.runs_succeeded.inc(),
            RunEnd::Failed => self.runs_failed.inc(),
            RunEnd::Stopped => self.runs_stopped.inc(),
            RunEnd::Fenced => 0,
        };
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner()).remove(&(story.clone(), token));
        if let Some(t) = started {
            let secs = now.saturating_duration_since(t).as_secs_f64();
            self.run_duration_seconds.get_or_create(&[("outcome", end.as_str())]).observe(secs);
        }
    }

    /// Counts what an engine event says; run ends are timed.
    pub fn observe(&self, e: &Event, now: Instant) {
        match e {
            Event::Claimed { reclaimed_from, .. } => {
                self.claims.inc();
                if reclaimed_from.is_some() {
                    self.reclaims.inc();
                }
            }
            Event::ClaimLost { .. } => {
                self.claim_conflicts.inc();
            }
            Event::Advanced { story, token, .. } => {
                self.advanced.inc();
                self.run_ended(story, *token, RunEnd::Succeeded, now);
            }
            Event::RunFailed { story, token, .. } => self.run_ended(story, *token, RunEnd::Failed, now),
            Event::StaleResult { .. } => {
                self.stale_results.inc();
            }
            Event::ValueRefused { .. } => {
                self.values_refused.inc();
            }
            Event::Fenced { story, token, .. } => {
                self.fenced.inc();
                self.run_ended(story, *token, RunEnd::Fenced, now);
            }
            Event::PeerRejected { kind, .. } => {
                self.peers_rejected.get_or_create(&[("kind", kind.as_str())]).inc();
            }
            // Every write of a stage, local or merged, shows as StageChanged.
            Event::StageChanged { story, to: Stage::Merge, .. } => {
                remember(&self.reached_merge, story.clone(), now, false);
            }
            Event::Landed { story, .. } => {
                self.landed.inc();
                let reached = self.reached_merge.lock().unwrap_or_else(|p| p.into_inner()).remove(story);
                if let Some(t) = reached {
                    self.merge_to_landed_seconds.observe(now.saturating_duration_since(t).as_secs_f64());
                }
            }
            Event::SentBack { story, reason, .. } => {
                self.reached_merge.lock().unwrap_or_else(|p| p.into_inner()).remove(story);
                if reason.starts_with("gate") {
                    self.land_gate_failures.inc();
                } else {
                    self.land_conflicts.inc();
                }
            }
            Event::BatchStarted { size, .. } => {
                self.land_batches.inc();
                self.land_batch_size.observe(*size as f64);
            }
            _ => {}
        }
        // Sent back or moved: the wait starts again when it returns. (A
        // story landed elsewhere ages out of the bounded map.)
        if let Event::StageChanged { story, to, .. } = e
            && !matches!(to, Stage::Merge | Stage::Done)
        {
            self.reached_merge.lock().unwrap_or_else(|p| p.into_inner()).remove(story);
        }
    }

    /// Sets the gauges from the node's state at scrape time.
    pub fn set_state<'a>(
        &self,
        stories: impl Iterator<Item = (Stage, bool, bool)> + 'a,
        peers: usize,
        document_bytes: u64,
        document_changes: usize,
    ) {
        let mut by_stage: BTreeMap<Stage, i64> = Stage::ALL.iter().map(|s| (*s, 0)).collect();
        let mut failed = 0;
        for (stage, is_failed, removed) in stories {
            if removed {
                continue;
            }
            *by_stage.entry(stage).or_default() += 1;
            failed += i64::from(is_failed);
        }
        for (stage, n) in by_stage {
            self.stories.get_or_create(&[("stage", stage.as_str())]).set(n);
        }
        self.stories_failed.set(failed);
        self.peers_connected.set(peers as i64);
        self.document_bytes.set(document_bytes as i64);
        self.document_changes.set(document_changes as i64);
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The registry and the cluster's cost ledger (its lines carry node,
    /// stage and model labels, known only at scrape time).
    pub fn encode_with(&self, costs: &crate::costs::Costs) -> String {
        let mut out = self.encode();
        // The registry's text ends with `# EOF`: the ledger goes before it.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let tail = out.split_off(eof);
        out.push_str(&ledger_text(costs));
        out.push_str(&tail);
        out
    }

    /// The counters `GET /api/status` shows.
    pub fn counters(&self) -> Counters {
        let rejected = RejectKind::ALL
            .iter()
            .map(|k| self.peers_rejected.get(&[("kind", k.as_str())]).map_or(0, |c| c.get()))
            .sum();
        Counters {
            claims: self.claims.get(),
            reclaims: self.reclaims.get(),
            claim_losses: self.claim_conflicts.get(),
            runs_started: self.runs_started.get(),
            runs_stopped: self.runs_stopped.get(),
            advanced: self.advanced.get(),
            runs_failed: self.runs_failed.get(),
            stale_results: self.stale_results.get(),
            peers_rejected: rejected,
            fenced: self.fenced.get(),
            landed: self.landed.get(),
            land_batches: self.land_batches.get(),
            land_conflicts: self.land_conflicts.get(),
            land_gate_failures: self.land_gate_failures.get(),
        }
    }
}

fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Notes when `key` started (`replace`: even if it was noted before), in a
/// map bounded to [`MAX_TIMED_RUNS`] by dropping the oldest entry.
fn remember<K: Ord + Clone>(map: &std::sync::Mutex<BTreeMap<K, Instant>>, key: K, now: Instant, replace: bool) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if !m.contains_key(&key)
        && m.len() >= MAX_TIMED_RUNS
        && let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
    {
        m.remove(&oldest);
    }
    if replace {
        m.insert(key, now);
    } else {
        m.entry(key).or_insert(now);
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label values are node ids, stage names and model names: escaped all the
/// same, since a model name is what an agent printed.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The cost ledger's all-time lines as Prometheus counters, and the day's
/// spend and budget as gauges.
fn ledger_text(costs: &crate::costs::Costs) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let all: Vec<_> = costs
        .lines
        .iter()
        .filter(|l| l.day == "all")
        .map(|l| {
            let labels = format!(
                "node=\"{}\",stage=\"{}\",model=\"{}\"",
                label(&l.node),
                label(l.line.stage.as_str()),
                label(&l.line.model)
            );
            (labels, l)
        })
        .collect();
    let _ = writeln!(out, "# HELP huskies_agent_cost_usd_total What coding agents cost, by the cluster's ledger.");
    let _ = writeln!(out, "# TYPE huskies_agent_cost_usd_total counter");
    for (labels, l) in &all {
        let _ = writeln!(out, "huskies_agent_cost_usd_total{{{labels}}} {}", l.line.cost_micro_usd as f64 / 1e6);
    }
    let _ = writeln!(out, "# HELP huskies_agent_tokens_total Tokens coding agents used, by the cluster's ledger.");
    let _ = writeln!(out, "# TYPE huskies_agent_tokens_total counter");
    for (labels, l) in &all {
        for (kind, n) in [
            ("input", l.line.input_tokens),
            ("output", l.line.output_tokens),
            ("cache_read", l.line.cache_read_tokens),
            ("cache_write", l.line.cache_write_tokens),
        ] {
            let _ = writeln!(out, "huskies_agent_tokens_total{{{labels},kind=\"{kind}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP huskies_agent_cost_today_usd What coding agents cost today (UTC), cluster-wide.");
    let _ = writeln!(out, "# TYPE huskies_agent_cost_today_usd gauge");
    let _ = writeln!(out, "huskies_agent_cost_today_usd {}", costs.spent_today_micro_usd as f64 / 1e6);
    if let Some(b) = costs.daily_budget_micro_usd {
        let _ = writeln!(out, "# HELP huskies_daily_budget_usd The cluster's daily budget.");
        let _ = writeln!(out, "# TYPE huskies_daily_budget_usd gauge");
        let _ = writeln!(out, "huskies_daily_budget_usd {}", b as f64 / 1e6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_families_and_gauges() {
        let m = Metrics::new();
        let id = StoryId::new("s1").unwrap();
        #[allow(clippy::disallowed_methods)] // any instant will do
        let t0 = Instant::now();
        m.run_started(&id, Token(1), t0);
        m.observe(
            &Event::Claimed { story: id.clone(), stage: Stage::Current, token: Token(1), reclaimed_from: None },
            t0,
        );
        m.observe(
            &Event::Advanced { story: id.clone(), from: Stage::Current, to: Stage::Qa, token: Token(1) },
            t0 + std::time::Duration::from_secs(3),
        );
        m.observe(
            &Event::PeerRejected { conn: huskies_engine::ConnId(1), kind: RejectKind::Budget, reason: "x".into() },
            t0,
        );
        m.set_state(
            [(Stage::Qa, false, false), (Stage::Qa, true, false), (Stage::Done, false, true)].into_iter(),
            2,
            10,
            7,
        );
        m.set_epoch(3);
        let text = m.encode();
        for line in [
            "huskies_claims_total 1",
            "huskies_runs_started_total 1",
            "huskies_runs_succeeded_total 1",
            "huskies_run_duration_seconds_count{outcome=\"succeeded\"} 1",
            "huskies_run_duration_seconds_sum{outcome=\"succeeded\"} 3.0",
            "huskies_peers_rejected_total{kind=\"budget\"} 1",
            "huskies_peers_rejected_total{kind=\"malformed\"} 0",
            "huskies_stories{stage=\"qa\"} 2",
            "huskies_stories{stage=\"done\"} 0",
            "huskies_stories_failed 1",
            "huskies_peers_connected 2",
            "huskies_document_changes 7",
            "huskies_epoch 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert_eq!(m.counters().peers_rejected, 1);
    }

    #[test]
    fn the_ledger_is_exported_with_its_labels_escaped() {
        let line = |day: &str, model: &str, cost| crate::costs::CostLine {
            node: "agent-1".into(),
            day: day.into(),
            line: huskies_engine::ledger::LedgerLine {
                stage: Stage::Current,
                model: model.into(),
                runs: 2,
                cost_micro_usd: cost,
                input_tokens: 4000,
                output_tokens: 200,
                cache_read_tokens: 7,
                cache_write_tokens: 0,
            },
        };
        let costs = crate::costs::Costs {
            today: Some("2026-12-02".into()),
            spent_today_micro_usd: 15_000,
            daily_budget_micro_usd: Some(1_000_000),
            lines: vec![line("all", "claude \"x\"", 15_000), line("2026-12-02", "m", 15_000)],
            ..Default::default()
        };
        let text = Metrics::new().encode_with(&costs);
        let labels = r#"node="agent-1",stage="current",model="claude \"x\"""#;
        for want in [
            format!("huskies_agent_cost_usd_total{{{labels}}} 0.015"),
            format!("huskies_agent_tokens_total{{{labels},kind=\"input\"}} 4000"),
            format!("huskies_agent_tokens_total{{{labels},kind=\"cache_read\"}} 7"),
            "huskies_agent_cost_today_usd 0.015".to_owned(),
            "huskies_daily_budget_usd 1".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == want), "no line {want:?} in\n{text}");
        }
        assert_eq!(text.matches("huskies_agent_cost_usd_total{").count(), 1, "day lines are not counters");
    }
}
