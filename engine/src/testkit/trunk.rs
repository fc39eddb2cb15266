//! The default branch, modelled as `huskies_net::land` treats it: a line of
//! landed commits, one per story, moved only by compare-and-swap on the tip
//! a landing built on, and only to a tree whose gates passed.
//!
//! A pair of stories conflicts with a fixed probability (drawn from a hash
//! of the seed and the pair): the later one to land conflicts unless the
//! earlier was on the default branch when the later one's work was last
//! brought up to date (a run in `current`, which merges the default branch
//! in). A bad story fails
//! the gates until its agent has reworked it after a return; any gate run
//! may also fail at random (flaky).
//!
//! The oracle checks against it: the tip only moves forward, every tip
//! passed the gates, no story is on the branch twice, every done story is.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::stable_hash;
use crate::landing::{CONFLICT_REASON, LandReport, LandResult, LandStory};
use crate::{StoryId, Token};

/// How stories and gates behave.
#[derive(Debug, Clone, Copy)]
pub struct TrunkConfig {
    pub seed: u64,
    /// Per mille of story pairs that conflict.
    pub pair_conflict_per_mille: u32,
    /// Per mille of stories that fail the gates until reworked.
    pub bad_per_mille: u32,
    /// Per mille of gate runs that fail whatever the tree (flaky gates).
    pub flaky_per_mille: u32,
}

impl TrunkConfig {
    /// No conflicts, no bad stories, no flaky gates.
    pub fn calm(seed: u64) -> TrunkConfig {
        TrunkConfig { seed, pair_conflict_per_mille: 0, bad_per_mille: 0, flaky_per_mille: 0 }
    }
}

/// One commit of the default branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkCommit {
    pub story: StoryId,
    pub token: Token,
    /// Whether the gates passed on a tree ending in this commit's batch.
    pub tested: bool,
}

/// A batch built and gated on the branch as it was (see [`TrunkModel::build`]).
#[derive(Debug, Clone)]
pub struct TrunkBuild {
    /// The branch's length it was built on.
    pub base: usize,
    /// Stories ahead it stacked, in order: the branch must gain exactly
    /// these before the build may land.
    pub expect: Vec<StoryId>,
    own: Vec<LandStory>,
    report: LandReport,
    landed_before: Vec<(StoryId, String)>,
    /// Why the gates failed, if they did.
    gate: Option<String>,
}

impl TrunkBuild {
    /// Whether the build runs the gates (anything of its own applied);
    /// otherwise its answer is known at once.
    pub fn gated(&self) -> bool {
        !self.own.is_empty()
    }

    /// The report as far as the build decided it (the result is the push's).
    pub fn report(&self) -> &LandReport {
        &self.report
    }
}

/// What a push of a build did.
#[derive(Debug)]
pub enum TryLand {
    /// The answer for the engine.
    Done(LandReport),
    /// The stories ahead have not all landed yet.
    Wait,
    /// The branch went elsewhere: build again.
    Moved,
}

#[derive(Debug)]
pub struct TrunkModel {
    pub config: TrunkConfig,
    /// The default branch, oldest first: its tip is the last commit.
    commits: Vec<TrunkCommit>,
    /// Lengths the tip had, in order: the branch only ever grows.
    tips: Vec<usize>,
    /// Trunk length when the story's work last took the default branch in.
    based_on: BTreeMap<StoryId, usize>,
    /// Stories reworked after a return (no longer bad).
    reworked: BTreeSet<StoryId>,
    /// Stories sent back, waiting for their rework.
    returned: BTreeSet<StoryId>,
    /// Gate runs, and those that failed.
    pub gate_runs: u64,
    pub gate_failures: u64,
}

impl Default for TrunkModel {
    fn default() -> Self {
        TrunkModel::new(TrunkConfig::calm(0))
    }
}

