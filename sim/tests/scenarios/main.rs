//! The chaos scenarios. One test binary, one module per scenario; each
//! sweeps its seeds (`HUSKIES_SEEDS=k` for more, `HUSKIES_SEED=n` to replay).

/// The sims spend a sixth of their time in glibc's malloc and free.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(madsim)]
mod byzantine;
#[cfg(madsim)]
mod claim_storm;
#[cfg(madsim)]
mod clock_skew;
#[cfg(madsim)]
mod crash_restart;
#[cfg(madsim)]
mod determinism;
#[cfg(madsim)]
mod long_history;
#[cfg(madsim)]
mod merge_queue;
#[cfg(madsim)]
mod mesh_churn;
#[cfg(madsim)]
mod offline_reclaim;
#[cfg(madsim)]
mod partition_heal;
#[cfg(madsim)]
mod scale;
#[cfg(madsim)]
mod slow_disk;
#[cfg(madsim)]
mod swarm;

/// Not gated on `cfg(madsim)`: without the flag this fails instead of the
/// sims silently vanishing and "0 tests" passing.
#[test]
fn simulation_is_compiled_in() {
    let enabled = std::hint::black_box(huskies_sim::SIMULATION_ENABLED);
    assert!(enabled, "built without --cfg madsim: RUSTFLAGS replaced .cargo/config.toml's flags");
}
