//! An agent's output, read line by line as it streams (issue 20, items
//! 2, 3 and 5).
//!
//! - Claude Code's stream-json: `assistant` messages (each a turn, with
//!   the tool calls it makes), `user` messages (the tools' results), and
//!   the final `result` object (agent_report.rs).
//! - Codex's `exec --json`: `thread.started`, `item.started` and
//!   `item.completed` (commands, file changes, messages),
//!   `turn.completed` with token usage and no price, `turn.failed`.
//!
//! From them: the agent's own verdict and usage; the git commands of the
//! agent that failed, with what git answered (so "no commits" can say
//! why); and what it is doing now (turn, tool, file). Every line is
//! untrusted text: anything that does not parse is skipped.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::agent_report::{AgentReport, Tokens};
use crate::project::Price;

/// Failed git commands kept, newest last.
const GIT_FAILURES_KEPT: usize = 3;
/// Claude tool calls awaiting their result, at most (older are dropped).
const PENDING_KEPT: usize = 64;
/// Longest text kept of a command or its answer.
const TEXT_CAP: usize = 300;

/// What the agent is doing now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Model turns so far.
    pub turns: u64,
    /// The tool of its latest call (`Bash`, `Edit`, `shell`, ...).
    pub tool: String,
    /// What that call works on: a file, or a command.
    pub target: String,
}

/// Codex's account, summed over its turns.
#[derive(Debug, Clone, Default)]
struct CodexTally {
    thread_id: Option<String>,
    /// Input tokens, cached ones included (as the API counts them).
    input: u64,
    cached_input: u64,
    output: u64,
    turns: u64,
    failed: Option<String>,
    last_message: String,
}

/// Reads an agent's stdout, one line at a time.
#[derive(Debug, Default)]
pub struct AgentStream {
    result: Option<AgentReport>,
    codex: Option<CodexTally>,
    git_failures: VecDeque<String>,
    /// Claude: tool-use id → the git command it ran.
    pending_git: BTreeMap<String, String>,
    progress: Progress,
}

