//! Scenarios: build a simulated cluster, inject seeded faults, heal, check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::{Command, Config, Stage, StoryId};
use madsim::net::{Endpoint, NetSim};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::{TimeHandle, sleep};

use crate::link::Packet;
use crate::node::{self, AgentProfile, Clock, NodeCtx, PORT, TAG};
use crate::oracle::Oracle;
use crate::violation::Invariant;

/// Which faults a run injects, and how the agents behave. Logged with the
/// seed so a failure can be understood before it is replayed.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub partitions: bool,
    pub asymmetric: bool,
    pub swizzle: bool,
    pub crashes: bool,
    pub pauses: bool,
    pub clock_skew: bool,
    pub latency_ms: (u64, u64),
    pub agent: AgentProfile,
    /// Mean gap between fault injections.
    pub fault_every_ms: u64,
}

impl Profile {
    pub const CALM_AGENT: AgentProfile =
        AgentProfile { run_min_ms: 300, run_max_ms: 1_500, fail_pct: 0, hang_pct: 0, push_fail_pct: 0 };

    /// The random faults this profile turns on, in a fixed order (the
    /// seed picks among them by index).
    pub fn fault_kinds(&self) -> Vec<FaultKind> {
        [
            (self.partitions, FaultKind::Partition),
            (self.asymmetric, FaultKind::OneWayCut),
            (self.swizzle, FaultKind::SwizzleClog),
            (self.crashes, FaultKind::Crash),
            (self.pauses, FaultKind::Pause),
            (self.clock_skew, FaultKind::ClockJump),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect()
    }

    /// The whole profile on one line, for the log of every seed.
    pub fn describe(&self) -> String {
        let kinds: Vec<String> = self.fault_kinds().iter().map(|k| k.to_string()).collect();
        let a = &self.agent;
        let faults = match kinds.is_empty() {
            true => "no random faults".to_owned(),
            false => format!("faults [{}] every ~{} ms", kinds.join(", "), self.fault_every_ms),
        };
        format!(
            "{faults}, clock skew {}, latency {}-{} ms, runs {}-{} ms failing {}% hanging {}%, pushes failing {}%",
            if self.clock_skew { "on" } else { "off" },
            self.latency_ms.0,
            self.latency_ms.1,
            a.run_min_ms,
            a.run_max_ms,
            a.fail_pct,
            a.hang_pct,
            a.push_fail_pct
        )
    }

    /// No faults at all.
    pub fn calm() -> Profile {
        Profile {
            partitions: false,
            asymmetric: false,
            swizzle: false,
            crashes: false,
            pauses: false,
            clock_skew: false,
            latency_ms: (1, 10),
            agent: Profile::CALM_AGENT,
            fault_every_ms: 2_000,
        }
    }

    /// A profile drawn from the seed (swarm testing: each seed turns a
    /// different mix of faults on, so rare combinations get exercised).
    pub fn random() -> Profile {
        let bit = || madsim::rand::random::<u64>().is_multiple_of(2);
        let pct = |max: u64| madsim::rand::random::<u64>() % (max + 1);
        let lat_max = 2 + madsim::rand::random::<u64>() % 60;
        Profile {
            partitions: bit(),
            asymmetric: bit(),
            swizzle: bit(),
            crashes: bit(),
            pauses: bit(),
            clock_skew: bit(),
            latency_ms: (1, lat_max),
            agent: AgentProfile {
                run_min_ms: 200,
                run_max_ms: 200 + madsim::rand::random::<u64>() % 3_000,
                fail_pct: pct(20),
                hang_pct: pct(5),
                push_fail_pct: pct(10),
            },
            fault_every_ms: 500 + madsim::rand::random::<u64>() % 3_000,
        }
    }
}

/// The faults a profile can inject at random. Each is tied to what the
/// oracle checks through it: safety all along (fencing, no regressions,
/// mesh cap, no lasting duplicate runs), convergence and liveness after the
/// heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A random side cut off from the rest, both ways.
    Partition,
    /// One link cut in one direction.
    OneWayCut,
    /// Some nodes cut off from everyone, restored in random order.
    SwizzleClog,
    /// An agent killed (restarted from its persisted bytes later).
    Crash,
    /// An agent frozen past the claim timeout (a zombie when it wakes).
    Pause,
    /// An agent's clock jumps forward.
    ClockJump,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultKind::Partition => "partition",
            FaultKind::OneWayCut => "one-way cut",
            FaultKind::SwizzleClog => "swizzle-clog",
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::ClockJump => "clock jump",
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ProfileChoice {
    Fixed(Profile),
    /// Drawn from the seed.
    Random,
}

/// A fault at a fixed time, for scenarios that need one exact story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripted {
    /// Cut the agent off from everyone (both directions).
    Isolate(usize),
    Reconnect(usize),
    Crash(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    /// Node `i` dies in the middle of its next move to a new epoch (the
    /// old document archived, the new one not stored); restarted later by
    /// a `Restart` or the heal.
    TearEpoch(usize),
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub agents: usize,
    pub stories: usize,
    pub config: Config,
    pub profile: ProfileChoice,
    /// Simulated time of the fault phase.
    pub fault_ms: u64,
    /// Simulated time the heal phase may take before LIVENESS fails.
    pub heal_budget_ms: u64,
    /// How often nodes publish their views to the oracle.
    pub publish_every_ms: u64,
    /// Check that an idle document does not grow from heartbeats.
    pub check_idle_growth: bool,
    /// Faults at fixed times (ms after the stories are added), besides the
    /// profile's random ones.
    pub script: Vec<(u64, Scripted)>,
    /// The server archives done stories this often (0: never); archived
    /// stories leave the live document at the next epoch.
    pub archive_every_ms: u64,
    /// How stories conflict and gates fail on the default branch.
    pub trunk: huskies_engine::testkit::trunk::TrunkConfig,
    /// How long one build and gate run of a landing takes.
    pub gate_ms: u64,
    /// `Some(k)`: agents 1..=k work only `merge` (they land), the others
    /// only `current` and `qa`; `None`: every agent works every stage.
    pub merge_nodes: Option<usize>,
    /// The stage stories are added in.
    pub start_stage: Stage,
    /// `Some(i)`: agent `i` is Byzantine. Through the fault phase it writes
    /// random well-formed hostile changes (forged commands, absurd tokens,
    /// wrong types, deletions of maps, others' run records, floods of
    /// stories); at the heal the server revokes it and it stays down. The
    /// oracle checks the honest nodes only, and that none shows a value
    /// only the hostile node could have written.
    pub byzantine: Option<usize>,
    /// `Some`: every node's disk takes this long to write, the engine's
    /// outputs wait behind each write, and a crash loses what was not
    /// confirmed (`disk.rs`). `None`: writes are durable at once.
    pub disk: Option<crate::disk::Latency>,
}

/// Short timings so a scenario spans seconds of simulated time.
pub fn sim_config() -> Config {
    Config {
        capacity: 2,
        heartbeat_interval_ms: 250,
        claim_timeout_ms: 2_000,
        scan_interval_ms: 200,
        claim_stagger_ms: 400,
        run_timeout_ms: 8_000,
        sync_interval_ms: 50,
        max_attempts: 6,
        retry_backoff_ms: 300,
        dial_backoff_min_ms: 100,
        dial_backoff_max_ms: 2_000,
        ..Config::default()
    }
}

impl Scenario {
    pub fn new(name: &'static str, agents: usize, stories: usize) -> Scenario {
        Scenario {
            name,
            agents,
            stories,
            config: sim_config(),
            profile: ProfileChoice::Fixed(Profile::calm()),
            fault_ms: 10_000,
            heal_budget_ms: 120_000,
            publish_every_ms: 500,
            check_idle_growth: false,
            script: Vec::new(),
            archive_every_ms: 0,
            trunk: huskies_engine::testkit::trunk::TrunkConfig::calm(0),
            gate_ms: 50,
            merge_nodes: None,
            start_stage: Stage::Current,
            byzantine: None,
            disk: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    /// The profile the seed drew, in full.
    pub profile: String,
    /// Simulated time each phase took.
    pub phases: Vec<(&'static str, u64)>,
    pub violations: Vec<crate::violation::Violation>,
    /// The faults injected, listed when a seed fails.
    pub faults: Vec<String>,
    pub trace_hash: huskies_engine::testkit::TraceHash,
    pub sim_ms: u64,
    pub wall_ms: u64,
    /// Simulated time from heal to converged and finished.
    pub heal_ms: Option<u64>,
    pub starts: u64,
    pub reclaims: u64,
    pub claim_losses: u64,
    /// Pushes the simulated remote fenced (a newer claim ended the branch).
    pub fenced: u64,
    pub max_mesh_peers: usize,
    pub stories_done: usize,
    /// Stories archived: in cold storage or (until the next cut) live.
    pub stories_archived: usize,
    /// The server's epoch at the end, and moves to a new epoch that a
    /// scripted death tore in half.
    pub epoch: u64,
    pub torn_epochs: u64,
    pub idle_save_len: Option<(usize, usize)>,
    pub landing: Landing,
    /// Writes issued to slow disks, and what crashes did to them.
    pub disk_writes: u64,
    pub disk_flushes: u64,
    pub disk_losses: crate::disk::CrashLoss,
    /// Restarts whose disk was checked against what the node had revealed.
    pub restarts_checked: u64,
}

/// What the merge queue did in a run.
#[derive(Debug, Clone, Default)]
pub struct Landing {
    /// Stories on the default branch at the end.
    pub landed: u64,
    /// Landings nodes reported (a story found landed already counts again).
    pub landed_events: u64,
    pub sent_back: u64,
    pub batches: u64,
    pub batch_stories: u64,
    pub retries: u64,
    pub splits: u64,
    /// Batches tested on top of another node's, and batches called off.
    pub speculative: u64,
    pub cancelled: u64,
    pub gate_runs: u64,
    pub gate_failures: u64,
    /// Simulated ms from a story reaching `merge` to landing: p50, p95.
    pub p50_ms: u64,
    pub p95_ms: u64,
    /// Simulated ms from the first story reaching `merge` to the last
    /// landing.
    pub span_ms: u64,
}

impl Landing {
    /// Stories landed per simulated hour.
    pub fn per_hour(&self) -> f64 {
        self.landed as f64 * 3_600_000.0 / self.span_ms.max(1) as f64
    }
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8))
}

use huskies_engine::testkit::node_name;

/// Runs one seed on a fresh thread (std's HashMap order is seeded per
/// thread; a fresh thread keeps every run of a seed identical).
pub fn run_seed(scenario: &Scenario, seed: u64) -> Report {
    let s = scenario.clone();
    std::thread::spawn(move || {
        #[allow(clippy::disallowed_methods)] // wall time of the run, for the report only
        let started = std::time::Instant::now();
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        let mut report = rt.block_on(simulate(s, seed));
        report.wall_ms = started.elapsed().as_millis() as u64;
        report
    })
    .join()
    .unwrap_or_else(|e| panic!("seed {seed} panicked inside the simulation: {}", panic_text(e.as_ref())))
}

/// The message a panic carried, when it carried text.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

struct SimCluster {
    handle: Handle,
    net: Arc<NetSim>,
    nodes: Vec<NodeHandle>,
    ctxs: Vec<Arc<NodeCtx>>,
    crashed: Vec<usize>,
    paused: Vec<usize>,
    clogged_nodes: Vec<usize>,
    clogged_links: Vec<(usize, usize)>,
}

impl SimCluster {
    fn rand(&self, n: usize) -> usize {
        (madsim::rand::random::<u64>() % n.max(1) as u64) as usize
    }

