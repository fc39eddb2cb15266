//! One simulated node: an engine driven by madsim time and datagrams, with a
//! simulated agent, git remote and disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::hash::stable_hash;
use huskies_engine::{
    Command, CommandId, Config, Engine, Input, Millis, NodeId, Output, PersistKind, RunOutcome, Stage, StoryId, Token,
};
use madsim::net::Endpoint;
use madsim::time::TimeHandle;

use crate::link::{LinkEvent, Links, Packet};
use crate::oracle::{Oracle, View};

pub const PORT: u16 = 7000;
pub const TAG: u64 = 1;

/// The fake agent every simulated node runs.
pub type AgentProfile = huskies_engine::testkit::AgentModel;

/// A node's local clock: sim time scaled by a skew and shifted by jumps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    pub skew_ppm: i64,
    pub offset_ms: u64,
}

/// What survives a crash, plus the knobs the scenario turns while it runs.
pub struct NodeCtx {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub config: Config,
    pub agent: AgentProfile,
    pub seed: u64,
    pub oracle: Arc<Mutex<Oracle>>,
    /// Change signatures the cluster's nodes found good (`SigMemo`).
    pub sig_memo: huskies_engine::SigMemo,
    pub disk: Mutex<crate::disk::SimDisk>,
    /// Stories whose worktree holds a finished, unpushed commit.
    pub worktrees: Mutex<huskies_engine::testkit::world::Worktrees>,
    pub clock: Mutex<Clock>,
    pub restarts: Mutex<u64>,
    /// Publish a view (with a full save) this often; 0 = only when asked.
    pub publish_every_ms: u64,
    pub want_save_len: Mutex<bool>,
    /// Set when the next publish compares the index with a fresh read of
    /// the whole document (cleared by it).
    pub check_index: Mutex<bool>,
    /// Set for the final checks: the operator stops archiving, so the
    /// last views are not compared while an archive of the server's is
    /// still on its way to the agents (NotConverged in 20-33% of fresh
    /// long_history and slow_disk_epochs seeds).
    pub archiver_off: Mutex<bool>,
    /// As an operator would: move every done story to archived this often
    /// (0: never). Set on the server.
    pub archive_every_ms: u64,
    /// Die in the middle of the next move to a new epoch: the old document
    /// reaches cold storage, the new one never lands.
    pub tear_next_epoch: Mutex<bool>,
    /// Set by a torn move: the process is gone until the scenario restarts it.
    pub dead: Mutex<bool>,
    /// Torn moves so far.
    pub torn: Mutex<u64>,
    /// Links this node closed, by why.
    pub link_resets: Mutex<crate::link::Resets>,
    /// Heartbeat signatures checked and beat links hashed: by incarnations
    /// that ended, and by the one running.
    pub beat_checks: Mutex<[huskies_engine::BeatChecks; 2]>,
    /// Sync messages sent, likewise.
    pub sync_sent: Mutex<[huskies_engine::SyncSent; 2]>,
    /// Merges read whole (`doc/touched.rs`), per incarnation as above.
    pub full_reads: Mutex<[u64; 2]>,
    /// Landing batches called off, by why, likewise.
    pub call_offs: Mutex<[huskies_engine::landing::CallOffs; 2]>,
    /// How long one build and gate run of a landing takes.
    pub gate_ms: u64,
    /// Hostile writes this node is to make next (a Byzantine node: its
    /// own well-formed changes of anything, signed by it, issue 21).
    pub hostile_writes: Mutex<u32>,
    /// Its hostile writes attack the merge queue's cars only.
    pub hostile_cars: bool,
}

fn sim_ms() -> u64 {
    TimeHandle::current().elapsed().as_millis() as u64
}

impl NodeCtx {
    fn local_ms(&self) -> u64 {
        let c = *self.clock.lock().expect("clock lock");
        let t = sim_ms() as i128;
        let skewed = t + t * i128::from(c.skew_ppm) / 1_000_000;
        (skewed.max(0) as u64).saturating_add(c.offset_ms)
    }
}

