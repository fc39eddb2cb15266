//! A scripted model server on loopback, for driving the real `claude` and
//! `codex` CLIs end to end: the Anthropic Messages API (streamed, as
//! Claude Code asks for it) and OpenAI's Responses API (streamed, as
//! Codex asks for it).
//!
//! Each request is answered from the script named in its prompt
//! (`SCRIPT:<name>` in the story's body), at the step given by how many
//! tool calls the conversation already holds, so the server keeps no
//! state but the count of refusals it still owes (`overloaded-N`):
//! - `commit`: write a file, `git add`, `git commit`, then say done;
//! - `deny`: one compound command an allow list cannot match, then claim
//!   success (Claude Code denies it and exits 0);
//! - `loop`: `git status` for ever (hits `--max-turns`);
//! - `nothing`: `git commit` with nothing staged (git refuses), then
//!   claim success;
//! - `overloaded-N`: HTTP 529 for the story's first N requests, then
//!   `commit`;
//! - `unauthorized`: HTTP 401;
//! - `slow-commit`: `commit`, each answer 1.5 s late (room for a kill).
//!
//! Requests without tools (Claude Code's side calls: titles, topic
//! checks) get a short text. Every answer reports 1,000 input and 50
//! output tokens.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub struct ModelServer {
    pub port: u16,
}

impl ModelServer {
    /// Listens on `addr` (port 0: any) and serves until the process ends.
    pub fn start(addr: &str) -> ModelServer {
        let listener = TcpListener::bind(addr).expect("model server: bind");
        let port = listener.local_addr().expect("model server: addr").port();
        let owed: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let owed = owed.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &owed);
                });
            }
        });
        ModelServer { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One connection: requests until the client closes (keep-alive).
fn serve(conn: TcpStream, owed: &Mutex<BTreeMap<String, u32>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_owned());
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, content_type, reply) = match (method, path.split('?').next().unwrap_or("")) {
            ("POST", p) if p.ends_with("/messages/count_tokens") => {
                (200, "application/json", r#"{"input_tokens":1000}"#.into())
            }
            ("POST", p) if p.ends_with("/messages") => anthropic(&request, owed),
            ("POST", p) if p.ends_with("/responses") => openai(&request, owed),
            ("HEAD" | "GET", _) => (200, "application/json", "{}".into()),
            _ => (404, "application/json", r#"{"error":"not scripted"}"#.into()),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nrequest-id: req_scripted\r\n\r\n",
            reply.len()
        );
        out.write_all(head.as_bytes())?;
        out.write_all(reply.as_bytes())?;
        out.flush()?;
    }
}

type Reply = (u16, &'static str, String);

/// What a step of a script does.
enum Act {
    /// A shell command (Claude's Bash, Codex's exec_command).
    Shell(String),
    /// Claude: write a file (relative to the working directory).
    Write(String, String),
    Say(String),
}

/// The story's attempt, and the claim it resumes if any, from its story
/// file ("- attempt: N", "- resuming: the work of agent-1 (token 3)..."),
/// so a retried or resumed run writes something new.
fn attempt_of(text: &str) -> String {
    let attempt: String = text
        .split("- attempt: ")
        .nth(1)
        .map(|s| s.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    match text.split("- resuming: the work of ").nth(1) {
        Some(rest) => format!("{attempt}, resuming {}", rest.split(')').next().unwrap_or("").replace(['\'', '\\'], "")),
        None => attempt,
    }
}

/// The script and story named in a conversation's text.
fn script_of(text: &str) -> (String, String) {
    let script = text
        .split("SCRIPT:")
        .nth(1)
        .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect())
        .unwrap_or_else(|| "commit".to_owned());
    let story = text
        .split("- id: ")
        .nth(1)
        .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect())
        .unwrap_or_default();
    (script, story)
}

/// The refusal a script owes now, if any.
fn refusal(script: &str, story: &str, owed: &Mutex<BTreeMap<String, u32>>) -> Option<u16> {
    if script == "unauthorized" {
        return Some(401);
    }
    let n: u32 = script.strip_prefix("overloaded-")?.parse().ok()?;
    let mut owed = owed.lock().unwrap();
    let left = owed.entry(story.to_owned()).or_insert(n);
    (*left > 0).then(|| {
        *left -= 1;
        529
    })
}

