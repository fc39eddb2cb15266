//! The engine's config from the node's options and project, and reloads
//! of `project.toml` while the node runs.

use std::sync::{Arc, Mutex};

use huskies_engine::{ClusterSettings, Command, Config};
use tokio::sync::mpsc;

use super::{NodeLoop, NodeOptions};
use crate::project::ProjectConfig;

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
    if let Some(n) = p.epoch_changes_per_live_story {
        c.epoch_changes_per_live_story = n;
    }
    if let Some(ms) = p.sync_interval_ms {
        c.sync_interval_ms = ms;
        c.mesh_sync_interval_ms = c.mesh_sync_interval_ms.max(ms);
    }
    c.dial_backoff_max_ms = c.dial_backoff_max_ms.min(p.claim_timeout_ms / 2);
    c
}

impl NodeLoop {
    /// `project.toml` changed: agent commands and stages take effect at
    /// once; cluster settings are written by the server, and compared with
    /// the cluster's at an agent.
    pub(super) fn reload(&mut self, project_root: &std::path::Path, project: &Arc<Mutex<ProjectConfig>>) {
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
}

/// Watches `project.toml` (its directory, since editors replace the file by
/// rename); sends on `changed` for every event touching it. `None` when no
/// watcher can be set up.
pub(super) fn watch_config(path: &std::path::Path, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
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
