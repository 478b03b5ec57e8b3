//! Owns the children: starts them, races every wait against "a child died" and "the user asked
//! us to stop", and tears everything down in order (router first, so in-flight requests can
//! finish, then the shards), escalating to SIGKILL after the grace period.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use rustix::process::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::child::{self, ChildExit, ManagedChild, SpawnError};
use crate::logs::Logger;
use crate::plan::ProcessSpec;

/// After SIGKILL, how long to wait for the kernel to reap a child before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why a wait ended before its future completed.
#[derive(Debug)]
pub enum Interrupt {
    /// SIGINT or SIGTERM reached the launcher.
    Signal(&'static str),
    /// A child ended on its own: its name and death report.
    ChildDied { name: String, report: String },
}

/// SIGINT and SIGTERM, installed before the first child starts so none is missed.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

pub struct Supervisor {
    logger: Logger,
    signals: Signals,
    grace: Duration,
    death_signal_wrapper: Option<PathBuf>,
    children: Vec<ManagedChild>,
    exits_tx: mpsc::UnboundedSender<ChildExit>,
    exits_rx: mpsc::UnboundedReceiver<ChildExit>,
}

impl Supervisor {
    pub fn new(
        logger: Logger,
        signals: Signals,
        grace: Duration,
        death_signal_wrapper: Option<PathBuf>,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self {
            logger,
            signals,
            grace,
            death_signal_wrapper,
            children: Vec::new(),
            exits_tx,
            exits_rx,
        }
    }

    pub fn spawn(&mut self, spec: &ProcessSpec) -> Result<(), SpawnError> {
        let child = child::spawn(
            spec,
            self.death_signal_wrapper.as_ref(),
            self.logger,
            self.exits_tx.clone(),
        )?;
        self.logger
            .info(&format!("started {} (pid {})", child.name, child.pid));
        self.children.push(child);
        Ok(())
    }

    /// Runs `work` until it completes, unless a child dies or a signal arrives first.
    pub async fn race<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Interrupt> {
        tokio::pin!(work);
        tokio::select! {
            output = &mut work => Ok(output),
            name = self.signals.recv() => Err(Interrupt::Signal(name)),
            Some(exit) = self.exits_rx.recv() => {
                let name = exit.name.clone();
                let report = self.record_exit(exit).await;
                Err(Interrupt::ChildDied { name, report })
            }
        }
    }

    /// Waits for the one-shot child `name` (model preparation) to exit successfully and
    /// returns its last stdout line, or the interrupt that came first.
    pub async fn wait_for_success(&mut self, name: &str) -> Result<Option<String>, Interrupt> {
        let exit = tokio::select! {
            signal_name = self.signals.recv() => return Err(Interrupt::Signal(signal_name)),
            Some(exit) = self.exits_rx.recv() => exit,
        };
        let is_target = exit.name == name;
        let died = exit.name.clone();
        let report = self.record_exit(exit).await;
        match self.children.iter().find(|child| child.name == name) {
            Some(child)
                if is_target && child.exit_status.is_some_and(|status| status.success()) =>
            {
                Ok(child
                    .tail
                    .lock()
                    .ok()
                    .and_then(|tail| tail.last_stdout_line()))
            }
            _ => Err(Interrupt::ChildDied { name: died, report }),
        }
    }

    /// Blocks until a child dies or a signal arrives (the steady state of a running server).
    pub async fn supervise(&mut self) -> Interrupt {
        match self.race(std::future::pending::<()>()).await {
            Ok(()) => unreachable!("a pending future never completes"),
            Err(interrupt) => interrupt,
        }
    }

    /// Stops every child still running: the most recently started first (the router before the
    /// shards), SIGTERM, then SIGKILL for whatever outlives the grace period or a second signal.
    pub async fn shutdown(&mut self) {
        let start_order: Vec<String> = self
            .children
            .iter()
            .map(|child| child.name.clone())
            .collect();
        let (shards, others): (Vec<String>, Vec<String>) = start_order
            .into_iter()
            .rev()
            .partition(|name| name.starts_with("shard-"));
        // Everything but the shards (the router) first, then all shards together.
        for group in [others, shards] {
            self.stop_group(&group).await;
        }
        // A child's own children (e.g. compile workers) share its process group: make sure
        // nothing of ours outlives the launcher.
        for child in &self.children {
            child.signal_group(Signal::KILL);
        }
    }

    /// Stops every shard still running (after one of them died) and forgets them all, so the
    /// group can be started again under the same names.
    pub async fn stop_shards(&mut self) {
        let shards: Vec<String> = self
            .children
            .iter()
            .filter(|child| child.name.starts_with("shard-"))
            .map(|child| child.name.clone())
            .collect();
        self.stop_group(&shards).await;
        for child in &self.children {
            if shards.contains(&child.name) {
                child.signal_group(Signal::KILL); // leftovers of its process group
            }
        }
        self.children
            .retain(|child| !child.name.starts_with("shard-"));
    }

    async fn stop_group(&mut self, names: &[String]) {
        let running: Vec<&ManagedChild> = self
            .children
            .iter()
            .filter(|child| names.contains(&child.name) && child.is_running())
            .collect();
        if running.is_empty() {
            return;
        }
        let listed: Vec<String> = running
            .iter()
            .map(|child| format!("{} (pid {})", child.name, child.pid))
            .collect();
        self.logger.info(&format!("stopping {}", listed.join(", ")));
        for child in &running {
            child.signal_group(Signal::TERM);
        }
        if !self
            .wait_until_stopped(names, Instant::now() + self.grace, true)
            .await
        {
            for child in self
                .children
                .iter()
                .filter(|child| names.contains(&child.name))
            {
                if child.is_running() {
                    self.logger
                        .warn(&format!("{} did not stop in time: killing it", child.name));
                    child.signal_group(Signal::KILL);
                }
            }
            self.wait_until_stopped(names, Instant::now() + KILL_WAIT, false)
                .await;
        }
    }

    /// Collects exits until none of `names` runs (true) or the deadline passes (false). A
    /// signal arriving meanwhile (a second Ctrl-C) cuts the wait short when `signals_cut_short`.
    async fn wait_until_stopped(
        &mut self,
        names: &[String],
        deadline: Instant,
        signals_cut_short: bool,
    ) -> bool {
        loop {
            let all_stopped = self
                .children
                .iter()
                .all(|child| !names.contains(&child.name) || !child.is_running());
            if all_stopped {
                return true;
            }
            tokio::select! {
                Some(exit) = self.exits_rx.recv() => { self.record_exit(exit).await; }
                _ = tokio::time::sleep_until(deadline) => return false,
                _ = self.signals.recv(), if signals_cut_short => return false,
            }
        }
    }

    /// Marks the child as exited, lets its output drain, and returns its death report.
    async fn record_exit(&mut self, exit: ChildExit) -> String {
        let Some(child) = self
            .children
            .iter_mut()
            .find(|child| child.name == exit.name)
        else {
            return format!("{} exited", exit.name);
        };
        match exit.status {
            Ok(status) => child.exit_status = Some(status),
            Err(error) => {
                self.logger
                    .warn(&format!("could not wait for {}: {error}", child.name));
                // Unknown status: record a failure so the child counts as gone, not as a success.
                child.exit_status = Some(ExitStatusExt::from_raw(255 << 8));
            }
        }
        child.drain_output().await;
        child.death_report()
    }
}
