//! The default branch, modelled as `huskies_net::land` treats it: a line of
//! landed commits, one per story, moved only by compare-and-swap on the tip
//! a landing built on, and only to a tree whose gates passed.
//!
//! Stories touch files (drawn from a hash of the seed and the story): two
//! stories that touch a file conflict unless the one landed first was on
//! the default branch when the other's work was last brought up to date (a
//! run in `current`, which merges the default branch in). A bad story fails
//! the gates until its agent has reworked it after a return; any gate run
//! may also fail at random (flaky).
//!
//! The oracle checks against it: the tip only moves forward, every tip
//! passed the gates, no story is on the branch twice, every done story is.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::stable_hash;
use crate::landing::{LandReport, LandResult, LandStory};
use crate::{StoryId, Token};

/// How stories and gates behave.
#[derive(Debug, Clone, Copy)]
pub struct TrunkConfig {
    pub seed: u64,
    /// Files a story may touch; fewer files, more conflicts.
    pub files: u32,
    /// Files each story touches.
    pub files_per_story: u32,
    /// Per mille of stories that fail the gates until reworked.
    pub bad_per_mille: u32,
    /// Per mille of gate runs that fail whatever the tree (flaky gates).
    pub flaky_per_mille: u32,
}

impl TrunkConfig {
    /// No conflicts, no bad stories, no flaky gates.
    pub fn calm(seed: u64) -> TrunkConfig {
        TrunkConfig { seed, files: 1 << 20, files_per_story: 1, bad_per_mille: 0, flaky_per_mille: 0 }
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

    fn files(&self, story: &StoryId) -> BTreeSet<u32> {
        (0..self.config.files_per_story)
            .map(|i| {
                let h = stable_hash(&[
                    b"file",
                    story.as_str().as_bytes(),
                    &i.to_be_bytes(),
                    &self.config.seed.to_be_bytes(),
                ]);
                (h % u64::from(self.config.files.max(1))) as u32
            })
            .collect()
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

    /// One try at landing `batch` on the tip `base`, with `flaky` the draw
    /// that decides a flaky gate run (per mille) and `fenced` telling
    /// whether a newer claim holds a story's branch. Returns `None` when
    /// the tip is no longer `base` (the compare-and-swap fails: build and
    /// test again on the new tip).
    pub fn land(
        &mut self,
        base: usize,
        batch: &[LandStory],
        flaky: u64,
        fenced: impl Fn(&StoryId, Token) -> Option<Token>,
    ) -> Option<LandReport> {
        if base != self.commits.len() {
            return None;
        }
        let mut report = LandReport { base: Self::commit_name(base), ..LandReport::default() };
        let mut landed_before = Vec::new();
        let mut applied: Vec<&LandStory> = Vec::new();
        let mut touched: BTreeSet<u32> = BTreeSet::new();
        for s in batch {
            if let Some(at) = self.landed_at(&s.id) {
                landed_before.push((s.id.clone(), Self::commit_name(at + 1)));
                continue;
            }
            if let Some(by) = fenced(&s.id, s.token) {
                report.fenced.push((s.id.clone(), by));
                continue;
            }
            let files = self.files(&s.id);
            let since = self.based_on.get(&s.id).copied().unwrap_or(0);
            let on_trunk: BTreeSet<u32> =
                self.commits[since.min(self.commits.len())..].iter().flat_map(|c| self.files(&c.story)).collect();
            let clash: Vec<u32> = files.iter().filter(|f| on_trunk.contains(f)).copied().collect();
            if clash.is_empty() && files.iter().any(|f| touched.contains(f)) {
                // Applies on the tip, clashes with one ahead in the batch.
                report.deferred.push(s.id.clone());
                continue;
            }
            if !clash.is_empty() {
                let names: Vec<String> = clash.iter().map(|f| format!("src/f{f}.rs")).collect();
                let why = format!("merge conflict with the default branch at {} in: {}", report.base, names.join(", "));
                report.conflicts.push((s.id.clone(), why));
                continue;
            }
            touched.extend(files);
            applied.push(s);
        }
        if applied.is_empty() {
            report.result = LandResult::Landed { commits: landed_before };
            return Some(report);
        }
        self.gate_runs += 1;
        let bad = applied.iter().find(|s| self.is_bad(&s.id));
        let flaked = flaky % 1000 < u64::from(self.config.flaky_per_mille);
        if bad.is_some() || flaked {
            self.gate_failures += 1;
            let why = match bad {
                Some(s) => format!("test of {} failed", s.id),
                None => "flaky: timed out".to_owned(),
            };
            report.result = LandResult::GateFailed { gate: "cargo test".into(), output_tail: why };
            return Some(report);
        }
        let mut commits = landed_before;
        for s in &applied {
            self.commits.push(TrunkCommit { story: s.id.clone(), token: s.token, tested: false });
            commits.push((s.id.clone(), Self::commit_name(self.commits.len())));
        }
        // The branch points only at the batch's last commit: that tree
        // passed the gates.
        if let Some(last) = self.commits.last_mut() {
            last.tested = true;
        }
        self.tips.push(self.commits.len());
        report.result = LandResult::Landed { commits };
        Some(report)
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
