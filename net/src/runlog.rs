//! Run logs: what an agent writes to stdout and stderr, kept on disk
//! capped per run (the tail is kept: at half the cap the file moves to
//! `<name>.1`, replacing the previous one), and served to `huskies logs`.
//! The stderr tail for the run record is kept in memory as it streams.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of log kept per run, at most (two files of half each).
pub const LOG_CAP_BYTES: u64 = 10 << 20;

pub fn logs_dir(project_root: &Path) -> PathBuf {
    project_root.join(".huskies").join("logs")
}

pub fn log_path(project_root: &Path, story: &str, stage: &str, token: u64) -> PathBuf {
    logs_dir(project_root).join(format!("{story}-{stage}-{token}.log"))
}

/// One run's log file with its cap.
pub struct CappedLog {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    half_cap: u64,
}

impl CappedLog {
    pub fn create(path: PathBuf, cap: u64) -> std::io::Result<CappedLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&path)?;
        Ok(CappedLog { path, file, written: 0, half_cap: (cap / 2).max(1) })
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written + bytes.len() as u64 > self.half_cap && self.written > 0 {
            // Keep the tail: this half becomes `.1`, a new half starts.
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = std::fs::File::create(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The last `max` bytes seen.
#[derive(Default)]
pub struct Tail {
    buf: Vec<u8>,
    max: usize,
}

impl Tail {
    pub fn new(max: usize) -> Tail {
        Tail { buf: Vec::new(), max }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > self.max {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Splits a byte stream into lines for an [`AgentStream`].
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The line being read passed `MAX_LINE_BYTES`: skipped to its end.
    skipping: bool,
    pub stream: crate::agent_stream::AgentStream,
}

/// A longer line (a tool's huge output) is not read as an event.
const MAX_LINE_BYTES: usize = 4 << 20;

impl Lines {
    pub fn push(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            if !self.skipping {
                self.partial.extend_from_slice(&bytes[..nl]);
                self.stream.handle_line(&String::from_utf8_lossy(&self.partial));
            }
            self.partial.clear();
            self.skipping = false;
            bytes = &bytes[nl + 1..];
        }
        if !self.skipping {
            self.partial.extend_from_slice(bytes);
            if self.partial.len() > MAX_LINE_BYTES {
                self.partial = Vec::new();
                self.skipping = true;
            }
        }
    }

    /// The last line, if the stream ended without a line break.
    pub fn finish(&mut self) {
        if !self.skipping && !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.stream.handle_line(&String::from_utf8_lossy(&last));
        }
    }
}

/// Where a pumped stream goes besides the log.
pub enum Sink {
    Tail(Arc<Mutex<Tail>>),
    Lines(Arc<Mutex<Lines>>),
}

/// Copies `from` into the log (and into `sink` if given) until EOF.
pub async fn pump(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<CappedLog>>, sink: Option<Sink>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Some(Sink::Lines(l)) = &sink
                    && let Ok(mut l) = l.lock()
                {
                    l.finish();
                }
                return;
            }
            Ok(n) => n,
        };
        if let Ok(mut l) = log.lock()
            && let Err(e) = l.write(&buf[..n])
        {
            tracing::warn!(error = %e, "run log write failed");
        }
        match &sink {
            Some(Sink::Tail(t)) => {
                if let Ok(mut t) = t.lock() {
                    t.push(&buf[..n]);
                }
            }
            Some(Sink::Lines(l)) => {
                if let Ok(mut l) = l.lock() {
                    l.push(&buf[..n]);
                }
            }
            None => {}
        }
    }
}

/// The newest log of `story` (of `stage` if given): its path.
pub fn newest_log(project_root: &Path, story: &str, stage: Option<&str>) -> Option<PathBuf> {
    let prefix = format!("{story}-");
    let entries = std::fs::read_dir(logs_dir(project_root)).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
            let (st, token) = rest.rsplit_once('-')?;
            // The story id may not contain the stage name twice; ids and
            // stages are [a-z0-9-], so split on the last two dashes.
            if stage.is_some_and(|s| s != st) || st.contains('-') {
                return None;
            }
            let token: u64 = token.parse().ok()?;
            Some((token, e.path()))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}

/// The log's bytes from `offset` (over the kept tail: `.1` then the
/// current file), at most `max` of them, and the total kept length.
pub fn read_log(path: &Path, offset: u64, max: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut all = std::fs::read(rotated(path)).unwrap_or_default();
    all.extend(std::fs::read(path)?);
    let total = all.len() as u64;
    let start = offset.min(total) as usize;
    let end = (start as u64 + max).min(total) as usize;
    Ok((all[start..end].to_vec(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_log_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-current-3.log");
        let mut log = CappedLog::create(path.clone(), 100).unwrap();
        for i in 0..30u8 {
            log.write(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        let (bytes, total) = read_log(&path, 0, u64::MAX).unwrap();
        assert!(total <= 100, "{total}");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with("line 29\n") && !text.contains("line 00"), "{text}");
        let (part, _) = read_log(&path, total - 8, 100).unwrap();
        assert_eq!(part, b"line 29\n");
    }

    #[test]
    fn finds_the_newest_log_of_a_stage() {
        let dir = tempfile::tempdir().unwrap();
        for (st, t) in [("current", 3), ("current", 12), ("qa", 14)] {
            CappedLog::create(log_path(dir.path(), "fix-login-1a2b", st, t), 10).unwrap();
        }
        CappedLog::create(log_path(dir.path(), "fix-login-1a2b-x", "current", 99), 10).unwrap();
        let newest = |s| newest_log(dir.path(), "fix-login-1a2b", s).map(|p| p.file_name().unwrap().to_owned());
        assert_eq!(newest(None).unwrap(), "fix-login-1a2b-qa-14.log");
        assert_eq!(newest(Some("current")).unwrap(), "fix-login-1a2b-current-12.log");
        assert_eq!(newest(Some("merge")), None);
    }

    #[test]
    fn lines_are_read_whole_across_reads() {
        let mut l = Lines::default();
        let event = r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"Edit","input":{"file_path":"a.rs"}}]}}"#;
        let (a, b) = event.split_at(40);
        l.push(b"noise\n");
        l.push(a.as_bytes());
        l.push(format!("{b}\n{{\"type\":\"assistant\",").as_bytes());
        l.push(br#""message":{}}"#);
        assert_eq!(l.stream.progress().target, "a.rs");
        l.finish();
        assert_eq!(l.stream.progress().turns, 2, "the unterminated last line counts at the end");
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.text(), "defg");
    }
}