struct SimRun {
    token: Token,
    /// `None`: the agent hangs.
    finish_at_ms: Option<u64>,
    outcome: RunOutcome,
}

/// A landing the driver works on: built (and its gates decided) when it
/// began; due to push, or to look at the branch again, at `due_ms`.
struct SimLand {
    batch: huskies_engine::landing::BatchId,
    stories: Vec<huskies_engine::landing::LandStory>,
    ahead: Vec<huskies_engine::landing::LandStory>,
    build: huskies_engine::testkit::trunk::TrunkBuild,
    due_ms: u64,
    tries: u32,
    cancelled: bool,
}

/// How often a landing built on a batch ahead looks whether it landed.
const LAND_POLL_MS: u64 = 100;

/// Builds and tests a landing loses to a default branch that keeps moving
/// before it reports failure (as `net::land` does).
const LAND_TRIES: u32 = 4;

struct SimNode {
    ctx: Arc<NodeCtx>,
    lands: Vec<SimLand>,
    engine: Engine,
    links: Links,
    runs: BTreeMap<StoryId, SimRun>,
    /// Driver answers due later: (due ms, input).
    later: Vec<(u64, Input)>,
    rng: u64,
    next_publish_ms: u64,
    next_archive_ms: u64,
    next_cmd: u64,
    /// Local time of the output being carried out.
    now_ms: u64,
    /// Send tasks spawned since this node last pruned madsim's task lists.
    spawned_since_prune: u32,
}

/// madsim keeps a weak reference to every task a node ever spawned, and
/// with it the task's record, until something counts the tasks: one send
/// task per flush and destination made them the largest single item of a
/// scale run's heap (45 of 92 MB at 3 x 3,000 under heaptrack). Counting
/// them every this many spawns drops the finished ones.
/// It changes no scheduling: the same seed gives the same trace.
const PRUNE_TASKS_EVERY: u32 = 4096;

