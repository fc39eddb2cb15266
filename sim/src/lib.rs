//! # huskies-sim: the engine under madsim
//!
//! Every node of a simulated cluster runs the real [`huskies_engine::Engine`]
//! driven by madsim's clock, network and task scheduler. A seed fixes
//! everything: fault profile, latencies, agent behaviour, crash times. Faults
//! and the invariant each is checked against:
//!
//! | fault | invariant the oracle checks |
//! |---|---|
//! | symmetric / asymmetric partitions, swizzle-clog, latency | replicas converge to identical heads and identical stories after heal |
//! | crash and restart from persisted bytes | no acknowledged story is lost; own claims are reconciled |
//! | slow disk (`disk.rs`): outputs wait behind writes; crashes lose unconfirmed writes and tear the one in flight | every restart reads back each story, claim, run and push its node revealed, at that token or later |
//! | pause past the claim timeout, clock skew and jumps | a stale-token result is never accepted: the final result carries the final token, was pushed by its node, and is accepted once |
//! | agent runs that fail or hang, pushes that fail | every story still finishes after heal (liveness) |
//! | claim storms | after heal and a timeout, no story runs on two nodes at once |
//! | membership churn | nobody exceeds `max_mesh_peers` supplementary connections |
//! | idle time | heartbeats do not grow the document |
//!
//! Violations are typed (`violation.rs`) and read `SAFETY [Invariant]: …` or
//! `LIVENESS [Invariant]: …`; a failing seed prints the
//! command that replays it.

#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod link;
#[cfg(madsim)]
pub mod node;
#[cfg(madsim)]
pub mod oracle;
#[cfg(madsim)]
pub mod profile;
#[cfg(madsim)]
pub mod report;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod sweep;
#[cfg(madsim)]
pub mod violation;

/// True when built with `--cfg madsim` (set in `.cargo/config.toml`). A
/// test asserts it, so the sims can never silently compile out.
pub const SIMULATION_ENABLED: bool = cfg!(madsim);