impl TrunkModel {
    pub fn new(config: TrunkConfig) -> TrunkModel {
        TrunkModel {
            config,
            commits: Vec::new(),
            tips: vec![0],
            based_on: BTreeMap::new(),
            reworked: BTreeSet::new(),
            returned: BTreeSet::new(),
            gate_runs: 0,
            gate_failures: 0,
        }
    }

    /// Whether `a` and `b` touch the same lines.
    fn clash(&self, a: &StoryId, b: &StoryId) -> bool {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let h = stable_hash(&[b"pair", x.as_str().as_bytes(), y.as_str().as_bytes(), &self.config.seed.to_be_bytes()]);
        h % 1000 < u64::from(self.config.pair_conflict_per_mille)
    }

    /// The file a conflicting pair shares, as a conflict report names it.
    fn shared_file(a: &StoryId, b: &StoryId) -> String {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        format!("src/{x}-{y}.rs")
    }

    /// Whether the story fails the gates (until reworked).
    pub fn is_bad(&self, story: &StoryId) -> bool {
        let h = stable_hash(&[b"bad", story.as_str().as_bytes(), &self.config.seed.to_be_bytes()]);
        !self.reworked.contains(story) && h % 1000 < u64::from(self.config.bad_per_mille)
    }

    /// Landing sent the story back: its next run in `current` reworks it.
    pub fn returned(&mut self, story: &StoryId) {
        self.returned.insert(story.clone());
    }

    /// A run of the story in `current` starts: its work takes the default
    /// branch in as it is now (and fixes what a return reported).
    pub fn work_started(&mut self, story: &StoryId) {
        self.based_on.insert(story.clone(), self.commits.len());
        if self.returned.remove(story) {
            self.reworked.insert(story.clone());
        }
    }

    /// The tip (number of commits) a landing would build on now.
    pub fn tip(&self) -> usize {
        self.commits.len()
    }

    fn landed_at(&self, story: &StoryId) -> Option<usize> {
        self.commits.iter().position(|c| &c.story == story)
    }

    /// Names the landed commit at `index` as the driver reports it.
    pub fn commit_name(index: usize) -> String {
        format!("trunk-{index:06}")
    }

    /// Builds `batch` on the tip as it is now, on top of the stories of
    /// `ahead` not landed yet (as `net::land` does), and runs the gates on
    /// the result; `flaky` decides a flaky gate run (per mille) and
    /// `fenced` whether a newer claim holds a story's branch.
    pub fn build(
        &mut self,
        ahead: &[LandStory],
        batch: &[LandStory],
        flaky: u64,
        fenced: impl Fn(&StoryId, Token) -> Option<Token>,
    ) -> TrunkBuild {
        let base = self.commits.len();
        let mut report = LandReport { base: Self::commit_name(base), ..LandReport::default() };
        let mut landed_before = Vec::new();
        let mut expect: Vec<LandStory> = Vec::new();
        let mut own: Vec<LandStory> = Vec::new();
        for (is_ahead, s) in ahead.iter().map(|s| (true, s)).chain(batch.iter().map(|s| (false, s))) {
            if let Some(at) = self.landed_at(&s.id) {
                if !is_ahead {
                    landed_before.push((s.id.clone(), Self::commit_name(at + 1)));
                }
                continue;
            }
            if let Some(by) = fenced(&s.id, s.token) {
                if !is_ahead {
                    report.fenced.push((s.id.clone(), by));
                }
                continue;
            }
            let since = self.based_on.get(&s.id).copied().unwrap_or(0);
            let on_trunk: Vec<&StoryId> =
                self.commits[since.min(base)..].iter().map(|c| &c.story).filter(|o| self.clash(&s.id, o)).collect();
            let stacked = expect.iter().chain(&own).any(|a| self.clash(&s.id, &a.id));
            match (is_ahead, on_trunk.is_empty(), stacked) {
                // Its own node sends it back or defers it: not in the tree.
                (true, false, _) | (true, _, true) => {}
                (true, true, false) => expect.push(s.clone()),
                (false, true, false) => own.push(s.clone()),
                // Applies on the tip, clashes with one stacked before it.
                (false, true, true) => report.deferred.push(s.id.clone()),
                (false, false, _) => {
                    let names: Vec<String> = on_trunk.iter().map(|o| Self::shared_file(&s.id, o)).collect();
                    let why = format!(
                        "{CONFLICT_REASON} with the default branch at {} in: {}",
                        report.base,
                        names.join(", ")
                    );
                    report.conflicts.push((s.id.clone(), why));
                }
            }
        }
        report.speculative = !expect.is_empty();
        let mut gate = None;
        if !own.is_empty() {
            self.gate_runs += 1;
            let bad = expect.iter().chain(&own).find(|s| self.is_bad(&s.id));
            if bad.is_some() || flaky % 1000 < u64::from(self.config.flaky_per_mille) {
                self.gate_failures += 1;
                gate = Some(match bad {
                    Some(s) => format!("test of {} failed", s.id),
                    None => "flaky: timed out".to_owned(),
                });
            }
        }
        TrunkBuild { base, expect: expect.into_iter().map(|s| s.id).collect(), own, report, landed_before, gate }
    }

