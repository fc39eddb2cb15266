//! Fault profiles: which faults a run injects at random, and scripted
//! faults at fixed times.

use crate::node::AgentProfile;

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
