//! ferrite-launcher: resolves and prepares the model, spawns and supervises the shards and the
//! router (DESIGN.md "Processes"). args -> plan (pure) -> supervisor (processes).

pub mod args;
pub mod child;
pub mod draft;
pub mod logs;
pub mod lora;
pub mod model;
pub mod observability;
pub mod plan;
pub mod readiness;
pub mod shard_plan;
mod shard_restart;
pub mod supervisor;
pub mod tgi_flags;
pub mod topology;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::args::Args;
use crate::draft::{add_draft_model, prepare_draft_command, DraftError};
use crate::logs::Logger;
use crate::model::{check_model_id, read_model_facts, ModelError};
use crate::plan::{
    build_plan, check_args, prepare_command, LaunchPlan, PlanError, ProcessSpec, Programs,
};
use crate::supervisor::{Interrupt, Signals, Supervisor};

/// How often a long wait (model loading) says it is still waiting.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);
/// Exit code for flags that can never work (as clap uses for unparsable ones).
const USAGE_EXIT_CODE: u8 = 2;

#[derive(Debug, thiserror::Error)]
enum LaunchError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error(transparent)]
    Spawn(#[from] crate::child::SpawnError),
    #[error("model preparation failed: {0}")]
    PrepareFailed(String),
    #[error("model preparation printed no model directory")]
    NoModelDir,
    #[error("{0}")]
    ChildDied(String),
    #[error("socket {0} is in use by another running process: choose another --shard-uds-path")]
    SocketInUse(String),
}

/// The `ferrite-launcher` program.
pub fn launch() -> ExitCode {
    let args = Args::parse();
    let logger = Logger::new(args.json_output).with_level(args.log_level);
    for notice in tgi_flags::notices(&args) {
        logger.warn(&notice);
    }
    let args = tgi_flags::fold_aliases(args);
    // One thread is plenty for supervising, and it keeps every fork on the main thread, which
    // the parent-death signal set by `setpriv` is tied to.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            logger.error(&format!("cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, logger))
}

async fn run(args: Args, logger: Logger) -> ExitCode {
    let launcher_pid = std::process::id();
    let early_check = check_args(&args, launcher_pid)
        .map_err(LaunchError::from)
        .and_then(|()| check_model_id(args.model_id.as_deref()).map_err(LaunchError::from))
        .and_then(|()| draft::check_args(&args).map_err(LaunchError::from));
    if let Err(error) = early_check {
        logger.error(&error.to_string());
        return ExitCode::from(USAGE_EXIT_CODE);
    }
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            logger.error(&format!("cannot install signal handlers: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let grace = Duration::from_secs(args.graceful_shutdown_timeout_s);
    let mut supervisor = Supervisor::new(logger, signals, grace, find_setpriv());
    let outcome = serve(&args, &mut supervisor, logger, launcher_pid).await;
    supervisor.shutdown().await;
    match outcome {
        Ok(Some(signal_name)) => {
            logger.info(&format!("stopped cleanly after {signal_name}"));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            logger.error(&format!("ferrite-launcher failed: {error}"));
            ExitCode::FAILURE
        }
    }
}

/// Prepares the model, starts everything, and supervises until a signal (`Ok(Some(name))`)
/// or a failure. `prepare_model` answers `Ok(Err(signal))` when stopped before it finished.
async fn serve(
    args: &Args,
    supervisor: &mut Supervisor,
    logger: Logger,
    launcher_pid: u32,
) -> Result<Option<&'static str>, LaunchError> {
    let programs = discover_programs();
    let what = args
        .model_id
        .as_deref()
        .unwrap_or("the bundled default model");
    let spec = prepare_command(args, &programs);
    let model_dir = match prepare_model(&spec, what, supervisor, logger).await? {
        Ok(model_dir) => model_dir,
        Err(signal_name) => return Ok(Some(signal_name)),
    };
    let mut draft_dir = None;
    if let Some(draft_model_id) = &args.draft_model_id {
        let spec = prepare_draft_command(args, &programs, draft_model_id);
        match prepare_model(&spec, draft_model_id, supervisor, logger).await? {
            Ok(dir) => draft_dir = Some(dir),
            Err(signal_name) => return Ok(Some(signal_name)),
        }
    }
    let facts = read_model_facts(&model_dir)?;
    let mut plan = build_plan(args, &model_dir, &facts, &programs, launcher_pid)?;
    if let Some(draft_dir) = &draft_dir {
        add_draft_model(&mut plan, draft_dir);
    }
    let result = start_and_supervise(&plan, supervisor, logger).await;
    for shard in &plan.shards {
        let _ = std::fs::remove_file(&shard.uds_path);
    }
    result
}

/// Runs a `prepare-model` child (`spec`) for `what`; its last stdout line is the directory.
async fn prepare_model(
    spec: &ProcessSpec,
    what: &str,
    supervisor: &mut Supervisor,
    logger: Logger,
) -> Result<Result<PathBuf, &'static str>, LaunchError> {
    logger.info(&format!("preparing {what}"));
    let started = Instant::now();
    supervisor.spawn(spec)?;
    let wait = supervisor.wait_for_success(&spec.name);
    let last_line = match with_progress(logger, "still preparing the model", wait).await {
        Ok(last_line) => last_line,
        Err(Interrupt::Signal(signal_name)) => return Ok(Err(signal_name)),
        Err(Interrupt::ChildDied { report, .. }) => return Err(LaunchError::PrepareFailed(report)),
    };
    let model_dir = PathBuf::from(last_line.ok_or(LaunchError::NoModelDir)?.trim());
    logger.info(&format!(
        "model ready in {} ({:.1} s)",
        model_dir.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Ok(model_dir))
}

async fn start_and_supervise(
    plan: &LaunchPlan,
    supervisor: &mut Supervisor,
    logger: Logger,
) -> Result<Option<&'static str>, LaunchError> {
    let started = Instant::now();
    if let Err(interrupt) = start_shards(plan, supervisor, logger).await? {
        return interrupted(interrupt);
    }
    let Some(router) = &plan.router else {
        let topology = plan.topology;
        logger.info(&format!(
            "node {} of {} is ready: its shards (ranks {}..{}) serve the router on node 0",
            topology.node_rank,
            topology.nnodes,
            topology.ranks().start,
            topology.ranks().end - 1
        ));
        return interrupted(supervisor.supervise().await);
    };
    supervisor.spawn(router)?;
    // From here on a dying shard is restarted within the budget, also while the launcher still
    // waits for the router: the router may already answer /health (and clients may already
    // send requests) before the launcher's own probe sees it.
    let mut restarts = shard_restart::RestartBudget::new(plan.max_shard_restarts);
    loop {
        let wait = readiness::wait_for_router(&plan.router_probe_host, plan.router_port);
        let what = "still waiting for the router to warm up and answer /health";
        let Err(interrupt) = supervisor.race(with_progress(logger, what, wait)).await else {
            break;
        };
        if let Err(interrupt) =
            shard_restart::restart_after(interrupt, &mut restarts, plan, supervisor, logger).await?
        {
            return interrupted(interrupt);
        }
    }
    logger.info(&format!(
        "ferrite is ready on http://{}:{} ({:.1} s after the shards started)",
        plan.router_probe_host,
        plan.router_port,
        started.elapsed().as_secs_f64()
    ));
    loop {
        let interrupt = supervisor.supervise().await;
        if let Err(interrupt) =
            shard_restart::restart_after(interrupt, &mut restarts, plan, supervisor, logger).await?
        {
            return interrupted(interrupt);
        }
    }
}

