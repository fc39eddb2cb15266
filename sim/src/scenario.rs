//! Scenarios: build a simulated cluster, inject seeded faults, heal, check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::{Command, Config, Stage, StoryId};
use madsim::net::Endpoint;
use madsim::runtime::{Handle, Runtime};
use madsim::time::{TimeHandle, sleep};

use crate::link::Packet;
use crate::node::{PORT, TAG};
use crate::oracle::Oracle;
use crate::violation::Invariant;

use crate::cluster::{SimCluster, cold_stories, ip, start_cluster};
pub use crate::profile::{FaultKind, Profile, ProfileChoice, Scripted};
use crate::report::landing_figures;
pub use crate::report::{Landing, Report};

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
    /// The Byzantine node attacks the merge queue's cars only
    /// (`hostile_doc::car_attack`) instead of drawing from every attack.
    pub hostile_cars: bool,
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
            hostile_cars: false,
            disk: None,
        }
    }
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
    index_check(&s, &cluster, &oracle).await;
    let cold = cold_stories(&cluster);
    let torn = cluster.ctxs.iter().map(|c| *c.torn.lock().expect("torn lock")).sum();
    let mut report = verify(&s, seed, &profile, &oracle, heal_ms, idle_save_len, faults, phases, &cold);
    report.torn_epochs = torn;
    report.nodes = cluster.ctxs.len();
    for c in &cluster.ctxs {
        report.link_resets.add(*c.link_resets.lock().expect("resets lock"));
        for s in *c.sync_sent.lock().expect("sync sent lock") {
            report.sync_sent += s;
        }
        report.full_reads += c.full_reads.lock().expect("full reads lock").iter().sum::<u64>();
        for o in *c.call_offs.lock().expect("call-offs lock") {
            report.landing.call_offs += o;
        }
        for b in *c.beat_checks.lock().expect("beat checks lock") {
            report.beats_checked += b.beats;
            report.beat_signatures += b.signatures;
            report.beat_hashes += b.hashes;
        }
    }
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

/// Every node's index, kept up merge by merge, against a fresh read of its
/// whole document (once, at the end: a full read of every story).
async fn index_check(s: &Scenario, cluster: &SimCluster, oracle: &Arc<Mutex<Oracle>>) {
    if s.publish_every_ms == 0 {
        return;
    }
    // Nothing new is written meanwhile: an archive made just before the
    // server's last publish would still be on its way to the agents.
    for c in &cluster.ctxs {
        *c.archiver_off.lock().expect("lock") = true;
    }
    quiet(s, oracle).await;
    for c in &cluster.ctxs {
        *c.check_index.lock().expect("lock") = true;
    }
    sleep(Duration::from_millis(s.publish_every_ms + 1)).await;
}

/// Waits, within the heal budget, until every view has held the same heads
/// for a quiet window. The server cuts an epoch once its peers are in step
/// with it, which is when the heal phase finds the cluster settled: the
/// new base then still has to reach every agent (slow_disk_epochs seeds
/// 3022 and 3027 compared the views in between). Past the budget the
/// final checks report what they find.
async fn quiet(s: &Scenario, oracle: &Arc<Mutex<Oracle>>) {
    let window_ms = s.publish_every_ms + 2 * s.config.scan_interval_ms + 2 * s.config.heartbeat_interval_ms;
    let deadline_ms = now_ms() + s.heal_budget_ms;
    let mut since: Option<(Vec<String>, u64)> = None;
    while now_ms() < deadline_ms {
        sleep(Duration::from_millis(s.publish_every_ms + 1)).await;
        let now = now_ms();
        let o = oracle.lock().expect("oracle");
        let mut views = o.views.values();
        let first = views.next().map(|v| v.heads.clone());
        let agreed = first.filter(|h| views.all(|v| &v.heads == h));
        match (agreed, &since) {
            (Some(h), Some((held, from))) if *held == h => {
                if now - from >= window_ms {
                    return;
                }
            }
            (Some(h), _) => since = Some((h, now)),
            (None, _) => since = None,
        }
    }
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
        starts_by_stage: o.starts_by_stage,
        landing_timeouts: o.landing_timeouts,
        given_up: o.given_up,
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
        link_resets: Default::default(),
        nodes: 0,
        sync_sent: Default::default(),
        full_reads: 0,
        beats_checked: 0,
        beat_signatures: 0,
        beat_hashes: 0,
        disk_flushes: 0,
        disk_losses: Default::default(),
        restarts_checked: o.restarts_checked,
    }
}
