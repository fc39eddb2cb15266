//! The chaos scenarios. One test binary, one module per scenario; each
//! sweeps its seeds (`HUSKIES_SEEDS=k` for more, `HUSKIES_SEED=n` to replay).

#![cfg(madsim)]

mod claim_storm;
mod clock_skew;
mod crash_restart;
mod determinism;
mod mesh_churn;
mod offline_reclaim;
mod partition_heal;
mod scale;
mod swarm;

#[test]
fn simulation_is_compiled_in() {
    assert!(huskies_sim::SIMULATION_ENABLED, "build without --cfg madsim: RUSTFLAGS replaced .cargo/config.toml");
}