/// The step `step` (tool calls made so far) of `script`, in attempt
/// `attempt` of the story.
fn act(script: &str, story: &str, attempt: &str, step: usize, claude: bool) -> Act {
    let file = format!("work-{story}.md");
    let commit = format!("git commit -q -m '{story}: scripted work'");
    match script {
        "deny" if step == 0 => Act::Shell(format!("echo hi > {file} && git add {file} && {commit}")),
        "deny" => Act::Say("Done: committed.".into()),
        "loop" => Act::Shell("git status".into()),
        "nothing" if step == 0 => Act::Shell(commit),
        "nothing" => Act::Say("Done: committed.".into()),
        _ if claude => match step {
            0 => Act::Write(file, format!("# {story}\n\nscripted work, attempt {attempt}\n")),
            1 => Act::Shell(format!("git add {file}")),
            2 => Act::Shell(commit),
            _ => Act::Say("Done: committed.".into()),
        },
        _ => match step {
            0 => Act::Shell(format!(
                "printf 'scripted work, attempt {attempt}\\n' > {file} && git add {file} && {commit}"
            )),
            _ => Act::Say("Done: committed.".into()),
        },
    }
}

fn pace(script: &str) {
    if script == "slow-commit" {
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn error_body(status: u16) -> String {
    let kind = if status == 401 { "authentication_error" } else { "overloaded_error" };
    json!({"type": "error", "error": {"type": kind, "message": format!("scripted {kind}")}}).to_string()
}

fn anthropic(req: &Value, owed: &Mutex<BTreeMap<String, u32>>) -> Reply {
    let model = req["model"].as_str().unwrap_or("claude-sonnet-4-5").to_owned();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let has_tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let blocks = if !has_tools {
        vec![json!({"type": "text", "text": "ok"})]
    } else {
        let text = Value::Array(messages.clone()).to_string();
        let (script, story) = script_of(&text);
        if let Some(status) = refusal(&script, &story, owed) {
            return (status, "application/json", error_body(status));
        }
        pace(&script);
        let step = messages.iter().filter(|m| m["role"] == "assistant").count();
        let cwd = working_directory(&req["system"]);
        match act(&script, &story, &attempt_of(&text), step, true) {
            Act::Shell(c) => vec![json!({"type": "tool_use", "id": format!("toolu_{step}"), "name": "Bash",
                "input": {"command": c, "description": "scripted"}})],
            Act::Write(f, content) => vec![json!({"type": "tool_use", "id": format!("toolu_{step}"), "name": "Write",
                "input": {"file_path": format!("{cwd}/{f}"), "content": content}})],
            Act::Say(t) => vec![json!({"type": "text", "text": t})],
        }
    };
    let stop = if blocks[0]["type"] == "tool_use" { "tool_use" } else { "end_turn" };
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut events = vec![json!({"type": "message_start", "message": {"id": format!("msg_{id}"), "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 1000, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}})];
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] == "text" {
            events.push(
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
            );
            events.push(
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": b["text"]}}),
            );
        } else {
            let start = json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}});
            events.push(json!({"type": "content_block_start", "index": i, "content_block": start}));
            let partial = b["input"].to_string();
            events.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": partial}}));
        }
        events.push(json!({"type": "content_block_stop", "index": i}));
    }
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 50}}));
    events.push(json!({"type": "message_stop"}));
    (200, "text/event-stream", sse(&events))
}

/// Claude Code names its working directory in the system prompt.
fn working_directory(system: &Value) -> String {
    let text = match system {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    };
    text.lines()
        .find_map(|l| l.trim().trim_start_matches("- ").strip_prefix("Working directory:"))
        .map(|d| d.trim().to_owned())
        .unwrap_or_else(|| ".".into())
}

fn openai(req: &Value, owed: &Mutex<BTreeMap<String, u32>>) -> Reply {
    let input = req["input"].as_array().cloned().unwrap_or_default();
    let text = Value::Array(input.clone()).to_string();
    let (script, story) = script_of(&text);
    if let Some(status) = refusal(&script, &story, owed) {
        let body =
            json!({"error": {"type": "scripted", "message": format!("scripted {status}"), "code": status.to_string()}});
        return (status, "application/json", body.to_string());
    }
    pace(&script);
    let step = input.iter().filter(|i| i["type"] == "function_call").count();
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!("resp_{}", IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let item = match act(&script, &story, &attempt_of(&text), step, false) {
        Act::Shell(c) | Act::Write(c, _) => json!({"type": "function_call", "id": format!("fc_{id}"),
            "call_id": format!("call_{id}"), "name": "exec_command",
            "arguments": json!({"cmd": c}).to_string(), "status": "completed"}),
        Act::Say(t) => json!({"type": "message", "id": format!("m_{id}"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": t, "annotations": []}]}),
    };
    let usage = json!({"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1050});
    let events = [
        json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed",
            "output": [item], "usage": usage}}),
    ];
    (200, "text/event-stream", sse(&events))
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("message"))).collect()
}