    fn agent(&self) -> usize {
        1 + self.rand(self.nodes.len() - 1)
    }

    fn clog(&mut self, a: usize, b: usize) {
        self.net.clog_link(self.nodes[a].id(), self.nodes[b].id());
        self.clogged_links.push((a, b));
    }

    fn crash(&mut self, i: usize, oracle: &Mutex<Oracle>) {
        self.handle.kill(self.nodes[i].id());
        oracle.lock().expect("oracle").node_crashed(&self.ctxs[i].id);
        self.crashed.push(i);
    }

    /// Starts node `i` afresh. madsim's `restart` does not release a live
    /// node's sockets (only `kill` does), so a restart of a running node
    /// could never bind again: kill first, always.
    fn restart(&mut self, i: usize, oracle: &Mutex<Oracle>) {
        self.handle.kill(self.nodes[i].id());
        oracle.lock().expect("oracle").node_crashed(&self.ctxs[i].id);
        *self.ctxs[i].tear_next_epoch.lock().expect("tear lock") = false;
        self.handle.restart(self.nodes[i].id());
        self.crashed.retain(|n| *n != i);
    }

    fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.clogged_links) {
            self.net.unclog_link(self.nodes[a].id(), self.nodes[b].id());
        }
        for i in std::mem::take(&mut self.clogged_nodes) {
            self.net.unclog_node(self.nodes[i].id());
        }
        for i in std::mem::take(&mut self.paused) {
            self.handle.resume(self.nodes[i].id());
        }
    }

