//! A deterministic in-process cluster: N engines, a virtual clock, and
//! in-memory links that behave like websockets (ordered, reliable while up,
//! dropped whole) and can be cut. Agent runs and pushes are simulated.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use huskies_engine::hash::stable_hash;
use huskies_engine::{
    Command, CommandId, Config, ConnId, Engine, Event, Input, Millis, NodeId, Output, PersistKind, PersistSeq, Reply,
    RunOutcome, Stage, StoryId, Token,
};

pub const RENDEZVOUS: &str = "mem://rendezvous";

pub use huskies_engine::testkit::AgentModel;

pub struct HarnessNode {
    pub id: NodeId,
    pub addr: String,
    pub config: Config,
    pub engine: Option<Engine>,
    /// Snapshot followed by appends: what survives a crash.
    pub storage: huskies_engine::testkit::Disk,
    pub runs: BTreeMap<StoryId, (Token, Millis, RunOutcome)>,
    pub restarts: u64,
    /// Its agent's API refuses it: every run ends `Unavailable`.
    pub api_refuses: bool,
    /// Writes issued and not yet landed (with `Harness::write_ms`), in order.
    pub writes: std::collections::VecDeque<(PersistSeq, PersistKind, Vec<u8>)>,
    /// When the last issued write lands: writes land in order.
    pub last_write_at: Millis,
    /// Its worktrees: a finished run's commit not pushed yet (on disk: a
    /// crash keeps it).
    pub worktrees: huskies_engine::testkit::world::Worktrees,
    /// What it told anyone (a reply, a claim, a run, a push): the story and
    /// the lowest token its storage may hold from then on.
    pub revealed: BTreeMap<StoryId, Token>,
}

#[derive(Debug, Clone)]
enum Delivery {
    Input(usize, Input),
}

/// One recorded push to the simulated git remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub story: StoryId,
    pub node: NodeId,
    pub token: Token,
}

pub struct Harness {
    pub now: Millis,
    pub nodes: Vec<HarnessNode>,
    pub agent: AgentModel,
    pub latency_ms: u64,
    /// Extra per-message delay drawn from the seed, 0..jitter_ms. Links
    /// stay FIFO (a message never overtakes an earlier one on its link).
    pub jitter_ms: u64,
    /// 0: every persist is durable at once. Otherwise a write takes 1 to
    /// `write_ms` ms (seeded), the engine's outputs wait behind it, and a
    /// crash loses what had not landed (a seeded prefix of it lands).
    pub write_ms: u64,
    /// Replies to commands, kept until `command` picks them up.
    replies: BTreeMap<CommandId, Result<Reply, huskies_engine::CommandError>>,
    seed: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    deliveries: BTreeMap<u64, Delivery>,
    /// conn of node -> (peer node, peer's conn).
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// Last delivery time per directed link, to keep FIFO under jitter.
    link_clock: BTreeMap<(usize, ConnId), Millis>,
    next_inbound: u64,
    /// Unordered node pairs that cannot talk.
    pub cut: BTreeSet<(usize, usize)>,
    /// Every push that landed, in order.
    pub remote: Vec<Pushed>,
    /// The git remote, modelled as `net::git::push` treats it (shared with
    /// the madsim simulation).
    pub git: huskies_engine::testkit::remote::RemoteModel,
    /// The default branch, as `net::land` treats it.
    pub trunk: huskies_engine::testkit::trunk::TrunkModel,
    pub events: Vec<(Millis, usize, Event)>,
    /// StartRun count per (story, stage).
    pub starts: BTreeMap<(StoryId, Stage), u32>,
    pub trace_hash: huskies_engine::testkit::TraceHash,
    pub max_mesh_seen: usize,
    next_cmd: u64,
}

fn node_id(i: usize) -> NodeId {
    huskies_engine::testkit::node_name(i)
}

/// What every run of the harness's agent reports it cost.
pub const RUN_COST_MICRO_USD: u64 = 1_000;
/// The wall clock's start: 2026-12-02 00:00 UTC.
pub const LEDGER_DAY_MS: u64 = 20_424 * 86_400_000;

