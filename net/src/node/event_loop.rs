//! The node's event loop: feeds the engine inputs (peer messages, run
//! results, commands, timeouts, persists confirmed) and carries out its
//! outputs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huskies_engine::{Command, CommandId, ConnId, Event, Input, Millis, Output, PersistSeq};
use tokio::sync::{mpsc, oneshot};

use super::{NodeError, NodeLoop, NodeMsg, unix_now_ms, watch_config};
use crate::metrics::RunEnd;
use crate::project::ProjectConfig;
use crate::ws;

impl NodeLoop {
    pub(super) fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    pub(super) async fn run(
        &mut self,
        mut rx: mpsc::Receiver<NodeMsg>,
        mut inputs: mpsc::Receiver<Input>,
        mut persisted: mpsc::UnboundedReceiver<std::io::Result<PersistSeq>>,
        project: Arc<Mutex<ProjectConfig>>,
        project_root: PathBuf,
    ) -> Result<(), NodeError> {
        let config_path = ProjectConfig::path(&project_root);
        // Config changes arrive from a file watcher; where one cannot be
        // set up (inotify limits), a poll every 2 s stands in.
        // One pending notice is enough: the reload reads the file once.
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        let watcher = watch_config(&config_path, changed_tx);
        let polling = watcher.is_none();
        let mut config_mtime = std::fs::metadata(&config_path).and_then(|m| m.modified()).ok();
        let mut poll = tokio::time::interval(Duration::from_secs(2));
        loop {
            if let Some(e) = self.failed.take() {
                drop(watcher);
                return Err(e);
            }
            let deadline = self.engine.poll_timeout().map(|t| self.epoch + Duration::from_millis(t.0));
            let sleep = tokio::time::sleep_until(
                deadline
                    .map(tokio::time::Instant::from_std)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(NodeMsg::Shutdown) => {
                        // A signed last beat to every peer: our stories
                        // are reclaimed now, not after the claim timeout.
                        self.internal_command(Command::Leave);
                        // The goodbye waits for its persist, like any
                        // output: see it written, then go.
                        while self.engine.awaiting_persist() && self.failed.is_none() {
                            match tokio::time::timeout(Duration::from_secs(2), persisted.recv()).await {
                                Ok(Some(done)) => self.handle_persisted(done),
                                _ => break,
                            }
                        }
                        break;
                    }
                    None => break,
                    Some(msg) => self.handle_msg(msg),
                },
                Some(input) = inputs.recv() => self.input(input),
                Some(done) = persisted.recv() => self.handle_persisted(done),
                _ = sleep => {
                    self.tell_wall_clock();
                    self.input(Input::Timeout);
                }
                Some(()) = changed.recv() => {
                    // Editors write in steps (truncate, write, rename): let
                    // them finish, then read once.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while changed.try_recv().is_ok() {}
                    self.reload(&project_root, &project);
                }
                _ = poll.tick(), if polling => {
                    let mtime = std::fs::metadata(&config_path).and_then(|m| m.modified()).ok();
                    if mtime != config_mtime {
                        config_mtime = mtime;
                        self.reload(&project_root, &project);
                    }
                }
            }
        }
        drop(watcher);
        tracing::info!("node stopping");
        Ok(())
    }

    /// The wall clock, for the cost ledger's day: once a minute is enough.
    pub(super) fn tell_wall_clock(&mut self) {
        let unix_ms = unix_now_ms();
        if unix_ms / 60_000 != self.wall_minute {
            self.wall_minute = unix_ms / 60_000;
            self.input(Input::WallClock { unix_ms });
        }
    }

    /// A command of the node's own (not from the API); its reply is logged.
    pub(super) fn internal_command(&mut self, command: Command) {
        self.next_command += 1;
        let id = CommandId(self.next_command);
        let (tx, mut rx) = oneshot::channel();
        self.pending_replies.insert(id, tx);
        self.input(Input::Command { id, command });
        // The engine answers within `handle`, so the reply is here now.
        match rx.try_recv() {
            Ok(Ok(reply)) => tracing::debug!(?reply, "internal command"),
            Ok(Err(e)) => tracing::error!(error = %e, "internal command refused"),
            Err(_) => {}
        }
    }

    /// Warns when this node's own file disagrees with the cluster's settings.
    pub(super) fn compare_settings(&self) {
        let Some(cluster) = self.engine.cluster_settings() else { return };
        let diff = self.local_settings.differences(cluster);
        if !diff.is_empty() {
            tracing::warn!(
                revision = cluster.revision,
                differences = %diff.join(", "),
                "project.toml disagrees with the cluster settings the server set (local vs cluster); using the cluster's"
            );
        }
    }

    pub(super) fn handle_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Input(Input::PeerClosed { conn }) => {
                // Only for conns we still hold (a hang-up needs no close).
                if self.conns.remove(&conn).is_some() || conn.is_outbound() {
                    self.input(Input::PeerClosed { conn });
                }
            }
            NodeMsg::Input(input) => self.input(input),
            NodeMsg::Command(command, reply) => {
                self.next_command += 1;
                let id = CommandId(self.next_command);
                self.pending_replies.insert(id, reply);
                self.input(Input::Command { id, command });
            }
            NodeMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            NodeMsg::Board(reply) => {
                let _ = reply.send(self.board());
            }
            NodeMsg::Queue(reply) => {
                let _ = reply.send(crate::queue::queue(&mut self.engine, &self.landed));
            }
            NodeMsg::Metrics(reply) => {
                let changes = self.engine.change_count();
                let stories = self.engine.stories().map(|(_, v)| (v.state.stage, v.state.failed, v.state.removed));
                self.metrics.set_state(
                    stories,
                    self.engine.peer_count(),
                    self.disk_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    changes,
                );
                self.metrics.set_epoch(self.engine.epoch());
                self.metrics.set_heartbeats(self.engine.sync_sent().beat_bytes, self.engine.beat_checks());
                let costs = crate::costs::Costs::of(&mut self.engine);
                let _ = reply.send(self.metrics.encode_with(&costs));
            }
            NodeMsg::Story(id, reply) => {
                let _ = reply.send(self.story_detail(&id));
            }
            NodeMsg::Accept { out, reply } => {
                self.next_inbound += 1;
                let conn = ConnId(self.next_inbound);
                self.conns.insert(conn, out);
                if reply.send(conn).is_ok() {
                    self.input(Input::PeerConnected { conn });
                } else {
                    self.conns.remove(&conn);
                }
            }
            NodeMsg::Connected { conn, out } => {
                self.conns.insert(conn, out);
                self.input(Input::PeerConnected { conn });
            }
            NodeMsg::Shutdown => {}
        }
    }

    pub(super) fn input(&mut self, input: Input) {
        if self.failed.is_some() {
            // Storage failed: nothing more is fed or carried out.
            return;
        }
        let version = self.engine.index_version();
        let mut next = Some(input);
        while let Some(input) = next.take().or_else(|| self.deferred.pop()) {
            if let Input::PeerMessage { bytes, .. } = &input {
                self.metrics.sync_received(bytes.len());
            }
            let now = self.now();
            self.engine.handle(now, input);
            while let Some(out) = self.engine.poll_output() {
                if self.failed.is_some() {
                    // Outputs after a failed write may reveal state that
                    // was never stored: none of them goes out.
                    break;
                }
                self.execute(out);
            }
        }
        // Events, and merges that change what stories or nodes show (a
        // claim by another node raises no event here).
        if std::mem::take(&mut self.changed) | (self.engine.index_version() != version) {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    pub(super) fn execute(&mut self, out: Output) {
        match out {
            Output::Persist { seq, kind, bytes } => {
                // Blocks only when 64 writes are queued: back-pressure.
                if self.writer.send((seq, kind, bytes)).is_err() {
                    let source = std::io::Error::other("the storage writer stopped");
                    self.failed = Some(NodeError::Storage { dir: self.opts.data_dir.clone(), source });
                }
            }
            Output::Send { conn, bytes } => {
                let len = bytes.len();
                if let Some(out) = self.conns.get(&conn)
                    && out.try_send(bytes).is_err()
                {
                    tracing::warn!(?conn, "peer too slow or gone; disconnecting");
                    // Dropping the sender closes the socket; the engine
                    // hears of it right after this batch of outputs.
                    self.conns.remove(&conn);
                    self.deferred.push(Input::PeerClosed { conn });
                } else {
                    self.metrics.sync_sent(len);
                }
            }
            Output::Dial { conn, address } => {
                self.rt.spawn(ws::dial(self.dialer.clone(), address, conn, self.tx.clone()));
            }
            Output::HangUp { conn } => {
                self.conns.remove(&conn);
            }
            Output::StartRun { story, title, stage, token, attempt, body, last_failure, resume } => {
                #[allow(clippy::disallowed_methods)] // run durations are wall time
                self.metrics.run_started(&story, token, Instant::now());
                let ctx = crate::runner::RunContext { body, last_failure, resume };
                self.runner.start(story, title, stage, token, attempt, ctx);
            }
            Output::StopRun { story, token } => {
                #[allow(clippy::disallowed_methods)]
                self.metrics.run_ended(&story, token, RunEnd::Stopped, Instant::now());
                self.runner.stop(&story, token);
            }
            Output::Push { story, token, stage } => {
                self.runner.finished(&story, token);
                self.runner.push(story, token, stage);
            }
            Output::InspectWorktree { story, token } => self.runner.inspect(story, token),
            Output::Land { batch, stories, ahead, .. } => self.runner.land(batch, ahead, stories),
            Output::CancelLand { batch } => self.runner.cancel_land(batch),
            Output::PruneWorktree { story } => self.runner.prune(story),
            Output::Reply { id, result } => {
                if let Some(tx) = self.pending_replies.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Output::Event(e) => self.observe(e),
        }
    }

    /// The writer made a persist durable (release what it covers), or
    /// failed: then the node stops, and the binary reports the error and
    /// exits non-zero. Nothing a failed write covers ever goes out.
    pub(super) fn handle_persisted(&mut self, done: std::io::Result<PersistSeq>) {
        match done {
            Ok(seq) => self.input(Input::Persisted { seq }),
            Err(source) => {
                if self.failed.is_none() {
                    self.failed = Some(NodeError::Storage { dir: self.opts.data_dir.clone(), source });
                }
            }
        }
    }

    pub(super) fn observe(&mut self, e: Event) {
        self.changed = true;
        #[allow(clippy::disallowed_methods)] // run durations are wall time
        self.metrics.observe(&e, Instant::now());
        #[allow(clippy::disallowed_methods)] // when a landing was seen is wall time
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.landed.observe(&self.engine, &e, unix_ms);
        match &e {
            Event::NodeRevoked { .. } => self.share_revocations(),
            Event::SettingsAdopted { .. } if !self.opts.is_server => self.compare_settings(),
            _ => {}
        }
        match &e {
            Event::PeerRejected { .. }
            | Event::StorageCorrupt { .. }
            | Event::RunFailed { .. }
            | Event::SettingsRejected { .. }
            | Event::ValueRefused { .. }
            | Event::EpochStarted { gap: true, .. }
            | Event::Fenced { .. } => {
                tracing::warn!(unix_ms, event = ?e)
            }
            // `unix_ms` lets a fleet's logs be laid side by side (`huskies
            // fleet-bench` times a change's spread from them).
            Event::PeerUp { .. } | Event::PeerDown { .. } | Event::StageChanged { .. } => {
                tracing::debug!(unix_ms, event = ?e)
            }
            _ => tracing::info!(unix_ms, event = ?e),
        }
    }

    pub(super) fn share_revocations(&self) {
        if let Ok(mut r) = self.revoked.write() {
            r.clone_from(&self.engine.revoked_keys());
        }
    }
}