    /// The push of a build whose gates passed: lands when the branch is at
    /// the tip the build's stories ahead make (compare-and-swap); `Wait`
    /// while those are still on their way, `Moved` when the branch went
    /// elsewhere (build and test again).
    pub fn try_land(&mut self, b: &TrunkBuild) -> TryLand {
        let mut report = b.report.clone();
        if let Some(why) = &b.gate {
            report.result = LandResult::GateFailed { gate: "cargo test".into(), output_tail: why.clone() };
            return TryLand::Done(report);
        }
        if b.own.is_empty() {
            report.result = LandResult::Landed { commits: b.landed_before.clone() };
            return TryLand::Done(report);
        }
        let since: Vec<StoryId> =
            self.commits[b.base.min(self.commits.len())..].iter().map(|c| c.story.clone()).collect();
        if self.commits.len() < b.base || since != b.expect {
            return if self.commits.len() >= b.base && b.expect.starts_with(&since) {
                TryLand::Wait
            } else {
                TryLand::Moved
            };
        }
        let tested: Vec<StoryId> =
            self.commits.iter().map(|c| c.story.clone()).chain(b.own.iter().map(|s| s.id.clone())).collect();
        let mut commits = b.landed_before.clone();
        for s in &b.own {
            self.commits.push(TrunkCommit { story: s.id.clone(), token: s.token, tested: false });
            commits.push((s.id.clone(), Self::commit_name(self.commits.len())));
        }
        // The branch points only at the batch's last commit, whose tree is
        // the one the gates passed.
        let now: Vec<StoryId> = self.commits.iter().map(|c| c.story.clone()).collect();
        if let Some(last) = self.commits.last_mut() {
            last.tested = now == tested;
        }
        self.tips.push(self.commits.len());
        report.result = LandResult::Landed { commits };
        TryLand::Done(report)
    }

    /// Stories on the default branch, with how many times each is there.
    pub fn landed(&self) -> BTreeMap<StoryId, usize> {
        let mut m = BTreeMap::new();
        for c in &self.commits {
            *m.entry(c.story.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The commit of a story on the default branch, as the driver named it.
    pub fn commit_of(&self, story: &StoryId) -> Option<String> {
        self.landed_at(story).map(|i| Self::commit_name(i + 1))
    }

    /// What is wrong with the branch's history, if anything: a tip that
    /// went back, a tip whose tree was not tested, a story twice.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.tips.windows(2).any(|w| w[1] < w[0]) {
            v.push(format!("the default branch moved backwards: tips {:?}", self.tips));
        }
        for &t in &self.tips[1..] {
            if !self.commits[t - 1].tested {
                v.push(format!("the default branch pointed at untested commit {}", Self::commit_name(t)));
            }
        }
        for (s, n) in self.landed() {
            if n > 1 {
                v.push(format!("{s} is on the default branch {n} times"));
            }
        }
        v
    }
}