    /// Injects one fault allowed by the profile; returns what it did.
    fn inject(&mut self, p: &Profile, cfg: &Config, oracle: &Mutex<Oracle>) -> Option<String> {
        let kinds = p.fault_kinds();
        let kind = *kinds.get(self.rand(kinds.len()))?;
        let n = self.nodes.len();
        Some(match kind {
            FaultKind::Partition => {
                let side: Vec<usize> = (0..n).filter(|_| self.rand(3) == 0).collect();
                for &a in &side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        self.clog(a, b);
                        self.clog(b, a);
                    }
                }
                format!("partition {side:?}")
            }
            FaultKind::OneWayCut => {
                let (a, b) = (self.rand(n), self.rand(n));
                if a != b {
                    self.clog(a, b);
                }
                format!("one-way cut {a} -> {b}")
            }
            FaultKind::SwizzleClog => {
                let k = 1 + self.rand(n / 2);
                let mut chosen = Vec::new();
                for _ in 0..k {
                    let i = self.rand(n);
                    if !chosen.contains(&i) {
                        self.net.clog_node(self.nodes[i].id());
                        chosen.push(i);
                    }
                }
                self.clogged_nodes.extend(&chosen);
                format!("swizzle-clog {chosen:?}")
            }
            FaultKind::Crash => {
                let i = self.agent();
                if self.crashed.contains(&i) {
                    return None;
                }
                self.crash(i, oracle);
                format!("crash {i}")
            }
            FaultKind::Pause => {
                let i = self.agent();
                if self.paused.contains(&i) || self.crashed.contains(&i) {
                    return None;
                }
                self.handle.pause(self.nodes[i].id());
                self.paused.push(i);
                format!("pause {i} (claim timeout {} ms)", cfg.claim_timeout_ms)
            }
            FaultKind::ClockJump => {
                let i = self.agent();
                let jump = 500 + self.rand(5_000) as u64;
                self.ctxs[i].clock.lock().expect("clock").offset_ms += jump;
                format!("clock jump {i} +{jump} ms")
            }
        })
    }

    fn scripted(&mut self, f: Scripted, oracle: &Mutex<Oracle>) {
        let id = |c: &SimCluster, i: usize| c.nodes[i].id();
        match f {
            Scripted::Isolate(i) => {
                self.net.clog_node(id(self, i));
                self.clogged_nodes.push(i);
            }
            Scripted::Reconnect(i) => {
                self.net.unclog_node(id(self, i));
                self.clogged_nodes.retain(|n| *n != i);
            }
            Scripted::Crash(i) => self.crash(i, oracle),
            Scripted::Restart(i) => self.restart(i, oracle),
            Scripted::Pause(i) => {
                self.handle.pause(id(self, i));
                self.paused.push(i);
            }
            Scripted::Resume(i) => {
                self.handle.resume(id(self, i));
                self.paused.retain(|n| *n != i);
            }
            Scripted::TearEpoch(i) => {
                *self.ctxs[i].tear_next_epoch.lock().expect("tear lock") = true;
                self.crashed.push(i);
            }
        }
    }

    /// Undoes some faults (in random order, like a swizzle restore).
    fn relax(&mut self, oracle: &Mutex<Oracle>) {
        if !self.clogged_links.is_empty() && self.rand(2) == 0 {
            let k = self.rand(self.clogged_links.len());
            let (a, b) = self.clogged_links.swap_remove(k);
            self.net.unclog_link(self.nodes[a].id(), self.nodes[b].id());
        }
        if !self.clogged_nodes.is_empty() && self.rand(2) == 0 {
            let k = self.rand(self.clogged_nodes.len());
            let i = self.clogged_nodes.swap_remove(k);
            self.net.unclog_node(self.nodes[i].id());
        }
        if !self.paused.is_empty() && self.rand(2) == 0 {
            let i = self.paused.swap_remove(self.rand(self.paused.len()));
            self.handle.resume(self.nodes[i].id());
        }
        if !self.crashed.is_empty() && self.rand(2) == 0 {
            let i = self.crashed[self.rand(self.crashed.len())];
            self.restart(i, oracle);
        }
    }
}

