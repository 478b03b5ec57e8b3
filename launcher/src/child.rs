//! One supervised child process: spawned in its own process group (so a terminal's Ctrl-C
//! reaches only the launcher, which then stops children in order), its output forwarded, its
//! exit reported on a channel, and signals sent to its whole group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logs::{forward_lines, Logger, SharedTail, Stream};
use crate::plan::ProcessSpec;

/// How long a dead child's output pipes get to drain before its report is written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A child's exit, sent by the task that waits on it.
#[derive(Debug)]
pub struct ChildExit {
    pub name: String,
    pub status: io::Result<ExitStatus>,
}

pub struct ManagedChild {
    pub name: String,
    pub pid: u32,
    pub tail: SharedTail,
    pub exit_status: Option<ExitStatus>,
    forwarders: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("could not start {name} ({program}): {source}")]
pub struct SpawnError {
    pub name: String,
    pub program: String,
    pub source: io::Error,
}

/// Starts `spec`. With `death_signal_wrapper` (util-linux `setpriv`), the child also gets
/// SIGKILL if the launcher itself is killed with SIGKILL and cannot tear down (PR_SET_PDEATHSIG,
/// set by setpriv, which then execs the program under the same pid).
pub fn spawn(
    spec: &ProcessSpec,
    death_signal_wrapper: Option<&PathBuf>,
    logger: Logger,
    exits: mpsc::UnboundedSender<ChildExit>,
) -> Result<ManagedChild, SpawnError> {
    let mut command = match death_signal_wrapper {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(&spec.program);
            command
        }
        None => Command::new(&spec.program),
    };
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let spawn_error = |source: io::Error| SpawnError {
        name: spec.name.clone(),
        program: spec.program.display().to_string(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_error(io::Error::other("exited before its pid was read")))?;
    let tail = SharedTail::default();
    let mut forwarders = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        forwarders.push(tokio::spawn(forward_lines(
            stdout,
            spec.name.clone(),
            Stream::Stdout,
            logger,
            tail.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarders.push(tokio::spawn(forward_lines(
            stderr,
            spec.name.clone(),
            Stream::Stderr,
            logger,
            tail.clone(),
        )));
    }
    let name = spec.name.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exits.send(ChildExit { name, status });
    });
    Ok(ManagedChild {
        name: spec.name.clone(),
        pid,
        tail,
        exit_status: None,
        forwarders,
    })
}

impl ManagedChild {
    pub fn is_running(&self) -> bool {
        self.exit_status.is_none()
    }

    /// Sends `signal` to the child's process group (it and anything it started). A group that
    /// is already gone is not an error.
    pub fn signal_group(&self, signal: Signal) {
        let Some(pgid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        let _ = kill_process_group(pgid, signal);
    }

    /// Waits (bounded) until the child's output is read to the end, so its report is complete.
    pub async fn drain_output(&mut self) {
        for forwarder in self.forwarders.drain(..) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, forwarder).await;
        }
    }

    /// "shard-0 (pid 1234) was killed by signal 9 (SIGKILL)" and its last error lines.
    pub fn death_report(&self) -> String {
        let status = self
            .exit_status
            .map_or_else(|| "is gone".to_string(), describe_status);
        let mut report = format!("{} (pid {}) {status}", self.name, self.pid);
        let lines = self
            .tail
            .lock()
            .map(|tail| tail.last_error_lines())
            .unwrap_or_default();
        if lines.is_empty() {
            report.push_str("; it printed nothing");
        } else {
            report.push_str(&format!("; its last {} lines:", lines.len()));
            for line in lines {
                report.push_str("\n    ");
                report.push_str(&line);
            }
        }
        report
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal} ({})", signal_name(signal)),
        (None, None) => format!("ended ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL, e.g. the out-of-memory killer",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "see `kill -l`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_described_for_people() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert!(describe_status(ExitStatus::from_raw(9)).contains("signal 9 (SIGKILL"));
    }

    #[tokio::test]
    async fn a_dead_child_is_reported_with_its_status_and_last_lines() {
        let spec = ProcessSpec {
            name: "shard-0".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo loading; echo 'Traceback: boom' >&2; exit 3".into(),
            ],
            env: Vec::new(),
        };
        let (exits_tx, mut exits_rx) = mpsc::unbounded_channel();
        let mut child = spawn(&spec, None, Logger::silent(false), exits_tx).expect("sh starts");
        let exit = exits_rx.recv().await.expect("exit reported");
        assert_eq!(exit.name, "shard-0");
        child.exit_status = Some(exit.status.expect("waited"));
        child.drain_output().await;
        let report = child.death_report();
        assert!(report.starts_with(&format!("shard-0 (pid {}) exited with status 3", child.pid)));
        assert!(report.contains("Traceback: boom"), "{report}");
    }

    #[test]
    fn a_missing_program_names_itself() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let spec = ProcessSpec {
            name: "router".into(),
            program: "/nonexistent/ferrite-router".into(),
            args: Vec::new(),
            env: Vec::new(),
        };
        let (exits_tx, _exits_rx) = mpsc::unbounded_channel();
        let error = spawn(&spec, None, Logger::silent(false), exits_tx)
            .err()
            .expect("fails");
        assert!(error.to_string().contains("/nonexistent/ferrite-router"));
    }
}
