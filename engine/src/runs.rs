//! Run records: what each finished, failed or fenced run of a story did,
//! kept in the story's map so anyone can read a story's history.
//!
//! One scalar per run at `run/<token>/<node>` (a key no other writer uses,
//! so records never conflict), each node's newest [`MAX_RUN_RECORDS`]
//! kept: only a record's node writes or deletes it (schema.rs).

use serde::{Deserialize, Serialize};

use crate::{NodeId, Stage, StoryId, Token};

/// Records each node keeps per story; its older ones are deleted as new
/// ones arrive.
pub const MAX_RUN_RECORDS: usize = 20;
/// Bytes of the agent's stderr a record keeps (its tail).
pub const MAX_STDERR_TAIL: usize = 2 << 10;

/// What the driver learned of a run: given with `Input::RunFinished`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// The process's exit code; `None` when killed by a signal or never started.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// The branch head after the run.
    pub commit: Option<String>,
    /// The tail of the agent's stderr (cut to [`MAX_STDERR_TAIL`] here).
    pub stderr_tail: String,
    /// What the agent reported it used, when it reports (the cost ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AgentUsage>,
    /// When it ended by the driver's wall clock, in Unix ms: the ledger's
    /// day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
}

/// A run's cost and tokens, as the agent reported them. Cost in
/// millionths of a US dollar: integers add up the same on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUsage {
    #[serde(default)]
    pub cost_micro_usd: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub turns: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
}

/// Bytes kept of a model name or session id.
pub const MAX_USAGE_TEXT: usize = 128;

impl AgentUsage {
    /// Two tries of one run (an API error, retried): counts summed, model
    /// and session of the later one.
    pub fn add(&mut self, later: &AgentUsage) {
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(later.cost_micro_usd);
        self.input_tokens = self.input_tokens.saturating_add(later.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(later.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(later.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(later.cache_write_tokens);
        self.turns = self.turns.saturating_add(later.turns);
        if !later.model.is_empty() {
            self.model = later.model.clone();
        }
        if !later.session_id.is_empty() {
            self.session_id = later.session_id.clone();
        }
    }

    /// Bounded as every record field is (the agent printed it).
    fn bounded(mut self) -> AgentUsage {
        self.model = tail(&self.model, MAX_USAGE_TEXT);
        self.session_id = tail(&self.session_id, MAX_USAGE_TEXT);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcomeKind {
    /// Pushed, and the story advanced.
    Succeeded,
    /// The run, its push or its deadline failed; see `reason`.
    Failed,
    /// Its push was fenced at the remote by a newer claim; `reason` names
    /// the side ref that keeps its work.
    Fenced,
    /// Landing sent the story back to `current`: a conflict with the
    /// default branch, or a failed gate (`reason` says which).
    Returned,
}

/// One run, as the story's history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub node: NodeId,
    pub token: Token,
    pub stage: Stage,
    pub attempt: u32,
    pub outcome: RunOutcomeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub report: RunReport,
}

impl RunRecord {
    pub fn encode(&self) -> String {
        // Plain data with derived impls: serialisation cannot fail.
        serde_json::to_string(self).expect("run record serialises")
    }

    /// Peers are untrusted: what does not parse is skipped by the caller.
    pub fn decode(s: &str) -> Option<RunRecord> {
        serde_json::from_str(s).ok()
    }
}

/// `s` cut to its last `max` bytes at a character boundary.
pub fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

impl crate::Engine {
    /// A story's run records, oldest first.
    pub fn story_runs(&mut self, id: &StoryId) -> Vec<RunRecord> {
        self.doc.read_runs(id)
    }

    /// A story's body.
    pub fn story_body(&mut self, id: &StoryId) -> String {
        self.read_body(id)
    }

    /// Writes the record of our run of `story` that just ended.
    /// Ends our run of `story` in one change: the state that moves the
    /// story on or releases it (when there is one to write), the run's
    /// record and its ledger line. One change instead of two or three: each
    /// change is signed, sent, checked and applied on every node.
    pub(crate) fn end_run_in_doc(
        &mut self,
        story: &StoryId,
        state: Option<crate::story::StoryState>,
        run: &crate::claims::ActiveRun,
        outcome: RunOutcomeKind,
        reason: Option<String>,
    ) {
        self.doc.begin_batch();
        if let Some(state) = state {
            self.write_state(story, state);
        }
        self.record_run(story, run, outcome, reason);
        self.doc.end_batch();
    }

    fn record_run(
        &mut self,
        story: &StoryId,
        run: &crate::claims::ActiveRun,
        outcome: RunOutcomeKind,
        reason: Option<String>,
    ) {
        let mut report = run.report.clone().unwrap_or_default();
        report.stderr_tail = tail(&report.stderr_tail, MAX_STDERR_TAIL);
        if let Some(c) = &report.commit {
            report.commit = Some(tail(c, 64));
        }
        report.usage = report.usage.map(AgentUsage::bounded);
        let record = RunRecord {
            node: self.node.clone(),
            token: run.token,
            stage: run.stage,
            attempt: run.attempt,
            outcome,
            reason,
            report,
        };
        if let Some(u) = &record.report.usage {
            let day = record.report.finished_unix_ms.map(crate::ledger::Day::of_unix_ms).or(self.today.day());
            self.add_to_ledger(record.stage, u, day);
        }
        self.doc.put_run(story, &record, MAX_RUN_RECORDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_char_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn record_roundtrip_and_garbage() {
        let r = RunRecord {
            node: NodeId::new("agent-1").unwrap(),
            token: Token(4),
            stage: Stage::Current,
            attempt: 2,
            outcome: RunOutcomeKind::Failed,
            reason: Some("no commits".into()),
            report: RunReport {
                exit_code: Some(0),
                duration_ms: 1200,
                commit: None,
                stderr_tail: "x".into(),
                usage: Some(AgentUsage {
                    cost_micro_usd: 12_300,
                    input_tokens: 120,
                    turns: 2,
                    ..AgentUsage::default()
                }),
                finished_unix_ms: Some(1_796_256_000_000),
            },
        };
        assert_eq!(RunRecord::decode(&r.encode()), Some(r));
        assert_eq!(RunRecord::decode("{\"node\":1}"), None);
    }
}