fn now_ms() -> u64 {
    TimeHandle::current().elapsed().as_millis() as u64
}

/// One seed, in the VOPR's phases: the seed's profile is fixed first (and
/// logged in full), then a cluster starts and gets its stories; **faults**
/// injects the profile's random faults and the script; **heal** restores
/// everything and waits for the cluster to settle (liveness); **idle**
/// checks an idle document does not grow; **verify** runs the final checks.
async fn simulate(s: Scenario, seed: u64) -> Report {
    let profile = match s.profile {
        ProfileChoice::Fixed(p) => p,
        ProfileChoice::Random => Profile::random(),
    };
    let mut o = Oracle::new(s.config.max_mesh_peers);
    o.trunk = huskies_engine::testkit::trunk::TrunkModel::new(huskies_engine::testkit::trunk::TrunkConfig {
        seed: seed ^ s.trunk.seed,
        ..s.trunk
    });
    o.members = (0..=s.agents).map(node_name).collect();
    o.byzantine = s.byzantine.map(node_name);
    let oracle = Arc::new(Mutex::new(o));
    let mut cluster = start_cluster(&s, &profile, &oracle);
    add_stories(&s).await;
    let mut phases = Vec::new();
    let t = now_ms();
    let faults = fault_phase(&s, &profile, &mut cluster, &oracle).await;
    phases.push(("faults", now_ms() - t));
    let t = now_ms();
    let heal_ms = heal_phase(&s, &profile, &mut cluster, &oracle).await;
    phases.push(("heal", now_ms() - t));
    let t = now_ms();
    let idle_save_len = idle_phase(&s, &cluster, &oracle, heal_ms.is_some()).await;
    phases.push(("idle", now_ms() - t));
    let cold = cold_stories(&cluster);
    let torn = cluster.ctxs.iter().map(|c| *c.torn.lock().expect("torn lock")).sum();
    let mut report = verify(&s, seed, &profile, &oracle, heal_ms, idle_save_len, faults, phases, &cold);
    report.torn_epochs = torn;
    for c in &cluster.ctxs {
        let disk = c.disk.lock().expect("disk lock");
        report.disk_writes += disk.writes();
        report.disk_flushes += disk.flushes();
        report.disk_losses.lost += disk.losses.lost;
        report.disk_losses.torn += disk.losses.torn;
        report.disk_losses.unconfirmed += disk.losses.unconfirmed;
    }
    report
}