/// Short timings so scenarios finish in little simulated time.
pub fn fast_config() -> Config {
    Config {
        heartbeat_interval_ms: 200,
        claim_timeout_ms: 2_000,
        scan_interval_ms: 100,
        claim_stagger_ms: 300,
        run_timeout_ms: 60_000,
        retry_backoff_ms: 500,
        dial_backoff_min_ms: 100,
        dial_backoff_max_ms: 2_000,
        ..Config::default()
    }
}

impl Harness {
    /// Node 0 is the rendezvous (no agents); nodes 1..=agents dial it.
    pub fn new(agents: usize, seed: u64, config: Config) -> Harness {
        let mut c = Harness {
            now: Millis(0),
            nodes: Vec::new(),
            agent: AgentModel::fixed(1_000),
            latency_ms: 5,
            jitter_ms: 0,
            write_ms: 0,
            replies: BTreeMap::new(),
            seed,
            seq: 0,
            queue: BinaryHeap::new(),
            deliveries: BTreeMap::new(),
            links: BTreeMap::new(),
            link_clock: BTreeMap::new(),
            next_inbound: 0,
            cut: BTreeSet::new(),
            remote: Vec::new(),
            git: Default::default(),
            trunk: huskies_engine::testkit::trunk::TrunkModel::new(huskies_engine::testkit::trunk::TrunkConfig::calm(
                seed,
            )),
            events: Vec::new(),
            starts: BTreeMap::new(),
            trace_hash: Default::default(),
            max_mesh_seen: 0,
            next_cmd: 0,
        };
        for i in 0..=agents {
            let mut cfg = config.clone();
            let addr = if i == 0 { RENDEZVOUS.to_owned() } else { format!("mem://agent-{i}") };
            cfg.address = Some(addr.clone());
            cfg.label = format!("node {i}");
            if i == 0 {
                cfg.capacity = 0;
                cfg.rendezvous = None;
                cfg.max_mesh_peers = 0;
            } else {
                cfg.rendezvous = Some(RENDEZVOUS.to_owned());
            }
            c.nodes.push(HarnessNode {
                id: node_id(i),
                addr,
                config: cfg,
                engine: None,
                storage: Default::default(),
                runs: BTreeMap::new(),
                restarts: 0,
                api_refuses: false,
                writes: Default::default(),
                last_write_at: Millis(0),
                revealed: BTreeMap::new(),
                worktrees: Default::default(),
            });
            c.start(i);
        }
        c
    }

    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let seed = stable_hash(&[&self.seed.to_be_bytes(), &(i as u64).to_be_bytes(), &n.restarts.to_be_bytes()]);
        n.restarts += 1;
        n.engine = Some(Engine::new(n.config.clone(), n.id.clone(), seed, self.now));
        let bytes = n.storage.load();
        self.input(i, Input::StorageLoaded { bytes });
        if self.write_ms > 0 {
            self.check_revealed_survived(i);
        }
    }

    /// A restarted node reads back all it revealed, at that token or later:
    /// nothing leaves before its persist is durable, and a crash loses only
    /// writes never confirmed.
    fn check_revealed_survived(&mut self, i: usize) {
        let n = &self.nodes[i];
        let engine = n.engine.as_ref().expect("just started");
        for (story, min) in &n.revealed {
            let stored = engine.story(story).map(|v| v.state.token);
            assert!(
                stored.is_some_and(|t| t >= *min),
                "node {i} restarted with {story} at {stored:?}, below the {min} it revealed (seed {})",
                self.seed
            );
        }
    }

    /// Kills node `i`: its connections drop, its runs vanish, only its
    /// persisted bytes survive.
    pub fn crash(&mut self, i: usize) {
        // Of the writes not landed, a seeded prefix made it (unconfirmed).
        let pending = std::mem::take(&mut self.nodes[i].writes);
        let landed = stable_hash(&[b"crash", &self.seed.to_be_bytes(), &self.now.0.to_be_bytes()]) as usize
            % (pending.len() + 1);
        for (_, kind, bytes) in pending.into_iter().take(landed) {
            self.nodes[i].storage.apply(kind, bytes);
        }
        self.nodes[i].engine = None;
        self.nodes[i].runs.clear();
        let conns: Vec<ConnId> = self.links.keys().filter(|(n, _)| *n == i).map(|(_, c)| *c).collect();
        for c in conns {
            self.drop_link(i, c, false);
        }
        // Deliveries to a dead node are lost with it.
        let dead: Vec<u64> =
            self.deliveries.iter().filter(|(_, Delivery::Input(n, _))| *n == i).map(|(k, _)| *k).collect();
        for k in dead {
            self.deliveries.remove(&k);
        }
    }

    /// A push to the modelled remote; a landed one is recorded.
    fn push_to_remote(&mut self, i: usize, story: &StoryId, token: Token) -> Result<(), huskies_engine::PushError> {
        let node = self.nodes[i].id.clone();
        self.git.push(story, token, &node)?;
        self.remote.push(Pushed { story: story.clone(), node, token });
        Ok(())
    }

    /// Every commit a run pushed is reachable from the story's branch or a
    /// side ref: no finished work is lost.
    pub fn assert_no_work_lost(&self) {
        let lost = self.git.lost();
        assert!(lost.is_empty(), "pushed work lost: {lost:?}");
    }

    pub fn engine(&mut self, i: usize) -> &mut Engine {
        self.nodes[i].engine.as_mut().expect("node is up")
    }

    pub fn command(&mut self, i: usize, command: Command) -> Result<Reply, huskies_engine::CommandError> {
        self.next_cmd += 1;
        let id = CommandId(self.next_cmd);
        self.input(i, Input::Command { id, command });
        // A reply waits for its persist when writes take time.
        while !self.replies.contains_key(&id) {
            let Some(t) = self.next_time() else { break };
            self.now = self.now.max(t);
            self.step();
        }
        self.replies.remove(&id).expect("every command gets a reply")
    }

    pub fn add_stories(&mut self, at: usize, n: usize, stage: Stage) -> Vec<StoryId> {
        (0..n)
            .map(|k| {
                let id = StoryId::new(format!("s{k:04}")).unwrap();
                let cmd = Command::AddStory(huskies_engine::NewStory {
                    id: Some(id.clone()),
                    title: format!("story {k}"),
                    stage,
                    ..Default::default()
                });
                self.command(at, cmd).expect("add story");
                id
            })
            .collect()
    }

    fn pair(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].engine.is_some() && self.nodes[b].engine.is_some() && !self.cut.contains(&Self::pair(a, b))
    }

    /// Cuts every link between `a` and the `others`.
    pub fn partition(&mut self, a: usize, others: &[usize]) {
        for &b in others {
            if a != b {
                self.cut.insert(Self::pair(a, b));
            }
        }
        let doomed: Vec<(usize, ConnId)> = self
            .links
            .iter()
            .filter(|((n, _), (p, _))| self.cut.contains(&Self::pair(*n, *p)))
            .map(|(k, _)| *k)
            .collect();
        for (n, c) in doomed {
            if self.links.contains_key(&(n, c)) {
                self.drop_link(n, c, true);
            }
        }
    }

    /// Isolates node `a` from everyone.
    pub fn isolate(&mut self, a: usize) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.partition(a, &all);
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn drop_link(&mut self, n: usize, c: ConnId, notify_self: bool) {
        if let Some((p, pc)) = self.links.remove(&(n, c)) {
            self.links.remove(&(p, pc));
            self.schedule(p, Input::PeerClosed { conn: pc }, 1);
        }
        if notify_self {
            self.schedule(n, Input::PeerClosed { conn: c }, 1);
        }
    }

    fn schedule(&mut self, node: usize, input: Input, delay_ms: u64) {
        self.seq += 1;
        let at = self.now.saturating_add_ms(delay_ms);
        self.queue.push(Reverse((at, self.seq, node)));
        self.deliveries.insert(self.seq, Delivery::Input(node, input));
    }

    fn message_delay(&mut self, from: usize, conn: ConnId) -> u64 {
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            stable_hash(&[&self.seed.to_be_bytes(), &self.seq.to_be_bytes()]) % self.jitter_ms
        };
        let mut at = self.now.saturating_add_ms(self.latency_ms + jitter);
        let last = self.link_clock.entry((from, conn)).or_default();
        at = at.max(*last);
        *last = at;
        at.saturating_sub(self.now)
    }

    /// Feeds one input to node `i` and carries out its outputs.
    pub fn input(&mut self, i: usize, input: Input) -> Vec<Output> {
        let now = self.now;
        if let Input::Persisted { seq } = &input {
            // The writes it confirms land now.
            while self.nodes[i].writes.front().is_some_and(|(s, _, _)| s <= seq) {
                let (_, kind, bytes) = self.nodes[i].writes.pop_front().expect("front checked");
                self.nodes[i].storage.apply(kind, bytes);
            }
        }
        let Some(engine) = self.nodes[i].engine.as_mut() else { return Vec::new() };
        engine.handle(now, input);
        let outs = if self.write_ms == 0 {
            // Storage here is a Vec written at once: each persist is
            // durable before the outputs it covers are carried out.
            engine.drain_sync_persist()
        } else {
            std::iter::from_fn(|| engine.poll_output()).collect()
        };
        self.max_mesh_seen = self.max_mesh_seen.max(engine.mesh_peer_count());
        for o in &outs {
            self.execute(i, o.clone());
        }
        outs
    }

    /// A write issued with `write_ms` set: it lands (and is confirmed)
    /// after the ones before it, 1 to `write_ms` ms later.
    fn issue_write(&mut self, i: usize, seq: PersistSeq, kind: PersistKind, bytes: Vec<u8>) {
        let took =
            1 + stable_hash(&[b"write", &self.seed.to_be_bytes(), &(i as u64).to_be_bytes(), &seq.0.to_be_bytes()])
                % self.write_ms;
        let at = self.now.saturating_add_ms(took).max(self.nodes[i].last_write_at);
        self.nodes[i].last_write_at = at;
        self.nodes[i].writes.push_back((seq, kind, bytes));
        let delay = at.0 - self.now.0;
        self.schedule(i, Input::Persisted { seq }, delay);
    }

    fn execute(&mut self, i: usize, o: Output) {
        let line = format!("{} {} {:?}", self.now.0, i, o);
        self.trace_hash.fold(&line);
        let revealed = match &o {
            Output::Reply { result: Ok(Reply::Added { id }), .. } => Some((id, Token(0))),
            Output::StartRun { story, token, .. }
            | Output::Push { story, token, .. }
            | Output::Event(Event::Claimed { story, token, .. }) => Some((story, *token)),
            _ => None,
        };
        if let Some((story, token)) = revealed {
            let min = self.nodes[i].revealed.entry(story.clone()).or_insert(token);
            *min = (*min).max(token);
        }
        huskies_engine::testkit::world::carry_out(&mut At { h: self, i }, o);
    }

    fn next_time(&self) -> Option<Millis> {
        let q = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref().and_then(|e| e.poll_timeout()))
            .chain(self.nodes.iter().flat_map(|n| n.runs.values().map(|(_, t, _)| *t)))
            .min();
        match (q, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the cluster until simulated time `until`.
    pub fn run_until(&mut self, until: Millis) {
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.step();
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, ms: u64) {
        let until = self.now.saturating_add_ms(ms);
        self.run_until(until);
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse((t, seq, _))) = self.queue.peek().copied() {
            if t > now {
                break;
            }
            self.queue.pop();
            if let Some(Delivery::Input(n, input)) = self.deliveries.remove(&seq) {
                self.input(n, input);
            }
        }
        for i in 0..self.nodes.len() {
            let finished: Vec<(StoryId, Token, RunOutcome)> = self.nodes[i]
                .runs
                .iter()
                .filter(|(_, (_, at, _))| *at <= now)
                .map(|(s, (t, _, o))| (s.clone(), *t, o.clone()))
                .collect();
            for (story, token, outcome) in finished {
                self.nodes[i].runs.remove(&story);
                let outcome = if self.nodes[i].api_refuses {
                    RunOutcome::Unavailable { reason: "API authentication failed (401): invalid x-api-key".into() }
                } else {
                    outcome
                };
                if outcome == RunOutcome::Succeeded {
                    self.nodes[i].worktrees.committed_by(&story, token);
                }
                // Every run reports what it cost, as a coding agent does
                // (the cost ledger), ending at a fixed wall-clock day.
                let report = huskies_engine::RunReport {
                    usage: Some(huskies_engine::runs::AgentUsage {
                        cost_micro_usd: RUN_COST_MICRO_USD,
                        input_tokens: 1_000,
                        output_tokens: 50,
                        turns: 3,
                        model: "scripted".into(),
                        ..Default::default()
                    }),
                    finished_unix_ms: Some(LEDGER_DAY_MS + now.0),
                    ..Default::default()
                };
                self.input(i, Input::RunFinished { story, token, outcome, report });
            }
            let due = self.nodes[i].engine.as_ref().and_then(|e| e.poll_timeout()).is_some_and(|t| t <= now);
            if due {
                self.input(i, Input::Timeout);
            }
        }
    }

    /// Runs until every live replica has the same heads and no story in an
    /// active stage is left, or `budget_ms` passes. Returns the time taken.
    pub fn run_until_settled(&mut self, budget_ms: u64) -> Option<u64> {
        let start = self.now;
        let deadline = start.saturating_add_ms(budget_ms);
        while self.now < deadline {
            self.run_for(100);
            if self.converged() && self.all_finished() {
                self.assert_index_fresh();
                return Some(self.now.saturating_sub(start));
            }
        }
        self.print_unsettled();
        None
    }

    /// What keeps the cluster from settling: whether heads agree, and each
    /// node's unfinished stories.
    pub fn print_unsettled(&mut self) {
        eprintln!("not settled: heads agree {}", self.converged());
        let worked = self.nodes[self.nodes.len() - 1].config.stages.clone();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(e) = n.engine.as_ref() else { continue };
            for (id, v) in e.stories().filter(|(_, v)| worked.contains(&v.state.stage) && !v.state.failed) {
                eprintln!("  node {i}: {id} {:?}", v.state);
            }
        }
    }

    /// Every engine's incremental index matches a fresh read of its document.
    pub fn assert_index_fresh(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(e) = self.nodes[i].engine.as_mut() {
                let drift = e.index_drift();
                assert!(drift.is_empty(), "node {i} index drifted from its document: {drift:?}");
            }
        }
    }

    pub fn converged(&mut self) -> bool {
        let mut heads = None;
        for n in &mut self.nodes {
            if let Some(e) = n.engine.as_mut() {
                let h = e.heads();
                if heads.get_or_insert_with(|| h.clone()) != &h {
                    return false;
                }
            }
        }
        true
    }

    /// No story is in a stage the agents work, anywhere (failed ones count
    /// as finished).
    pub fn all_finished(&self) -> bool {
        let worked = &self.nodes[self.nodes.len() - 1].config.stages;
        self.nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .all(|e| e.stories().all(|(_, v)| !worked.contains(&v.state.stage) || v.state.failed))
    }

    pub fn count_events(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, _, e)| f(e)).count()
    }

    /// Starts beyond the first per (story, stage).
    pub fn duplicate_starts(&self) -> u32 {
        self.starts.values().map(|n| n - 1).sum()
    }
}