/// The node's task; madsim re-runs it after a restart.
pub async fn run(ctx: Arc<NodeCtx>) {
    // After a restart the killed incarnation's socket may linger a moment.
    let ep = loop {
        match Endpoint::bind(ctx.addr).await {
            Ok(ep) => break ep,
            Err(_) => madsim::time::sleep(Duration::from_millis(10)).await,
        }
    };
    // The last incarnation's counts join those of the ones before it.
    end_incarnation(&ctx.beat_checks);
    end_incarnation(&ctx.sync_sent);
    end_incarnation(&ctx.full_reads);
    end_incarnation(&ctx.call_offs);
    let incarnation = {
        let mut r = ctx.restarts.lock().expect("restarts lock");
        *r += 1;
        *r
    };
    let seed = stable_hash(&[&ctx.seed.to_be_bytes(), &incarnation.to_be_bytes()]);
    let now = ctx.local_ms();
    let mut engine = Engine::new(ctx.config.clone(), ctx.id.clone(), seed, Millis(now));
    engine.share_sig_memo(ctx.sig_memo.clone());
    let idle = ctx.config.heartbeat_interval_ms * 4;
    let mut node = SimNode {
        links: Links::new(seed as u32, idle),
        engine,
        runs: BTreeMap::new(),
        lands: Vec::new(),
        later: Vec::new(),
        rng: seed,
        next_publish_ms: 0,
        next_archive_ms: 0,
        next_cmd: 0,
        now_ms: now,
        spawned_since_prune: 0,
        ctx: ctx.clone(),
    };
    *ctx.dead.lock().expect("dead lock") = false;
    // The last incarnation died with these writes unconfirmed.
    let bytes = {
        let mut disk = ctx.disk.lock().expect("disk lock");
        disk.crash();
        disk.stored.load()
    };
    node.input(Input::StorageLoaded { bytes });
    // What it told anyone before it died, it reads back now.
    let stories = node.engine.stories().map(|(id, v)| (id.clone(), v.state.clone()));
    node.ctx.oracle.lock().expect("oracle lock").check_restart(&node.ctx.id, stories);
    // `recv_from_raw` is not cancellation safe (a datagram handed to a
    // dropped receive is lost), so tasks receive and forwards into a
    // channel, whose receive can be timed out safely.
    let ep = Arc::new(ep);
    //
    // Several receivers, each always waiting on the endpoint, and an
    // unbounded channel: madsim's mailbox hands a backlog over newest first
    // (`swap_remove`), and each receive sleeps a few microseconds, so a
    // datagram left waiting there starves behind newer ones while traffic
    // goes on. With one receiver, that opened holes that outlived the
    // link's gap timeout: 2,508 links reset in one claim-storm seed where no
    // packet was lost. With `RECEIVERS` there is nearly always one waiting
    // and datagrams are handed over as they arrive; the link layer reorders
    // the few that latency swapped.
    let (tx, rx) = async_channel::unbounded();
    for _ in 0..RECEIVERS {
        let receiver = ep.clone();
        let tx = tx.clone();
        madsim::task::spawn(async move {
            while let Ok(got) = receiver.recv_from_raw(TAG).await {
                if tx.send(got).await.is_err() {
                    break;
                }
            }
        });
    }
    loop {
        if *node.ctx.dead.lock().expect("dead lock") {
            // Died mid-write: nothing more leaves this process.
            std::future::pending::<()>().await;
        }
        node.flush(&ep);
        let now = node.ctx.local_ms();
        let wait = node.next_deadline_ms().saturating_sub(now).max(1);
        if let Ok(Ok(first)) = madsim::time::timeout(Duration::from_millis(wait), rx.recv()).await {
            // Everything delivered by now is handled before any timer: a
            // hole whose datagram already waits here is not a hole.
            let mut got = Some(first);
            while let Some((payload, from)) = got.take().or_else(|| rx.try_recv().ok()) {
                match payload.downcast::<Vec<Packet>>() {
                    Ok(packets) => {
                        for packet in *packets {
                            node.handle_packet(packet, from);
                        }
                    }
                    Err(payload) => {
                        if let Ok(packet) = payload.downcast::<Packet>() {
                            node.handle_packet(*packet, from);
                        }
                    }
                }
            }
        }
        node.handle_time();
    }
}

/// Folds the running incarnation's counts (`[1]`) into the ended ones'.
fn end_incarnation<T: Copy + Default + std::ops::AddAssign>(counts: &Mutex<[T; 2]>) {
    let mut c = counts.lock().expect("counts lock");
    let running = std::mem::take(&mut c[1]);
    c[0] += running;
}

/// Tasks receiving a node's datagrams at once (see `run`).
const RECEIVERS: usize = 16;

impl SimNode {
    fn random(&mut self) -> u64 {
        self.rng = stable_hash(&[&self.rng.to_be_bytes()]);
        self.rng
    }

    fn next_deadline_ms(&self) -> u64 {
        let mut d = self.engine.poll_timeout().map(|t| t.0).unwrap_or(u64::MAX);
        d = d.min(self.links.next_deadline_ms().unwrap_or(u64::MAX));
        d = d.min(self.runs.values().filter_map(|r| r.finish_at_ms).min().unwrap_or(u64::MAX));
        d = d.min(self.later.iter().map(|(t, _)| *t).min().unwrap_or(u64::MAX));
        d = d.min(self.lands.iter().map(|l| l.due_ms).min().unwrap_or(u64::MAX));
        d = d.min(self.ctx.disk.lock().expect("disk lock").next_done_ms().unwrap_or(u64::MAX));
        if self.ctx.publish_every_ms > 0 {
            d = d.min(self.next_publish_ms);
        }
        d.min(self.ctx.local_ms() + 1_000)
    }

    fn handle_packet(&mut self, packet: Packet, from: SocketAddr) {
        let now = self.ctx.local_ms();
        if let Packet::Command(command) = packet {
            self.next_cmd += 1;
            self.input(Input::Command { id: CommandId(self.next_cmd), command });
            return;
        }
        let mut events = Vec::new();
        self.links.handle_packet(from, packet, now, &mut events);
        self.link_events(events);
    }