/// Every story in the server's cold storage, archived there.
fn cold_stories(cluster: &SimCluster) -> std::collections::BTreeSet<StoryId> {
    let disk = &cluster.ctxs[0].disk.lock().expect("disk lock").stored;
    let mut out = std::collections::BTreeSet::new();
    for bytes in disk.archives.values() {
        let Some(mut doc) = huskies_engine::cold::ColdDoc::open(bytes) else { continue };
        for id in doc.story_ids() {
            if doc.story(&id).is_some_and(|s| s.view.state.stage == Stage::Archived) {
                out.insert(id);
            }
        }
    }
    out
}

/// The rendezvous and the agents, each a madsim node running the engine.
fn start_cluster(s: &Scenario, profile: &Profile, oracle: &Arc<Mutex<Oracle>>) -> SimCluster {
    let handle = Handle::current();
    let net = NetSim::current();
    net.update_config(|c| {
        c.send_latency = Duration::from_millis(profile.latency_ms.0)..Duration::from_millis(profile.latency_ms.1 + 1);
    });
    let rendezvous = format!("sim://{}", SocketAddr::new(ip(0), PORT));
    let mut nodes = Vec::new();
    let mut ctxs = Vec::new();
    for i in 0..=s.agents {
        let addr = SocketAddr::new(ip(i), PORT);
        let mut config = s.config.clone();
        config.address = Some(format!("sim://{addr}"));
        config.label = format!("node {i}");
        if i == 0 {
            config.capacity = 0;
            config.max_mesh_peers = 0;
            config.rendezvous = None;
        } else {
            config.rendezvous = Some(rendezvous.clone());
            match s.merge_nodes {
                Some(k) if i <= k => config.stages = vec![Stage::Merge],
                Some(_) => config.stages = vec![Stage::Current, Stage::Qa],
                None => {}
            }
        }
        let skew_ppm = if profile.clock_skew { (madsim::rand::random::<u64>() % 100_001) as i64 - 50_000 } else { 0 };
        let seed: u64 = madsim::rand::random();
        let ctx = Arc::new(NodeCtx {
            id: node_name(i),
            addr,
            config,
            agent: profile.agent,
            seed,
            oracle: oracle.clone(),
            disk: Mutex::new(crate::disk::SimDisk::new(s.disk, seed)),
            worktrees: Mutex::new(Default::default()),
            clock: Mutex::new(Clock { skew_ppm, offset_ms: 0 }),
            restarts: Mutex::new(0),
            publish_every_ms: s.publish_every_ms,
            want_save_len: Mutex::new(false),
            archive_every_ms: if i == 0 { s.archive_every_ms } else { 0 },
            gate_ms: s.gate_ms,
            hostile_writes: Mutex::new(0),
            tear_next_epoch: Mutex::new(false),
            dead: Mutex::new(false),
            torn: Mutex::new(0),
        });
        let c = ctx.clone();
        let node = handle.create_node().name(ctx.id.as_str()).ip(ip(i)).init(move || node::run(c.clone())).build();
        nodes.push(node);
        ctxs.push(ctx);
    }
    SimCluster {
        handle,
        net,
        nodes,
        ctxs,
        crashed: Vec::new(),
        paused: Vec::new(),
        clogged_nodes: Vec::new(),
        clogged_links: Vec::new(),
    }
}

