//! The cost ledger (issue 20, items 3 and 4): what the cluster's coding
//! agents cost, per node, day, stage and model, kept in the document.
//!
//! Each node writes only its own lines, at root keys
//! `ledger/<node>/d<UTC day>` and `ledger/<node>/all` (one scalar each,
//! like `train/<node>`), adding a run's usage in the same step that writes
//! the run's record. A run finishes once, on the node that ran it, so its
//! cost counts once however many nodes the record and the ledger sync
//! through; a single writer per key means concurrent increments never
//! race. Run records are capped per story and finished stories move to
//! cold storage, so sums are taken from the ledger, not the records.
//! Root scalars travel into every new epoch (epoch.rs).
//!
//! Budgets: `daily_budget_micro_usd` stops new claims in the agents'
//! stages (current, qa) once the day's spend (every node's line for that
//! UTC day) reaches it; runs already going finish, and landing goes on:
//! work already paid for is not left untested. `max_story_cost_micro_usd`
//! gives up a story in those stages whose kept run records cost that much.
//! Both come in the signed cluster settings.
//!
//! Everything read here was written by a peer: a line that does not parse
//! counts nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runs::AgentUsage;
use crate::{Engine, NodeId, Stage};

pub(crate) const LEDGER_PREFIX: &str = "ledger/";
/// Lines per day and node, at most: a model past it counts as `other`.
const MAX_LINES: usize = 24;
/// Days kept of a node's lines (its all-time line is kept for ever).
pub const KEPT_DAYS: u32 = 62;
const MS_PER_DAY: u64 = 86_400_000;

/// A UTC day: days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(pub u32);

impl Day {
    pub fn of_unix_ms(unix_ms: u64) -> Day {
        Day(u32::try_from(unix_ms / MS_PER_DAY).unwrap_or(u32::MAX))
    }