    fn link_events(&mut self, events: Vec<LinkEvent>) {
        for e in events {
            let input = match e {
                LinkEvent::Connected(conn) => Input::PeerConnected { conn },
                LinkEvent::Message(conn, bytes) => Input::PeerMessage { conn, bytes },
                LinkEvent::Closed(conn) => Input::PeerClosed { conn },
            };
            self.input(input);
        }
    }

    fn handle_time(&mut self) {
        self.ctx.beat_checks.lock().expect("beat checks lock")[1] = self.engine.beat_checks();
        self.ctx.sync_sent.lock().expect("sync sent lock")[1] = self.engine.sync_sent();
        self.ctx.full_reads.lock().expect("full reads lock")[1] = self.engine.full_reads();
        self.ctx.call_offs.lock().expect("call-offs lock")[1] = self.engine.call_offs();
        let now = self.ctx.local_ms();
        let landed = self.ctx.disk.lock().expect("disk lock").land_due(now);
        if let Some(seq) = landed {
            self.input(Input::Persisted { seq });
        }
        let mut events = Vec::new();
        let resets = self.links.handle_timeout(now, &mut events);
        self.ctx.link_resets.lock().expect("resets lock").add(resets);
        self.link_events(events);
        let finished: Vec<StoryId> = self
            .runs
            .iter()
            .filter(|(_, r)| r.finish_at_ms.is_some_and(|t| t <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for story in finished {
            let run = self.runs.remove(&story).expect("listed above");
            if run.outcome == RunOutcome::Succeeded {
                self.ctx.worktrees.lock().expect("worktrees lock").committed_by(&story, run.token);
            }
            self.oracle().run_ended(&self.ctx.id, &story);
            self.input(Input::RunFinished {
                story,
                token: run.token,
                outcome: run.outcome,
                report: Default::default(),
            });
        }
        self.finish_lands(now);
        let hostile = std::mem::take(&mut *self.ctx.hostile_writes.lock().expect("hostile lock"));
        for _ in 0..hostile {
            self.write_hostile(now);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later).into_iter().partition(|(t, _)| *t <= now);
        self.later = later;
        for (_, input) in due {
            self.input(input);
        }
        if self.engine.poll_timeout().is_some_and(|t| t.0 <= now) {
            self.input(Input::Timeout);
        }
        let archiver_on = !*self.ctx.archiver_off.lock().expect("archiver lock");
        if self.ctx.archive_every_ms > 0 && archiver_on && now >= self.next_archive_ms {
            self.next_archive_ms = now + self.ctx.archive_every_ms;
            let done: Vec<StoryId> =
                self.engine.stories().filter(|(_, v)| v.state.stage == Stage::Done).map(|(id, _)| id.clone()).collect();
            for id in done {
                self.next_cmd += 1;
                let command = Command::MoveStory { id, stage: Stage::Archived };
                self.input(Input::Command { id: CommandId(self.next_cmd), command });
            }
        }
        if self.ctx.publish_every_ms > 0 && now >= self.next_publish_ms {
            self.next_publish_ms = now + self.ctx.publish_every_ms;
            self.publish();
        }
    }

    fn oracle(&self) -> std::sync::MutexGuard<'_, Oracle> {
        self.ctx.oracle.lock().expect("oracle lock")
    }

    /// Publishes this replica's view to the oracle.
    fn publish(&mut self) {
        let heads = self.engine.heads().iter().map(|h| h.to_string()).collect();
        let stories = self.engine.stories().map(|(id, v)| (id.clone(), v.state.clone())).collect();
        let save_len = if *self.ctx.want_save_len.lock().expect("lock") { self.engine.save().len() } else { 0 };
        let view = View { heads, stories: std::sync::Arc::new(stories), save_len, epoch: self.engine.epoch() };
        let id = self.ctx.id.clone();
        if std::mem::take(&mut *self.ctx.check_index.lock().expect("lock")) {
            let stale = self.engine.index_drift();
            if !stale.is_empty() {
                let what = format!("{id}'s index differs from its document on {stale:?}");
                self.oracle().violation(crate::violation::Invariant::IndexStale, what);
            }
        }
        self.oracle().publish(&id, view);
    }

    fn input(&mut self, input: Input) {
        if *self.ctx.dead.lock().expect("dead lock") {
            return;
        }
        let now = self.ctx.local_ms();
        self.engine.handle(Millis(now), input);
        self.carry_out(now);
    }

    /// One hostile write (`testkit::hostile_doc::random_attack`) on this
    /// node's stories, let out as its own change.
    fn write_hostile(&mut self, now: u64) {
        let stories: Vec<StoryId> = self.engine.stories().map(|(id, _)| id.clone()).collect();
        if stories.is_empty() {
            return;
        }
        let mut d = self.random();
        let mut draw = move || {
            d = stable_hash(&[&d.to_be_bytes()]);
            d
        };
        let (cars, own) = (self.ctx.hostile_cars, self.ctx.id.clone());
        self.engine.write_hostile(Millis(now), |am, parts| {
            if cars {
                huskies_engine::testkit::hostile_doc::car_attack(am, &own, &mut draw)
            } else {
                huskies_engine::testkit::hostile_doc::random_attack(am, parts, &stories, &mut draw)
            }
        });
        self.carry_out(now);
    }

    /// Carries out the engine's outputs. A disk without latency makes
    /// each persist durable before the outputs it covers are carried out;
    /// one with latency confirms it later (`handle_time`), and what it
    /// covers waits in the engine meanwhile.
    fn carry_out(&mut self, now: u64) {
        let sim_now = sim_ms();
        let instant = self.ctx.disk.lock().expect("disk lock").latency.is_none();
        let outs: Vec<Output> = if instant {
            self.engine.drain_sync_persist()
        } else {
            std::iter::from_fn(|| self.engine.poll_output()).collect()
        };
        for out in outs {
            if let Output::Persist { kind: PersistKind::Epoch { epoch }, .. } = &out
                && std::mem::take(&mut *self.ctx.tear_next_epoch.lock().expect("tear lock"))
            {
                // The process dies between the two writes of the move; the
                // writes queued before it landed, unconfirmed.
                let mut disk = self.ctx.disk.lock().expect("disk lock");
                disk.land_due(u64::MAX);
                disk.stored.apply_torn_epoch(*epoch);
                drop(disk);
                *self.ctx.torn.lock().expect("torn lock") += 1;
                *self.ctx.dead.lock().expect("dead lock") = true;
                self.oracle().node_crashed(&self.ctx.id);
                self.runs.clear();
                self.later.clear();
                self.links.outbox.clear();
                return;
            }
            self.oracle().observe(sim_now, &self.ctx.id, &out);
            self.now_ms = now;
            huskies_engine::testkit::world::carry_out(self, out);
        }
        let mesh = self.engine.mesh_peer_count();
        self.oracle().observe_mesh(&self.ctx.id, mesh);
    }

    /// Landings whose gates are done: they land by compare-and-swap on
    /// the tip they built on (after the batch ahead of them, if any), wait
    /// for that batch, or build and test again on the new tip.
    fn finish_lands(&mut self, now: u64) {
        use huskies_engine::landing::{LandReport, LandResult};
        use huskies_engine::testkit::trunk::TryLand;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.lands).into_iter().partition(|l| l.due_ms <= now);
        self.lands = rest;
        let retry =
            |reason: &str| LandReport { result: LandResult::Retry { reason: reason.into() }, ..Default::default() };
        for mut land in due {
            let attempt = if land.cancelled {
                TryLand::Done(retry("called off"))
            } else {
                self.oracle().trunk.try_land(&land.build)
            };
            match attempt {
                TryLand::Done(report) => {
                    if std::env::var("HUSKIES_DEBUG_LAND").is_ok()
                        && let LandResult::GateFailed { output_tail, .. } = &report.result
                    {
                        let spec = if report.speculative { "speculative " } else { "" };
                        println!("{now} {} {} {spec}gate failure: {output_tail}", self.ctx.id, land.batch);
                    }
                    self.input(Input::LandFinished { batch: land.batch, report })
                }
                TryLand::Wait => {
                    land.due_ms = now + LAND_POLL_MS;
                    self.lands.push(land);
                }
                TryLand::Moved if land.tries + 1 >= LAND_TRIES => {
                    self.input(Input::LandFinished {
                        batch: land.batch,
                        report: retry("the default branch kept moving"),
                    });
                }
                TryLand::Moved => {
                    if std::env::var("HUSKIES_DEBUG_LAND").is_ok() {
                        println!("{now} {} {} moved: build again", self.ctx.id, land.batch);
                    }
                    land.build = self.build_land(&land.ahead, &land.stories);
                    self.report_built(land.batch, &land.build, now);
                    land.tries += 1;
                    land.due_ms = now + if land.build.gated() { self.ctx.gate_ms } else { 20 };
                    self.lands.push(land);
                }
            }
        }
    }