/// Warm up, then add all stories at once through the rendezvous, as the
/// CLI would.
async fn add_stories(s: &Scenario) {
    sleep(Duration::from_millis(2_000)).await;
    let handle = Handle::current();
    let client = handle.create_node().name("client").ip(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))).build();
    let n_stories = s.stories;
    let stage = s.start_stage;
    let target = SocketAddr::new(ip(0), PORT);
    client
        .spawn(async move {
            let ep = Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 1)).await.expect("bind");
            for k in 0..n_stories {
                let id = StoryId::new(format!("s{k:05}")).expect("valid id");
                let cmd = Command::AddStory(huskies_engine::NewStory {
                    id: Some(id),
                    title: format!("story {k}"),
                    stage,
                    ..Default::default()
                });
                let _ = ep.send_to_raw(target, TAG, Box::new(Packet::Command(cmd))).await;
            }
        })
        .await
        .expect("client task");
}

/// Sends one command to the server, as the CLI would.
async fn send_command(cmd: Command) {
    let handle = Handle::current();
    let client = handle.create_node().name("operator").ip(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 8))).build();
    let target = SocketAddr::new(ip(0), PORT);
    client
        .spawn(async move {
            let ep = Endpoint::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 8)), 1)).await.expect("bind");
            let _ = ep.send_to_raw(target, TAG, Box::new(Packet::Command(cmd))).await;
        })
        .await
        .expect("operator task");
}