fn cut(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(TEXT_CAP) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn is_git_write(command: &str) -> bool {
    ["git commit", "git add", "git rm", "git mv"].iter().any(|g| command.contains(g))
}

impl AgentStream {
    pub fn handle_line(&mut self, line: &str) {
        let line = line.trim();
        if !line.starts_with('{') {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else { return };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "result" => self.result = AgentReport::from_output(line),
            "assistant" => self.handle_claude_turn(&v),
            "user" => self.handle_claude_results(&v),
            t if t.starts_with("thread.") || t.starts_with("turn.") || t.starts_with("item.") => {
                self.handle_codex(t, &v)
            }
            _ => {}
        }
    }

    fn handle_claude_turn(&mut self, v: &Value) {
        self.progress.turns += 1;
        let Some(content) = v.pointer("/message/content").and_then(Value::as_array) else { return };
        for block in content.iter().filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")) {
            let tool = block.get("name").and_then(Value::as_str).unwrap_or("?");
            let input = block.get("input");
            let target = ["file_path", "notebook_path", "command", "pattern", "path", "url"]
                .iter()
                .find_map(|k| input.and_then(|i| i.get(*k)).and_then(Value::as_str))
                .unwrap_or("");
            self.progress.tool = cut(tool);
            self.progress.target = cut(target);
            if tool == "Bash"
                && is_git_write(target)
                && let Some(id) = block.get("id").and_then(Value::as_str)
            {
                if self.pending_git.len() >= PENDING_KEPT {
                    self.pending_git.pop_first();
                }
                self.pending_git.insert(id.to_owned(), cut(target));
            }
        }
    }

    fn handle_claude_results(&mut self, v: &Value) {
        let Some(content) = v.pointer("/message/content").and_then(Value::as_array) else { return };
        for block in content {
            let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else { continue };
            let Some(command) = self.pending_git.remove(id) else { continue };
            if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                let said = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
                    }
                    _ => String::new(),
                };
                self.note_git_failure(&command, &said);
            }
        }
    }

    fn handle_codex(&mut self, kind: &str, v: &Value) {
        let tally = self.codex.get_or_insert_with(CodexTally::default);
        match kind {
            "thread.started" => tally.thread_id = v.get("thread_id").and_then(Value::as_str).map(cut),
            "turn.completed" => {
                let n = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
                tally.input = tally.input.saturating_add(n("input_tokens"));
                tally.cached_input = tally.cached_input.saturating_add(n("cached_input_tokens"));
                tally.output = tally.output.saturating_add(n("output_tokens"));
                tally.turns += 1;
            }
            "turn.failed" => {
                let said = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("turn failed");
                tally.failed = Some(cut(said));
            }
            "item.started" | "item.completed" => {
                let Some(item) = v.get("item") else { return };
                let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("");
                match text("type") {
                    "command_execution" => {
                        self.progress.tool = "shell".into();
                        self.progress.target = cut(text("command"));
                        let code = item.get("exit_code").and_then(Value::as_i64);
                        if kind == "item.completed" && code.is_some_and(|c| c != 0) && is_git_write(text("command")) {
                            let (command, said) = (text("command").to_owned(), text("aggregated_output").to_owned());
                            self.note_git_failure(&command, &said);
                        }
                    }
                    "file_change" => {
                        let path = item.pointer("/changes/0/path").and_then(Value::as_str).unwrap_or("");
                        self.progress.tool = "edit".into();
                        self.progress.target = cut(path);
                    }
                    "agent_message" if kind == "item.completed" => {
                        self.progress.turns += 1;
                        tally.last_message = cut(text("text"));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn note_git_failure(&mut self, command: &str, said: &str) {
        if self.git_failures.len() >= GIT_FAILURES_KEPT {
            self.git_failures.pop_front();
        }
        // One line: a reason is shown on one.
        let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
        self.git_failures.push_back(format!("`{}` answered: {}", cut(command), cut(&said)));
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The agent's failed git commands and what git answered, newest last.
    pub fn git_failures(&self) -> Vec<String> {
        self.git_failures.iter().cloned().collect()
    }

    /// The agent's own account of the run: Claude's result object, or
    /// Codex's turns priced by `prices[model]` (`None`: no price known,
    /// the cost stays unknown).
    pub fn report(&self, model: Option<&str>, prices: &BTreeMap<String, Price>) -> Option<AgentReport> {
        if let Some(r) = &self.result {
            return Some(r.clone());
        }
        let c = self.codex.as_ref()?;
        let fresh_input = c.input.saturating_sub(c.cached_input);
        let cost_usd = model
            .and_then(|m| prices.get(m))
            .map(|p| p.cost_micro_usd(fresh_input, c.cached_input, c.output) as f64 / 1e6);
        let api_status = c.failed.as_deref().and_then(status_in);
        Some(AgentReport {
            subtype: if c.failed.is_some() { "error_during_execution" } else { "success" }.into(),
            is_error: c.failed.is_some(),
            terminal_reason: None,
            result: c.failed.clone().unwrap_or_else(|| c.last_message.clone()),
            num_turns: Some(c.turns),
            session_id: c.thread_id.clone(),
            cost_usd,
            tokens: Tokens { input: fresh_input, output: c.output, cache_read: c.cached_input, cache_write: 0 },
            denials: Vec::new(),
            model: model.map(str::to_owned),
            api_status,
        })
    }
}

/// The HTTP status in Codex's "unexpected status 529 ..." text.
fn status_in(said: &str) -> Option<u16> {
    let rest = &said[said.find("unexpected status ")? + "unexpected status ".len()..];
    rest.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> AgentStream {
        let mut s = AgentStream::default();
        for l in lines {
            s.handle_line(l);
        }
        s
    }

    #[test]
    fn claude_git_failures_are_kept_with_what_git_answered() {
        let s = feed(&[
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Edit","input":{"file_path":"/w/src/lib.rs"}}]}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t2","name":"Bash","input":{"command":"git commit -m x"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":"Author identity unknown\n*** Please tell me who you are."}]}}"#,
            "not json at all",
        ]);
        assert_eq!(
            s.git_failures(),
            vec!["`git commit -m x` answered: Author identity unknown *** Please tell me who you are."]
        );
        assert_eq!(s.progress(), &Progress { turns: 2, tool: "Bash".into(), target: "git commit -m x".into() });
        assert!(s.report(None, &BTreeMap::new()).is_none(), "no result object yet");
    }

    #[test]
    fn codex_usage_is_summed_and_priced() {
        let lines = [
            r#"{"type":"thread.started","thread_id":"th-1"}"#,
            r#"{"type":"turn.started"}"#,
            r#"{"type":"item.completed","item":{"type":"command_execution","command":"bash -lc 'git commit -m x'","aggregated_output":"fatal: index.lock: Read-only file system","exit_code":128}}"#,
            r#"{"type":"item.completed","item":{"type":"agent_message","text":"Done."}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":2400,"cached_input_tokens":400,"output_tokens":160}}"#,
        ];
        let s = feed(&lines);
        let prices: BTreeMap<String, Price> = [(
            "m".to_owned(),
            Price {
                input_micro_per_mtok: 1_250_000,
                cached_input_micro_per_mtok: 125_000,
                output_micro_per_mtok: 10_000_000,
            },
        )]
        .into();
        let r = s.report(Some("m"), &prices).unwrap();
        assert_eq!(r.failure(), None);
        assert_eq!(r.tokens, Tokens { input: 2000, output: 160, cache_read: 400, cache_write: 0 });
        // 2000 × 1.25 + 400 × 0.125 + 160 × 10 = 2500 + 50 + 1600 micro-USD.
        assert_eq!(r.usage().cost_micro_usd, 4_150);
        assert_eq!((r.session_id.as_deref(), r.num_turns), (Some("th-1"), Some(1)));
        assert!(s.git_failures()[0].contains("Read-only file system"));
        assert_eq!(s.report(Some("unpriced"), &prices).unwrap().cost_usd, None);
    }

    #[test]
    fn codex_api_errors_are_told_apart() {
        let failed = |msg: &str| {
            let s = feed(&[&format!(r#"{{"type":"turn.failed","error":{{"message":"{msg}"}}}}"#)]);
            s.report(None, &BTreeMap::new()).unwrap()
        };
        let over = failed("unexpected status 529 <unknown status code>: Overloaded, url: http://x/v1/responses");
        assert!(over.retryable() && over.failure().unwrap().starts_with("API overloaded (529)"));
        let auth = failed("unexpected status 401 Unauthorized: bad key");
        assert!(!auth.retryable() && auth.failure().unwrap().starts_with("API authentication failed (401)"));
        let other = failed("sandbox error");
        assert!(!other.retryable() && other.failure().unwrap().starts_with("agent error: sandbox error"));
    }
}
