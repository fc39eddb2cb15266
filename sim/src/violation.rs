//! What the oracle checks, as types: every violation names the invariant
//! it broke, whether that is a safety or a liveness property, and what was
//! seen. A failing seed prints each as `SAFETY [invariant]: what`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Something bad happened.
    Safety,
    /// Something good did not happen in time.
    Liveness,
}

/// The oracle's invariants, one per property a fault is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// An honest replica shows a value only the Byzantine node could write.
    ForgedValueShown,
    /// A restart read back less than its node had revealed.
    RevealedLost,
    /// One story ran on two nodes at once past the grace period.
    DuplicateRun,
    /// A node reported a landing in a commit the default branch does not hold.
    LandedElsewhere,
    /// A node saw a story's token go back.
    TokenWentBack,
    /// A node saw a story's stage go back without a higher token.
    StageWentBack,
    /// A node held more supplementary connections than the cap.
    MeshCap,
    /// The default branch broke a rule (moved back, untested tip, a story twice).
    Trunk,
    /// A pushed commit is reachable from no ref.
    CommitUnreachable,
    /// An acknowledged story is neither live nor in cold storage.
    StoryLost,
    /// Two replicas with the same heads show different stories.
    SameHeadsOtherStories,
    /// A done story is not on the default branch in the commit its result names.
    DoneNotOnTrunk,
    /// An accepted result carries a token other than the story's.
    StaleResult,
    /// A story's branch does not end in its accepted result.
    BranchNotResult,
    /// An accepted result was never pushed by its node.
    ResultNotPushed,
    /// An accepted result names a node that never produced it.
    ResultNotProduced,
    /// An idle document grew from heartbeats.
    IdleGrowth,
    /// A node's index (what it decides on, kept up merge by merge) differs
    /// from a fresh read of its document.
    IndexStale,
    /// No node published a view.
    NoView,
    /// Replicas did not converge after the heal.
    NotConverged,
    /// A story was not finished within the heal budget.
    NotFinished,
    /// The cluster did not settle within the heal budget.
    NotSettled,
}

impl Invariant {
    pub fn class(self) -> Class {
        match self {
            Invariant::NoView | Invariant::NotConverged | Invariant::NotFinished | Invariant::NotSettled => {
                Class::Liveness
            }
            _ => Class::Safety,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.invariant.class() {
            Class::Safety => "SAFETY",
            Class::Liveness => "LIVENESS",
        };
        write!(f, "{class} [{:?}]: {}", self.invariant, self.what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_says_its_class_and_invariant() {
        let v = Violation { invariant: Invariant::NotSettled, what: "not settled within 5 ms".into() };
        assert_eq!(v.to_string(), "LIVENESS [NotSettled]: not settled within 5 ms");
        let v = Violation { invariant: Invariant::RevealedLost, what: "n1 restarted without s1".into() };
        assert_eq!(v.to_string(), "SAFETY [RevealedLost]: n1 restarted without s1");
    }
}
