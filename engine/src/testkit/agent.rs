//! The fake coding agent both simulators run: how long a run takes, and
//! whether it succeeds, fails, hangs, or its push fails. Every choice comes
//! from draws the caller supplies (its own seeded stream), so a simulator
//! stays deterministic and keeps its draw order.

use crate::RunOutcome;

/// What a node's fake agent does with its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentModel {
    pub run_min_ms: u64,
    /// Inclusive of `run_min_ms`, exclusive of this (equal: a fixed time).
    pub run_max_ms: u64,
    /// Percent of runs that exit with a failure.
    pub fail_pct: u64,
    /// Percent of runs that never exit (until the engine stops them).
    pub hang_pct: u64,
    /// Percent of pushes the remote refuses for a reason other than fencing.
    pub push_fail_pct: u64,
}

/// How one fake run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRun {
    /// `None`: the agent hangs.
    pub duration_ms: Option<u64>,
    pub outcome: RunOutcome,
}

impl AgentModel {
    /// Every run succeeds after exactly `run_ms`.
    pub const fn fixed(run_ms: u64) -> AgentModel {
        AgentModel { run_min_ms: run_ms, run_max_ms: run_ms, fail_pct: 0, hang_pct: 0, push_fail_pct: 0 }
    }

    /// A run starting now; takes two draws (the outcome's, then the
    /// duration's), always both, so the stream's order never depends on
    /// the outcome.
    pub fn start(&self, mut draw: impl FnMut() -> u64) -> FakeRun {
        assert!(self.run_min_ms <= self.run_max_ms, "agent run times {}..{}", self.run_min_ms, self.run_max_ms);
        assert!(self.fail_pct + self.hang_pct <= 100, "fail {}% + hang {}% > 100%", self.fail_pct, self.hang_pct);
        let roll = draw() % 100;
        let span = (self.run_max_ms - self.run_min_ms).max(1);
        let duration_ms = self.run_min_ms + draw() % span;
        let failed = RunOutcome::Failed { reason: "simulated agent failure".into() };
        match roll {
            r if r < self.hang_pct => FakeRun { duration_ms: None, outcome: RunOutcome::Succeeded },
            r if r < self.hang_pct + self.fail_pct => FakeRun { duration_ms: Some(duration_ms), outcome: failed },
            _ => FakeRun { duration_ms: Some(duration_ms), outcome: RunOutcome::Succeeded },
        }
    }

    /// Whether a push fails (one draw).
    pub fn push_fails(&self, mut draw: impl FnMut() -> u64) -> bool {
        draw() % 100 < self.push_fail_pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_percentages() {
        let model = AgentModel { run_min_ms: 100, run_max_ms: 200, fail_pct: 30, hang_pct: 10, push_fail_pct: 0 };
        let mut x = 0u64;
        let mut draw = || {
            x = crate::hash::stable_hash(&[&x.to_be_bytes()]);
            x
        };
        let (mut hung, mut failed) = (0, 0);
        for _ in 0..10_000 {
            let run = model.start(&mut draw);
            match (run.duration_ms, &run.outcome) {
                (None, _) => hung += 1,
                (Some(d), RunOutcome::Failed { .. }) => {
                    assert!((100..200).contains(&d));
                    failed += 1
                }
                (Some(d), RunOutcome::Succeeded) => assert!((100..200).contains(&d)),
                (Some(_), RunOutcome::Unavailable { .. }) => panic!("the model's API never refuses"),
            }
        }
        assert!((800..1_200).contains(&hung), "{hung} hung of 10,000 at 10%");
        assert!((2_700..3_300).contains(&failed), "{failed} failed of 10,000 at 30%");
        assert_eq!(AgentModel::fixed(7).start(&mut draw).duration_ms, Some(7));
    }
}
