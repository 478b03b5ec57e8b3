//! One output for the launcher's own messages and every child's log lines, each marked with its
//! origin: `[shard-0] ...` as text, or one JSON object per line with `--json-output`.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::args::LogLevel;

/// Lines of a dead child's output kept for its death report.
pub const TAIL_LINES: usize = 20;
/// Progress bars redraw with '\r' many times a second; forward at most one redraw this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const LAUNCHER_ORIGIN: &str = "launcher";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Logger {
    json_output: bool,
    /// Tests keep the tail bookkeeping but print nothing.
    silent: bool,
    /// The launcher's own lines below this level are dropped (children filter their own).
    min_level: LogLevel,
}

impl Logger {
    pub fn new(json_output: bool) -> Self {
        Self {
            json_output,
            silent: false,
            min_level: LogLevel::Info,
        }
    }

    pub fn with_level(self, min_level: LogLevel) -> Self {
        Self { min_level, ..self }
    }

    #[cfg(test)]
    pub fn silent(json_output: bool) -> Self {
        Self {
            json_output,
            silent: true,
            min_level: LogLevel::Info,
        }
    }

    pub fn info(&self, message: &str) {
        if self.min_level <= LogLevel::Info {
            self.launcher_line("INFO", message);
        }
    }

    pub fn warn(&self, message: &str) {
        if self.min_level <= LogLevel::Warn {
            self.launcher_line("WARN", message);
        }
    }

    /// Errors go to stderr (everything else to stdout), so `2>` captures why the launcher failed.
    pub fn error(&self, message: &str) {
        self.launcher_line("ERROR", message);
    }

    fn launcher_line(&self, level: &str, message: &str) {
        if self.silent {
            return;
        }
        let to_stderr = level == "ERROR";
        if self.json_output {
            let object = serde_json::json!({
                "timestamp": unix_time_s(),
                "level": level,
                "origin": LAUNCHER_ORIGIN,
                "message": message,
            });
            write_line(&object.to_string(), to_stderr);
        } else {
            for line in message.lines() {
                write_line(&format!("[{LAUNCHER_ORIGIN}] {line}"), to_stderr);
            }
        }
    }

    /// A child's line, tagged with where it came from. A child that already logs JSON objects
    /// gets `origin` added to its object rather than being wrapped twice.
    pub fn child_line(&self, origin: &str, stream: Stream, line: &str) {
        if self.silent {
            return;
        }
        if !self.json_output {
            write_line(&format!("[{origin}] {line}"), false);
            return;
        }
        let object = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(mut fields)) => {
                fields.insert("origin".into(), origin.into());
                serde_json::Value::Object(fields)
            }
            _ => serde_json::json!({
                "timestamp": unix_time_s(),
                "origin": origin,
                "stream": stream.as_str(),
                "message": line,
            }),
        };
        write_line(&object.to_string(), false);
    }
}

fn unix_time_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

fn write_line(line: &str, to_stderr: bool) {
    // A closed output (e.g. piped into `head`) must not take the launcher down with it.
    if to_stderr {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    } else {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

/// The last lines a child wrote, per stream, for the report when it dies.
#[derive(Debug, Default)]
pub struct Tail {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, stream: Stream, line: &str) {
        let lines = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    /// The last stderr lines (where Python tracebacks and panics go), else the last stdout lines.
    pub fn last_error_lines(&self) -> Vec<String> {
        let lines = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        lines.iter().cloned().collect()
    }

    pub fn last_stdout_line(&self) -> Option<String> {
        self.stdout.back().cloned()
    }
}

pub type SharedTail = Arc<Mutex<Tail>>;

/// Forwards `reader` line by line until EOF. Lines end at '\n'; '\r'-terminated progress-bar
/// redraws are forwarded at most once per `PROGRESS_INTERVAL`.
pub async fn forward_lines<R: AsyncRead + Unpin>(
    mut reader: R,
    origin: String,
    stream: Stream,
    logger: Logger,
    tail: SharedTail,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut last_progress: Option<Instant> = None;
    let mut emit = |bytes: &[u8], is_progress: bool| {
        let line = String::from_utf8_lossy(bytes);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        if is_progress {
            if last_progress.is_some_and(|at| at.elapsed() < PROGRESS_INTERVAL) {
                return;
            }
            last_progress = Some(Instant::now());
        }
        logger.child_line(&origin, stream, line);
        if let Ok(mut tail) = tail.lock() {
            tail.push(stream, line);
        }
    };
    loop {
        let read_bytes = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read_bytes) => read_bytes,
        };
        pending.extend_from_slice(&chunk[..read_bytes]);
        while let Some(end) = pending
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
        {
            let is_progress = pending[end] == b'\r';
            emit(&pending[..end], is_progress);
            pending.drain(..=end);
        }
    }
    emit(&pending, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_progress_redraws_reach_the_tail() {
        let input: &[u8] = b"loading\r 10%\r 20%\r 30%\nready\nno newline at end";
        let tail = SharedTail::default();
        forward_lines(
            input,
            "shard-0".into(),
            Stream::Stderr,
            Logger::silent(false),
            tail.clone(),
        )
        .await;
        let lines = tail.lock().expect("lock").last_error_lines();
        // The redraws inside one second collapse into the first; '\n' lines always pass.
        assert_eq!(lines, vec!["loading", " 30%", "ready", "no newline at end"]);
    }

    #[tokio::test]
    async fn the_tail_keeps_only_the_last_lines() {
        let input: String = (0..50).map(|index| format!("line {index}\n")).collect();
        let tail = SharedTail::default();
        forward_lines(
            input.as_bytes(),
            "router".into(),
            Stream::Stdout,
            Logger::silent(true),
            tail.clone(),
        )
        .await;
        let tail = tail.lock().expect("lock");
        let lines = tail.last_error_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last().map(String::as_str), Some("line 49"));
        assert_eq!(tail.last_stdout_line().as_deref(), Some("line 49"));
    }
}
