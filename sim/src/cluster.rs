//! The simulated cluster: the rendezvous and the agents as madsim nodes,
//! and the faults injected into them (crashes, pauses, partitions, clogs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huskies_engine::testkit::node_name;
use huskies_engine::{Config, Stage, StoryId};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};

use crate::node::{self, Clock, NodeCtx, PORT};
use crate::oracle::Oracle;
use crate::profile::{FaultKind, Profile, Scripted};
use crate::scenario::Scenario;

pub(crate) fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8))
}

pub(crate) struct SimCluster {
    pub(crate) handle: Handle,
    pub(crate) net: Arc<NetSim>,
    pub(crate) nodes: Vec<NodeHandle>,
    pub(crate) ctxs: Vec<Arc<NodeCtx>>,
    pub(crate) crashed: Vec<usize>,
    pub(crate) paused: Vec<usize>,
    pub(crate) clogged_nodes: Vec<usize>,
    pub(crate) clogged_links: Vec<(usize, usize)>,
}

impl SimCluster {
    pub(crate) fn rand(&self, n: usize) -> usize {
        (madsim::rand::random::<u64>() % n.max(1) as u64) as usize
    }

    pub(crate) fn agent(&self) -> usize {
        1 + self.rand(self.nodes.len() - 1)
    }

    pub(crate) fn clog(&mut self, a: usize, b: usize) {
        self.net.clog_link(self.nodes[a].id(), self.nodes[b].id());
        self.clogged_links.push((a, b));
    }

    pub(crate) fn crash(&mut self, i: usize, oracle: &Mutex<Oracle>) {
        self.handle.kill(self.nodes[i].id());
        oracle.lock().expect("oracle").node_crashed(&self.ctxs[i].id);
        self.crashed.push(i);
    }

    /// Starts node `i` afresh. madsim's `restart` does not release a live
    /// node's sockets (only `kill` does), so a restart of a running node
    /// could never bind again: kill first, always.
    pub(crate) fn restart(&mut self, i: usize, oracle: &Mutex<Oracle>) {
        self.handle.kill(self.nodes[i].id());
        oracle.lock().expect("oracle").node_crashed(&self.ctxs[i].id);
        *self.ctxs[i].tear_next_epoch.lock().expect("tear lock") = false;
        self.handle.restart(self.nodes[i].id());
        self.crashed.retain(|n| *n != i);
    }

    pub(crate) fn heal(&mut self) {
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
    pub(crate) fn inject(&mut self, p: &Profile, cfg: &Config, oracle: &Mutex<Oracle>) -> Option<String> {
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

    pub(crate) fn scripted(&mut self, f: Scripted, oracle: &Mutex<Oracle>) {
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
    pub(crate) fn relax(&mut self, oracle: &Mutex<Oracle>) {
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

/// Every story in the server's cold storage, archived there.
pub(crate) fn cold_stories(cluster: &SimCluster) -> std::collections::BTreeSet<StoryId> {
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
pub(crate) fn start_cluster(s: &Scenario, profile: &Profile, oracle: &Arc<Mutex<Oracle>>) -> SimCluster {
    let handle = Handle::current();
    let net = NetSim::current();
    net.update_config(|c| {
        c.send_latency = Duration::from_millis(profile.latency_ms.0)..Duration::from_millis(profile.latency_ms.1 + 1);
    });
    let rendezvous = format!("sim://{}", SocketAddr::new(ip(0), PORT));
    let mut nodes = Vec::new();
    let mut ctxs = Vec::new();
    let sig_memo = huskies_engine::SigMemo::default();
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
            sig_memo: sig_memo.clone(),
            disk: Mutex::new(crate::disk::SimDisk::new(s.disk, seed, i != 0)),
            worktrees: Mutex::new(Default::default()),
            clock: Mutex::new(Clock { skew_ppm, offset_ms: 0 }),
            restarts: Mutex::new(0),
            publish_every_ms: s.publish_every_ms,
            want_save_len: Mutex::new(false),
            check_index: Mutex::new(false),
            archiver_off: Mutex::new(false),
            archive_every_ms: if i == 0 { s.archive_every_ms } else { 0 },
            gate_ms: s.gate_ms,
            hostile_writes: Mutex::new(0),
            hostile_cars: s.hostile_cars,
            tear_next_epoch: Mutex::new(false),
            dead: Mutex::new(false),
            torn: Mutex::new(0),
            link_resets: Mutex::default(),
            beat_checks: Mutex::default(),
            sync_sent: Mutex::default(),
            full_reads: Mutex::default(),
            call_offs: Mutex::default(),
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