/// The profile's random faults (and relaxations) until `fault_ms`, and the
/// script; returns what was injected, with times.
async fn fault_phase(
    s: &Scenario,
    profile: &Profile,
    cluster: &mut SimCluster,
    oracle: &Arc<Mutex<Oracle>>,
) -> Vec<String> {
    let start = now_ms();
    let fault_end = start + s.fault_ms;
    let mut faults = Vec::new();
    let mut script = s.script.clone();
    script.sort_by_key(|(t, _)| *t);
    let mut script = script.into_iter().peekable();
    let any_random = !profile.fault_kinds().is_empty();
    let mut next_random = start + profile.fault_every_ms;
    // The Byzantine node's hostile writes, every 200 to 1,000 ms.
    let mut next_hostile = if s.byzantine.is_some() { start + 200 } else { u64::MAX };
    while now_ms() < fault_end || script.peek().is_some() {
        let next_script = script.peek().map(|(t, _)| start + t).unwrap_or(u64::MAX);
        let next_random_at = if any_random && next_random < fault_end { next_random } else { u64::MAX };
        let next_hostile_at = if next_hostile < fault_end { next_hostile } else { u64::MAX };
        let end = if now_ms() < fault_end { fault_end } else { u64::MAX };
        let next = next_script.min(next_random_at).min(next_hostile_at).min(end);
        if next == u64::MAX {
            break;
        }
        sleep(Duration::from_millis(next.saturating_sub(now_ms()))).await;
        if let Some(b) = s.byzantine
            && now_ms() >= next_hostile_at
        {
            let n = 1 + madsim::rand::random::<u32>() % 3;
            *cluster.ctxs[b].hostile_writes.lock().expect("hostile lock") += n;
            faults.push(format!("{} ms: {n} hostile writes by {b}", now_ms()));
            next_hostile = now_ms() + 200 + madsim::rand::random::<u64>() % 800;
            continue;
        }
        if now_ms() >= next_script {
            let (_, f) = script.next().expect("peeked");
            cluster.scripted(f, oracle);
            faults.push(format!("{} ms: {f:?}", now_ms()));
            continue;
        }
        if now_ms() < next_random_at {
            continue;
        }
        next_random =
            now_ms() + profile.fault_every_ms / 2 + madsim::rand::random::<u64>() % profile.fault_every_ms.max(1);
        if madsim::rand::random::<u64>().is_multiple_of(3) {
            cluster.relax(oracle);
        } else if let Some(f) = cluster.inject(profile, &s.config, oracle) {
            faults.push(format!("{} ms: {f}", now_ms()));
        }
    }
    faults
}

/// Everything restored; from one claim timeout (plus a scan and a heartbeat
/// of slack) on, no story may run twice at once. Waits for the cluster to
/// settle; returns how long that took, or `None` past the budget.
async fn heal_phase(
    s: &Scenario,
    profile: &Profile,
    cluster: &mut SimCluster,
    oracle: &Arc<Mutex<Oracle>>,
) -> Option<u64> {
    cluster.heal();
    if let Some(b) = s.byzantine {
        // The operator notices: the hostile node is revoked and stays down.
        cluster.crashed.retain(|i| *i != b);
        cluster.handle.kill(cluster.nodes[b].id());
        {
            let mut o = oracle.lock().expect("oracle");
            o.node_crashed(&cluster.ctxs[b].id);
            o.views.remove(&cluster.ctxs[b].id);
        }
        send_command(Command::RevokeNode { node: cluster.ctxs[b].id.clone() }).await;
    }
    for i in std::mem::take(&mut cluster.crashed) {
        cluster.restart(i, oracle);
    }
    let heal_at = now_ms();
    let slack = s.config.claim_timeout_ms + 2 * s.config.scan_interval_ms + 4 * s.config.heartbeat_interval_ms;
    {
        let mut o = oracle.lock().expect("oracle");
        o.exclusive_from_ms = Some(heal_at + slack);
        // The loser of a concurrent claim learns of it one sync round trip
        // and a scan later.
        o.duplicate_grace_ms = 4 * profile.latency_ms.1 + 2 * s.config.scan_interval_ms + 500;
    }
    while now_ms() < heal_at + s.heal_budget_ms {
        sleep(Duration::from_millis(s.publish_every_ms.min(250))).await;
        let mut o = oracle.lock().expect("oracle");
        o.check_overlaps(now_ms());
        if o.settled(&Stage::ACTIVE) {
            return Some(now_ms() - heal_at);
        }
    }
    None
}

