//! What a coding agent says of its own run.
//!
//! Claude Code (`-p --output-format json`, or `stream-json`, whose last
//! line is the same object) ends with a `result` object: its verdict
//! (`subtype`, `is_error`), the tool calls it was denied, turns, session,
//! cost and tokens. Its exit code says much less: a run whose every tool
//! call was denied exits 0 with `"subtype":"success"`. So the verdict of a
//! run that printed one comes from it (issue 20, item 2).
//!
//! The object is untrusted text the agent printed: parsed leniently, any
//! field may be missing, nothing in it can fail the parse of the rest.

use serde_json::Value;

/// Tokens a run used, as the agent counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// The agent's own account of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReport {
    /// `success`, `error_max_turns`, `error_during_execution`, ...
    pub subtype: String,
    pub is_error: bool,
    pub terminal_reason: Option<String>,
    /// The agent's last words (`result`), cut short.
    pub result: String,
    pub num_turns: Option<u64>,
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    pub tokens: Tokens,
    /// Denied tool calls, as `Tool(input)`.
    pub denials: Vec<String>,
    /// The model that did most of the work (`modelUsage`'s costliest).
    pub model: Option<String>,
    /// The HTTP status of the API error that ended the run, if one did.
    pub api_status: Option<u16>,
}

/// Longest piece of agent text kept in a reason.
const TEXT_CAP: usize = 200;

fn cut(s: &str) -> String {
    match s.char_indices().nth(TEXT_CAP) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

impl AgentReport {
    /// The last `result` object in what the agent printed (one JSON object,
    /// or JSON lines), if any.
    pub fn from_output(stdout: &str) -> Option<AgentReport> {
        let whole = std::iter::once(stdout.trim());
        let lines = stdout.lines().rev().map(str::trim);
        whole.chain(lines).filter(|l| l.starts_with('{')).find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v.get("type")?.as_str()? == "result").then(|| Self::from_value(&v))
        })
    }

    fn from_value(v: &Value) -> AgentReport {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let usage = v.get("usage");
        let count = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
        let denials = v
            .get("permission_denials")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(denial).collect())
            .unwrap_or_default();
        AgentReport {
            subtype: text("subtype").unwrap_or_default(),
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            terminal_reason: text("terminal_reason"),
            result: cut(&text("result").unwrap_or_default()),
            num_turns: v.get("num_turns").and_then(Value::as_u64),
            session_id: text("session_id"),
            cost_usd: v.get("total_cost_usd").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0),
            tokens: Tokens {
                input: count("input_tokens"),
                output: count("output_tokens"),
                cache_read: count("cache_read_input_tokens"),
                cache_write: count("cache_creation_input_tokens"),
            },
            denials,
            model: main_model(v.get("modelUsage")),
            api_status: v.get("api_error_status").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()),
        }
    }

    /// The run's line in the cost ledger.
    pub fn usage(&self) -> huskies_engine::runs::AgentUsage {
        // Cost in millionths of a dollar; a nonsense figure counts nothing.
        let micro = self.cost_usd.map_or(0.0, |c| (c * 1e6).round()).clamp(0.0, u64::MAX as f64) as u64;
        huskies_engine::runs::AgentUsage {
            cost_micro_usd: micro,
            input_tokens: self.tokens.input,
            output_tokens: self.tokens.output,
            cache_read_tokens: self.tokens.cache_read,
            cache_write_tokens: self.tokens.cache_write,
            turns: self.num_turns.unwrap_or(0),
            model: self.model.clone().unwrap_or_default(),
            session_id: self.session_id.clone().unwrap_or_default(),
        }
    }

    /// An API error that may pass by itself: worth starting the run
    /// again after a while, without counting an attempt of the story.
    pub fn retryable(&self) -> bool {
        if self.subtype == "success" && !self.is_error {
            return false;
        }
        match self.api_status {
            Some(s) => s == 429 || (500..=599).contains(&s),
            None => {
                matches!(api_error_kind(None, &self.result), Some("API overloaded (529)" | "API rate limited (429)"))
            }
        }
    }

    /// The API refused the agent's credentials (401, 403): no retry helps,
    /// and the story is not to blame.
    pub fn auth_failed(&self) -> bool {
        let failed = self.subtype != "success" || self.is_error;
        failed
            && match self.api_status {
                Some(s) => s == 401 || s == 403,
                None => api_error_kind(None, &self.result) == Some("API authentication failed (401)"),
            }
    }

    /// Why the run failed by the agent's own account; `None` when it says
    /// it succeeded and was denied nothing.
    pub fn failure(&self) -> Option<String> {
        if !self.denials.is_empty() {
            return Some(format!("denied: {}", self.denials.join(", ")));
        }
        let turns = self.num_turns.map_or(String::new(), |n| format!(" after {n} turns"));
        match self.subtype.as_str() {
            "error_max_turns" => Some(format!("turn limit reached{turns}")),
            "success" if !self.is_error => None,
            _ => {
                let said = if self.result.is_empty() {
                    self.terminal_reason.clone().unwrap_or_default()
                } else {
                    self.result.clone()
                };
                let kind = api_error_kind(self.api_status, &said).unwrap_or("agent error");
                Some(format!("{kind}: {}", cut(said.trim())))
            }
        }
    }
}

