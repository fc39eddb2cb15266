//! The cost ledger as `status`, the dashboard and `/metrics` show it
//! (engine/src/ledger.rs keeps it).

use std::collections::BTreeMap;

use huskies_engine::Engine;
use huskies_engine::ledger::{Day, LedgerLine, Period};
use serde::{Deserialize, Serialize};

/// One ledger line: a node's runs of one stage and model in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostLine {
    pub node: String,
    /// `YYYY-MM-DD` (UTC), or `all` for all time.
    pub day: String,
    #[serde(flatten)]
    pub line: LedgerLine,
}

/// The cluster's spending, as this node's replica has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Costs {
    /// Today (UTC) by this node's clock.
    pub today: Option<String>,
    pub spent_today_micro_usd: u64,
    pub daily_budget_micro_usd: Option<u64>,
    pub max_story_cost_micro_usd: Option<u64>,
    /// The day's budget is spent: no node claims new runs.
    pub budget_spent: bool,
    /// Every node's lines, all time first, then by day (newest first).
    pub lines: Vec<CostLine>,
}

impl Costs {
    pub fn of(engine: &mut Engine) -> Costs {
        let ledger = engine.ledger();
        let today = engine.today();
        let config = engine.cluster_settings().cloned();
        let mut lines = Vec::new();
        let mut ordered: Vec<_> = ledger.lines.iter().collect();
        // All-time first, then the newest day; by node within.
        ordered.sort_by_key(|((node, period), _)| {
            let rank = match period {
                Period::AllTime => (0, 0),
                Period::Day(d) => (1, u32::MAX - d.0),
            };
            (rank, node.clone())
        });
        for ((node, period), day_lines) in ordered {
            let day = match period {
                Period::AllTime => "all".to_owned(),
                Period::Day(d) => d.date(),
            };
            for l in &day_lines.0 {
                lines.push(CostLine { node: node.to_string(), day: day.clone(), line: l.clone() });
            }
        }
        Costs {
            today: today.map(Day::date),
            spent_today_micro_usd: today.map_or(0, |d| ledger.spent_on(d)),
            daily_budget_micro_usd: config.as_ref().and_then(|c| c.daily_budget_micro_usd),
            max_story_cost_micro_usd: config.as_ref().and_then(|c| c.max_story_cost_micro_usd),
            budget_spent: engine.daily_budget_spent().is_some(),
            lines,
        }
    }

    /// All-time sums keyed by what `key` picks of a line.
    pub fn all_time_by<K: Ord>(&self, key: impl Fn(&CostLine) -> K) -> BTreeMap<K, (u64, u64)> {
        let mut out: BTreeMap<K, (u64, u64)> = BTreeMap::new();
        for l in self.lines.iter().filter(|l| l.day == "all") {
            let e = out.entry(key(l)).or_default();
            e.0 += l.line.runs;
            e.1 = e.1.saturating_add(l.line.cost_micro_usd);
        }
        out
    }
}

/// `micro` micro-USD as dollars.
pub fn usd(micro: u64) -> String {
    huskies_engine::ledger::usd(micro)
}