    /// What the build left out is known before its gates run.
    fn report_built(
        &mut self,
        batch: huskies_engine::landing::BatchId,
        build: &huskies_engine::testkit::trunk::TrunkBuild,
        now: u64,
    ) {
        let left_out = build.report().left_out();
        if build.gated() && !left_out.is_empty() {
            self.later.push((now + 20, Input::LandBuilt { batch, left_out }));
        }
    }

    fn build_land(
        &mut self,
        ahead: &[huskies_engine::landing::LandStory],
        stories: &[huskies_engine::landing::LandStory],
    ) -> huskies_engine::testkit::trunk::TrunkBuild {
        let draw = self.random();
        let mut o = self.oracle();
        let o = &mut *o;
        let remote = &o.remote;
        let fenced = |s: &StoryId, t: Token| remote.tip(s).map(|c| c.0).filter(|tip| *tip > t);
        o.trunk.build(ahead, stories, draw, fenced)
    }
}

/// How a madsim node carries the engine's outputs out: datagram links,
/// the simulated disk, agent runs on the madsim clock, the shared models
/// of the git remote and the default branch.
impl huskies_engine::testkit::world::World for SimNode {
    fn persist(&mut self, seq: huskies_engine::PersistSeq, kind: PersistKind, bytes: Vec<u8>) {
        self.ctx.disk.lock().expect("disk lock").issue(seq, kind, bytes, self.now_ms);
    }