/// The model with the highest cost in `modelUsage` (ties: the first).
fn main_model(models: Option<&Value>) -> Option<String> {
    let cost = |m: &Value| m.get("costUSD").and_then(Value::as_f64).unwrap_or(0.0);
    let mut best: Option<(&String, f64)> = None;
    for (name, m) in models?.as_object()? {
        if best.is_none_or(|(_, c)| cost(m) > c) {
            best = Some((name, cost(m)));
        }
    }
    best.map(|(n, _)| n.clone())
}

/// A denied call as `Tool(what it was asked)`.
fn denial(d: &Value) -> String {
    let tool = d.get("tool_name").and_then(Value::as_str).unwrap_or("?");
    let input = d.get("tool_input");
    let arg = ["command", "file_path", "path", "url", "pattern"]
        .iter()
        .find_map(|k| input.and_then(|i| i.get(*k)).and_then(Value::as_str))
        .map(str::to_owned)
        .or_else(|| input.map(Value::to_string))
        .unwrap_or_default();
    format!("{tool}({})", cut(&arg))
}

/// The kind of an API failure the agent reported, by its status or what
/// it said.
fn api_error_kind(status: Option<u16>, said: &str) -> Option<&'static str> {
    let s = said.to_ascii_lowercase();
    match status {
        Some(529) => return Some("API overloaded (529)"),
        Some(429) => return Some("API rate limited (429)"),
        Some(401 | 403) => return Some("API authentication failed (401)"),
        Some(500..=599) => return Some("API server error (5xx)"),
        _ => {}
    }
    if s.contains("529") || s.contains("overloaded") {
        Some("API overloaded (529)")
    } else if s.contains("429") || s.contains("rate limit") {
        Some("API rate limited (429)")
    } else if s.contains("401") || s.contains("authentication") || s.contains("invalid api key") {
        Some("API authentication failed (401)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the real `claude -p ... --output-format json` printed it, with
    /// a compound command denied under an allow list.
    const DENIED: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2113,"num_turns":2,"result":"Done: committed.","session_id":"5f0c","total_cost_usd":0.0123,"usage":{"input_tokens":120,"cache_creation_input_tokens":30,"cache_read_input_tokens":400,"output_tokens":55},"permission_denials":[{"tool_name":"Bash","tool_use_id":"t1","tool_input":{"command":"echo hi > f && git add f && git commit -m x"}}],"terminal_reason":"completed"}"#;

    #[test]
    fn a_denied_call_fails_the_run_and_is_named() {
        let r = AgentReport::from_output(DENIED).unwrap();
        assert_eq!(r.failure().unwrap(), "denied: Bash(echo hi > f && git add f && git commit -m x)");
        assert_eq!(r.cost_usd, Some(0.0123));
        assert_eq!(r.tokens, Tokens { input: 120, output: 55, cache_read: 400, cache_write: 30 });
        assert_eq!((r.num_turns, r.session_id.as_deref()), (Some(2), Some("5f0c")));
        let u = r.usage();
        assert_eq!((u.cost_micro_usd, u.input_tokens, u.cache_read_tokens, u.turns), (12_300, 120, 400, 2));
        let two = r#"{"type":"result","subtype":"success","modelUsage":{"claude-haiku":{"costUSD":0.001},"claude-sonnet":{"costUSD":0.02}}}"#;
        assert_eq!(AgentReport::from_output(two).unwrap().model.as_deref(), Some("claude-sonnet"));
    }

    #[test]
    fn stream_json_reads_the_last_result_line() {
        let out = format!(
            "{}\n{}\nnot json\n{}\n",
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","message":{}}"#,
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"ok"}"#
        );
        let r = AgentReport::from_output(&out).unwrap();
        assert_eq!(r.failure(), None);
        assert_eq!(r.num_turns, Some(3));
        assert!(AgentReport::from_output("plain text\n{\"type\":\"assistant\"}\n").is_none());
    }

    #[test]
    fn each_failure_kind_has_its_own_reason() {
        let case = |json: &str| AgentReport::from_output(json).unwrap().failure().unwrap();
        assert_eq!(
            case(r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":5}"#),
            "turn limit reached after 5 turns"
        );
        assert!(
            case(r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 Overloaded"}"#)
                .starts_with("API overloaded (529): ")
        );
        assert!(
            case(
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 401 invalid x-api-key"}"#
            )
            .starts_with("API authentication failed (401): ")
        );
        assert!(
            case(r#"{"type":"result","subtype":"error_during_execution","is_error":true,"terminal_reason":"crashed"}"#)
                .starts_with("agent error: crashed")
        );
    }

    #[test]
    fn hostile_fields_do_not_break_the_parse() {
        let r = AgentReport::from_output(r#"{"type":"result","subtype":7,"total_cost_usd":-1,"usage":"x","permission_denials":[1,{"tool_name":null}]}"#).unwrap();
        assert_eq!(r.cost_usd, None);
        assert_eq!(r.denials, vec!["?()".to_owned(), "?()".to_owned()]);
        let long = format!(r#"{{"type":"result","subtype":"error_during_execution","result":"{}"}}"#, "é".repeat(5000));
        assert!(AgentReport::from_output(&long).unwrap().failure().unwrap().chars().count() < 2 * TEXT_CAP);
    }
}