/// With `check_idle_growth`: the settled cluster idles for 200 heartbeat
/// rounds and its document must not grow.
async fn idle_phase(
    s: &Scenario,
    cluster: &SimCluster,
    oracle: &Arc<Mutex<Oracle>>,
    settled: bool,
) -> Option<(usize, usize)> {
    if !(s.check_idle_growth && settled) {
        return None;
    }
    for c in &cluster.ctxs {
        *c.want_save_len.lock().expect("lock") = true;
    }
    sleep(Duration::from_millis(2 * s.publish_every_ms)).await;
    let before = oracle.lock().expect("oracle").views.values().map(|v| v.save_len).max().unwrap_or(0);
    sleep(Duration::from_millis(200 * s.config.heartbeat_interval_ms)).await;
    let after = oracle.lock().expect("oracle").views.values().map(|v| v.save_len).max().unwrap_or(0);
    if after != before {
        oracle.lock().expect("oracle").violation(
            Invariant::IdleGrowth,
            format!("idle document grew from {before} to {after} bytes over 200 heartbeat rounds"),
        );
    }
    Some((before, after))
}

/// The final checks, and the report.
#[allow(clippy::too_many_arguments)]
fn verify(
    s: &Scenario,
    seed: u64,
    profile: &Profile,
    oracle: &Arc<Mutex<Oracle>>,
    heal_ms: Option<u64>,
    idle_save_len: Option<(usize, usize)>,
    faults: Vec<String>,
    phases: Vec<(&'static str, u64)>,
    cold: &std::collections::BTreeSet<StoryId>,
) -> Report {
    let mut o = oracle.lock().expect("oracle");
    o.check_final(&Stage::ACTIVE, cold);
    if heal_ms.is_none() {
        o.violation(Invariant::NotSettled, format!("not settled within {} ms of the heal", s.heal_budget_ms));
    }
    let count = |stage: Stage| {
        o.views.values().next().map(|v| v.stories.values().filter(|st| st.stage == stage).count()).unwrap_or(0)
    };
    let (stories_done, live_archived) = (count(Stage::Done), count(Stage::Archived));
    let epoch = o.views.values().next().map(|v| v.epoch).unwrap_or(0);
    Report {
        scenario: s.name,
        seed,
        profile: profile.describe(),
        phases,
        violations: o.violations.clone(),
        faults,
        trace_hash: o.trace_hash,
        sim_ms: now_ms(),
        wall_ms: 0,
        heal_ms,
        starts: o.starts,
        reclaims: o.reclaims,
        claim_losses: o.claim_losses,
        fenced: o.fenced,
        max_mesh_peers: o.max_mesh_peers,
        stories_done,
        stories_archived: live_archived + cold.len(),
        epoch,
        torn_epochs: 0,
        idle_save_len,
        landing: landing_figures(&o),
        disk_writes: 0,
        disk_flushes: 0,
        disk_losses: Default::default(),
        restarts_checked: o.restarts_checked,
    }
}

fn landing_figures(o: &Oracle) -> Landing {
    let mut lat = o.landed_after_ms.clone();
    lat.sort_unstable();
    let pct = |p: usize| lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    Landing {
        landed: o.trunk.landed().len() as u64,
        landed_events: o.landed,
        sent_back: o.sent_back,
        batches: o.batches,
        batch_stories: o.batch_stories,
        retries: o.retries,
        splits: o.splits,
        speculative: o.speculative_batches,
        cancelled: o.cancelled_batches,
        gate_runs: o.trunk.gate_runs,
        gate_failures: o.trunk.gate_failures,
        p50_ms: pct(50),
        p95_ms: pct(95),
        span_ms: o.last_landed_ms.saturating_sub(o.first_merge_ms.unwrap_or(0)),
    }
}