    fn send(&mut self, conn: huskies_engine::ConnId, bytes: Vec<u8>) {
        self.links.send(conn, bytes);
    }

    fn dial(&mut self, conn: huskies_engine::ConnId, address: String) {
        let now = self.now_ms;
        match address.trim_start_matches("sim://").parse::<SocketAddr>() {
            Ok(peer) => self.links.dial(conn, peer, now),
            Err(_) => self.later.push((now + 1, Input::PeerClosed { conn })),
        }
    }

    fn hang_up(&mut self, conn: huskies_engine::ConnId) {
        self.links.hang_up(conn);
    }

    fn start_run(&mut self, story: StoryId, _stage: Stage, token: Token) {
        self.oracle().remote.run_started(&story, token, &self.ctx.id);
        let agent = self.ctx.agent;
        let run = agent.start(|| self.random());
        let (finish_at_ms, outcome) = (run.duration_ms.map(|d| self.now_ms + d), run.outcome);
        self.runs.insert(story, SimRun { token, finish_at_ms, outcome });
    }

    fn stop_run(&mut self, story: StoryId, token: Token) {
        if self.runs.get(&story).is_some_and(|r| r.token == token) {
            self.runs.remove(&story);
        }
    }

    fn push(&mut self, story: StoryId, token: Token) {
        let agent = self.ctx.agent;
        let outcome = if agent.push_fails(|| self.random()) {
            Err(huskies_engine::PushError::Failed("simulated push failure".to_owned()))
        } else {
            let id = self.ctx.id.clone();
            let pushed = self.oracle().remote.push(&story, token, &id);
            match &pushed {
                Ok(()) => {
                    self.oracle().pushes.insert((story.clone(), id, token));
                }
                Err(_) => self.oracle().fenced += 1,
            }
            self.ctx.worktrees.lock().expect("worktrees lock").pushed(&story);
            pushed
        };
        self.later.push((self.now_ms + 20, Input::PushFinished { story, token, outcome }));
    }