    /// `YYYY-MM-DD` (proleptic Gregorian, UTC).
    pub fn date(self) -> String {
        // Howard Hinnant's civil_from_days.
        let z = i64::from(self.0) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Usage summed over runs of one stage and model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLine {
    pub stage: Stage,
    pub model: String,
    pub runs: u64,
    pub cost_micro_usd: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl LedgerLine {
    fn add(&mut self, u: &AgentUsage) {
        self.runs = self.runs.saturating_add(1);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(u.cost_micro_usd);
        self.input_tokens = self.input_tokens.saturating_add(u.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(u.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(u.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(u.cache_write_tokens);
    }
}

/// One node's lines for one period (a day, or all time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lines(pub Vec<LedgerLine>);

impl Lines {
    pub fn cost_micro_usd(&self) -> u64 {
        self.0.iter().map(|l| l.cost_micro_usd).fold(0, u64::saturating_add)
    }

    fn add(&mut self, stage: Stage, usage: &AgentUsage) {
        let mut model = if usage.model.is_empty() { "unknown".to_owned() } else { usage.model.clone() };
        let known = self.0.iter().any(|l| l.stage == stage && l.model == model);
        if !known && self.0.len() >= MAX_LINES - 1 {
            model = "other".into();
        }
        match self.0.iter_mut().find(|l| l.stage == stage && l.model == model) {
            Some(line) => line.add(usage),
            None => {
                let mut line = LedgerLine { stage, model, ..Default::default() };
                line.add(usage);
                self.0.push(line);
                self.0.sort_by(|a, b| (a.stage, &a.model).cmp(&(b.stage, &b.model)));
            }
        }
    }

    fn encode(&self) -> String {
        // Plain data: serialisation cannot fail.
        serde_json::to_string(&self.0).expect("ledger lines serialise")
    }

    /// A peer's lines, checked: at most [`MAX_LINES`], or nothing.
    fn decode(s: &str) -> Option<Lines> {
        let lines: Vec<LedgerLine> = serde_json::from_str(s).ok()?;
        (lines.len() <= MAX_LINES).then_some(Lines(lines))
    }
}

/// Which period a ledger key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Day(Day),
    AllTime,
}

impl Period {
    fn key(self, node: &NodeId) -> String {
        match self {
            Period::Day(d) => format!("{LEDGER_PREFIX}{node}/d{}", d.0),
            Period::AllTime => format!("{LEDGER_PREFIX}{node}/all"),
        }
    }

    /// The node and period of a ledger key.
    pub(crate) fn parse(key: &str) -> Option<(NodeId, Period)> {
        let (node, period) = key.strip_prefix(LEDGER_PREFIX)?.rsplit_once('/')?;
        let period = match period {
            "all" => Period::AllTime,
            d => Period::Day(Day(d.strip_prefix('d')?.parse().ok()?)),
        };
        Some((NodeId::new(node).ok()?, period))
    }
}

/// The whole cluster's ledger, as this replica has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub lines: BTreeMap<(NodeId, Period), Lines>,
}

impl Ledger {
    /// Every node's spend on `day`.
    pub fn spent_on(&self, day: Day) -> u64 {
        self.lines
            .iter()
            .filter(|((_, p), _)| *p == Period::Day(day))
            .map(|(_, l)| l.cost_micro_usd())
            .fold(0, u64::saturating_add)
    }
}

/// The UTC day by the driver's wall clock (`Input::WallClock`): the
/// ledger's day and the daily budget's. Unknown until the driver tells.
#[derive(Debug, Default)]
pub(crate) struct Today {
    day: Option<Day>,
}

impl Today {
    pub fn day(&self) -> Option<Day> {
        self.day
    }

    /// The wall clock said `unix_ms`: the new day, when it changed.
    pub fn advance(&mut self, unix_ms: u64) -> Option<Day> {
        let day = Day::of_unix_ms(unix_ms);
        (self.day != Some(day)).then(|| {
            self.day = Some(day);
            day
        })
    }
}

impl Engine {
    /// The cluster's ledger as this replica has it.
    pub fn ledger(&mut self) -> Ledger {
        let mut ledger = Ledger::default();
        for (key, value) in self.doc.read_ledger() {
            if let (Some(at), Some(lines)) = (Period::parse(&key), Lines::decode(&value)) {
                ledger.lines.insert(at, lines);
            }
        }
        ledger
    }

    /// The UTC day by the driver's wall clock, once it told us.
    pub fn today(&self) -> Option<Day> {
        self.today.day()
    }

    pub(crate) fn handle_wall_clock(&mut self, unix_ms: u64) {
        if let Some(day) = self.today.advance(unix_ms) {
            self.prune_ledger(day);
        }
    }

    /// Adds a run's usage to our lines for `day` and all time.
    pub(crate) fn add_to_ledger(&mut self, stage: Stage, usage: &AgentUsage, day: Option<Day>) {
        let node = self.node.clone();
        let periods = day.map(Period::Day).into_iter().chain([Period::AllTime]);
        for period in periods {
            let key = period.key(&node);
            let mut lines = self.doc.read_ledger_key(&key).and_then(|v| Lines::decode(&v)).unwrap_or_default();
            lines.add(stage, usage);
            self.doc.put_ledger_key(&key, &lines.encode());
        }
    }

    /// Drops our day lines older than [`KEPT_DAYS`].
    fn prune_ledger(&mut self, today: Day) {
        let old: Vec<String> = self
            .doc
            .read_ledger()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                Period::parse(k).is_some_and(|(n, p)| {
                    n == self.node && matches!(p, Period::Day(d) if d.0.saturating_add(KEPT_DAYS) < today.0)
                })
            })
            .collect();
        for key in old {
            self.doc.delete_ledger_key(&key);
        }
    }

    /// Whether the day's budget is spent: no new claims until the next
    /// day or a higher budget.
    pub fn daily_budget_spent(&mut self) -> Option<(u64, u64)> {
        let budget = self.config.daily_budget_micro_usd?;
        let today = self.today.day()?;
        let spent = self.ledger().spent_on(today);
        (spent >= budget).then_some((spent, budget))
    }

    /// Why `story` may not run again for its cost, if so: its kept runs
    /// (and `more`, a run not recorded yet) cost its budget or more.
    pub(crate) fn over_budget(&mut self, story: &crate::StoryId, more: u64) -> Option<String> {
        let max = self.config.max_story_cost_micro_usd?;
        if !self.index.known(story).state.stage.spends() {
            return None;
        }
        let cost = self.story_cost_micro_usd(story).saturating_add(more);
        (cost >= max).then(|| format!("over budget: its runs cost {} of the story's {}", usd(cost), usd(max)))
    }

    /// Gives up a free story that is over its budget, without running it:
    /// released at the next token (it outranks the state it replaces, and
    /// a concurrent claim at that token outranks it), marked failed.
    pub(crate) fn give_up_over_budget(&mut self, story: &crate::StoryId, reason: String) {
        let mut state = self.index.known(story).state.clone();
        state.token = state.token.next();
        state.holder = None;
        state.failed = true;
        state.reason = Some(crate::story::short_reason(&reason));
        self.write_state(story, state);
    }

    /// What the kept run records of `story` cost.
    pub fn story_cost_micro_usd(&mut self, story: &crate::StoryId) -> u64 {
        self.doc
            .read_runs(story)
            .iter()
            .filter_map(|r| r.report.usage.as_ref())
            .map(|u| u.cost_micro_usd)
            .fold(0, u64::saturating_add)
    }
}

/// `micro` micro-USD as dollars, to the cent or finer.
pub fn usd(micro: u64) -> String {
    format!("${:.4}", micro as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_have_dates() {
        assert_eq!(Day(0).date(), "1970-01-01");
        assert_eq!(Day::of_unix_ms(1_796_256_000_000).date(), "2026-12-03");
        assert_eq!(Day(11_016).date(), "2000-02-29");
    }

    #[test]
    fn lines_add_per_stage_and_model_and_stay_bounded() {
        let mut l = Lines::default();
        let u = |model: &str, cost| AgentUsage {
            cost_micro_usd: cost,
            model: model.into(),
            input_tokens: 10,
            ..Default::default()
        };
        l.add(Stage::Current, &u("a", 5));
        l.add(Stage::Current, &u("a", 7));
        l.add(Stage::Qa, &u("", 1));
        assert_eq!(l.cost_micro_usd(), 13);
        assert_eq!(l.0.len(), 2);
        assert_eq!((l.0[0].runs, l.0[0].input_tokens), (2, 20));
        assert_eq!(l.0[1].model, "unknown");
        for i in 0..100 {
            l.add(Stage::Current, &u(&format!("m{i}"), 1));
        }
        assert_eq!(l.0.len(), MAX_LINES);
        assert!(l.0.iter().any(|x| x.model == "other"));
        assert_eq!(Lines::decode(&l.encode()), Some(l.clone()));
        let too_many = serde_json::to_string(&vec![LedgerLine::default(); MAX_LINES + 1]).unwrap();
        assert_eq!(Lines::decode(&too_many), None);
        assert_eq!(Lines::decode("[{\"stage\":\"nope\"}]"), None);
    }

    #[test]
    fn keys_round_trip() {
        let n = NodeId::new("agent-1").unwrap();
        for p in [Period::Day(Day(20_424)), Period::AllTime] {
            assert_eq!(Period::parse(&p.key(&n)), Some((n.clone(), p)));
        }
        assert_eq!(Period::parse("ledger/agent-1/x"), None);
        assert_eq!(Period::parse("ledger/Bad Node/all"), None);
    }
}