/// Node `i` of the harness, as the world its outputs are carried out in:
/// in-memory links, the harness's queue for timing, and the models of the
/// git remote and the default branch.
struct At<'a> {
    h: &'a mut Harness,
    i: usize,
}

impl huskies_engine::testkit::world::World for At<'_> {
    fn persist(&mut self, seq: PersistSeq, kind: PersistKind, bytes: Vec<u8>) {
        if self.h.write_ms == 0 {
            self.h.nodes[self.i].storage.apply(kind, bytes);
        } else {
            self.h.issue_write(self.i, seq, kind, bytes);
        }
    }

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let (h, i) = (&mut *self.h, self.i);
        if let Some(&(p, pc)) = h.links.get(&(i, conn)) {
            let d = h.message_delay(i, conn);
            h.schedule(p, Input::PeerMessage { conn: pc, bytes }, d);
        }
    }

    fn dial(&mut self, conn: ConnId, address: String) {
        let (h, i) = (&mut *self.h, self.i);
        let target = h.nodes.iter().position(|n| n.addr == address);
        match target {
            Some(t) if t != i && h.reachable(i, t) => {
                h.next_inbound += 1;
                let inbound = ConnId(h.next_inbound);
                h.links.insert((i, conn), (t, inbound));
                h.links.insert((t, inbound), (i, conn));
                h.schedule(t, Input::PeerConnected { conn: inbound }, h.latency_ms);
                h.schedule(i, Input::PeerConnected { conn }, h.latency_ms);
            }
            _ => h.schedule(i, Input::PeerClosed { conn }, h.latency_ms),
        }
    }

    fn hang_up(&mut self, conn: ConnId) {
        self.h.drop_link(self.i, conn, false);
    }

    fn start_run(&mut self, story: StoryId, stage: Stage, token: Token) {
        let (h, i) = (&mut *self.h, self.i);
        *h.starts.entry((story.clone(), stage)).or_default() += 1;
        if stage == huskies_engine::Stage::Current {
            h.trunk.work_started(&story);
        }
        let node = h.nodes[i].id.clone();
        h.git.run_started(&story, token, &node);
        // Draws hashed from (seed, story, token): a run's fate does not
        // depend on what other nodes did first.
        let mut n = 0u64;
        let seed = h.seed;
        let run = h.agent.start(|| {
            n += 1;
            stable_hash(&[story.as_str().as_bytes(), &token.0.to_be_bytes(), &seed.to_be_bytes(), &n.to_be_bytes()])
        });
        if let Some(d) = run.duration_ms {
            h.nodes[i].runs.insert(story, (token, h.now.saturating_add_ms(d), run.outcome));
        }
    }

    fn stop_run(&mut self, story: StoryId, token: Token) {
        let runs = &mut self.h.nodes[self.i].runs;
        if runs.get(&story).is_some_and(|(t, _, _)| *t == token) {
            runs.remove(&story);
        }
    }

    fn push(&mut self, story: StoryId, token: Token) {
        let outcome = self.h.push_to_remote(self.i, &story, token);
        self.h.nodes[self.i].worktrees.pushed(&story);
        self.h.schedule(self.i, Input::PushFinished { story, token, outcome }, 1);
    }

    fn land(
        &mut self,
        batch: huskies_engine::landing::BatchId,
        stories: Vec<huskies_engine::landing::LandStory>,
        ahead: Vec<huskies_engine::landing::LandStory>,
    ) {
        let (h, i) = (&mut *self.h, self.i);
        // Built, gated and pushed at once (the harness models no gate
        // time); a batch ahead not landed yet is not waited for.
        let git = &h.git;
        let fenced = |s: &StoryId, t: Token| git.tip(s).map(|c| c.0).filter(|tip| *tip > t);
        let draw = stable_hash(&[b"flaky", &h.seed.to_be_bytes(), &batch.0.to_be_bytes(), &(i as u64).to_be_bytes()]);
        let build = h.trunk.build(&ahead, &stories, draw, fenced);
        // Half the batches hear what was left out before the answer.
        if (draw >> 32).is_multiple_of(2) {
            h.schedule(i, Input::LandBuilt { batch, left_out: build.report().left_out() }, 0);
        }
        let report = match h.trunk.try_land(&build) {
            huskies_engine::testkit::trunk::TryLand::Done(report) => report,
            _ => huskies_engine::landing::LandReport {
                result: huskies_engine::landing::LandResult::Retry { reason: "the batch ahead has not landed".into() },
                ..Default::default()
            },
        };
        h.schedule(i, Input::LandFinished { batch, report }, 1);
    }

    fn cancel_land(&mut self, _batch: huskies_engine::landing::BatchId) {}

    fn worktrees<R>(&mut self, f: impl FnOnce(&mut huskies_engine::testkit::world::Worktrees) -> R) -> R {
        f(&mut self.h.nodes[self.i].worktrees)
    }

    fn answer_inspection(&mut self, story: StoryId, token: Token, committed: bool) {
        self.h.schedule(self.i, Input::WorktreeInspected { story, token, committed }, 1);
    }

    fn reply(&mut self, id: CommandId, result: Result<Reply, huskies_engine::CommandError>) {
        self.h.replies.insert(id, result);
    }

    fn event(&mut self, e: Event) {
        if let huskies_engine::Event::SentBack { story, .. } = &e {
            self.h.trunk.returned(story);
        }
        self.h.events.push((self.h.now, self.i, e));
    }
}