    fn land(
        &mut self,
        batch: huskies_engine::landing::BatchId,
        stories: Vec<huskies_engine::landing::LandStory>,
        ahead: Vec<huskies_engine::landing::LandStory>,
    ) {
        let now = self.now_ms;
        let build = self.build_land(&ahead, &stories);
        self.report_built(batch, &build, now);
        // Nothing to test (conflicts, landed before): answered at once.
        let due_ms = now + if build.gated() { self.ctx.gate_ms } else { 20 };
        self.lands.push(SimLand { batch, stories, ahead, build, due_ms, tries: 0, cancelled: false });
    }

    fn cancel_land(&mut self, batch: huskies_engine::landing::BatchId) {
        let now = self.now_ms;
        if let Some(l) = self.lands.iter_mut().find(|l| l.batch == batch) {
            l.cancelled = true;
            l.due_ms = now;
        }
    }

    fn worktrees<R>(&mut self, f: impl FnOnce(&mut huskies_engine::testkit::world::Worktrees) -> R) -> R {
        f(&mut self.ctx.worktrees.lock().expect("worktrees lock"))
    }

    fn answer_inspection(&mut self, story: StoryId, token: Token, committed: bool) {
        self.later.push((self.now_ms + 5, Input::WorktreeInspected { story, token, committed }));
    }

    fn reply(&mut self, _id: CommandId, result: Result<huskies_engine::Reply, huskies_engine::CommandError>) {
        match result {
            Ok(huskies_engine::Reply::Added { id }) => {
                self.oracle().added.insert(id);
            }
            Ok(huskies_engine::Reply::Moved { id, to: Stage::Archived, .. }) => {
                self.oracle().archived.insert(id);
            }
            _ => {}
        }
    }

    fn event(&mut self, _event: huskies_engine::Event) {}
}

impl SimNode {
    /// Sends the outbox: one datagram per destination, each from a task
    /// of its own. madsim sleeps a random few microseconds in every send,
    /// and its timers fire on whole milliseconds, so each awaited send
    /// cost a simulated millisecond: a server relaying to 50 agents spent
    /// 3 simulated seconds in one flush of 2,991 sends, deaf to every peer
    /// meanwhile (a 50 x 300 scale seed ran a story twice for 940 ms, and
    /// the quiet mesh of `docs/design/sync.md` failed on it). A real
    /// socket write costs microseconds. The link layer orders what two
    /// flushes' datagrams swap on the way.
    fn flush(&mut self, ep: &Arc<Endpoint>) {
        let mut by_dst: BTreeMap<SocketAddr, Vec<Packet>> = BTreeMap::new();
        for (dst, packet) in std::mem::take(&mut self.links.outbox) {
            by_dst.entry(dst).or_default().push(packet);
        }
        for (dst, packets) in by_dst {
            self.spawned_since_prune += 1;
            if self.spawned_since_prune >= PRUNE_TASKS_EVERY {
                self.spawned_since_prune = 0;
                // Counting prunes every node's list of finished tasks.
                let _ = madsim::runtime::Handle::current().metrics().num_tasks();
            }
            let ep = ep.clone();
            madsim::task::spawn(async move {
                // A send to an unreachable node fails like a lost packet does.
                let _ = ep.send_to_raw(dst, TAG, Box::new(packets)).await;
            });
        }
    }
}