/// Starts every shard of this node and waits until each answers its health check; the
/// interrupt that came first otherwise.
async fn start_shards(
    plan: &LaunchPlan,
    supervisor: &mut Supervisor,
    logger: Logger,
) -> Result<Result<(), Interrupt>, LaunchError> {
    for shard in &plan.shards {
        claim_socket_path(&shard.uds_path)?;
        supervisor.spawn(&shard.process)?;
    }
    let started = Instant::now();
    for shard in &plan.shards {
        let name = &shard.process.name;
        let wait = readiness::wait_for_shard(&shard.uds_path);
        let what = format!("still waiting for {name} to load and answer health checks");
        match supervisor.race(with_progress(logger, &what, wait)).await {
            Ok(()) => logger.info(&format!(
                "{name} is ready ({:.1} s)",
                started.elapsed().as_secs_f64()
            )),
            Err(interrupt) => return Ok(Err(interrupt)),
        }
    }
    Ok(Ok(()))
}

fn interrupted(interrupt: Interrupt) -> Result<Option<&'static str>, LaunchError> {
    match interrupt {
        Interrupt::Signal(name) => Ok(Some(name)),
        Interrupt::ChildDied { report, .. } => Err(LaunchError::ChildDied(report)),
    }
}

/// Runs `work`, logging "`what` (N s)" every `PROGRESS_INTERVAL` until it completes.
async fn with_progress<T>(logger: Logger, what: &str, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => logger.info(&format!(
                "{what} ({:.0} s)",
                started.elapsed().as_secs_f64()
            )),
        }
    }
}

/// A leftover socket file from a crashed run is removed; one that still answers belongs to a
/// running server and is refused (probing it would report that server's health as ours).
fn claim_socket_path(uds_path: &Path) -> Result<(), LaunchError> {
    if std::os::unix::net::UnixStream::connect(uds_path).is_ok() {
        return Err(LaunchError::SocketInUse(uds_path.display().to_string()));
    }
    let _ = std::fs::remove_file(uds_path);
    Ok(())
}

/// `ferrite-server` and `ferrite-router` next to this executable (one install puts all three
/// in the same bin directory), else whatever PATH finds.
fn discover_programs() -> Programs {
    let sibling_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let find = |name: &str| {
        sibling_dir
            .as_ref()
            .map(|dir| dir.join(name))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    };
    Programs {
        server: find("ferrite-server"),
        router: find("ferrite-router"),
    }
}

fn find_setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}
