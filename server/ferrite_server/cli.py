"""`ferrite-server`: the shard's commands (its flags and the ShardConfig they make: cli_flags.py).

    ferrite-server serve --model-id DIR --uds-path /tmp/ferrite-server-0 [--dtype ...]
    ferrite-server prepare-model [--model-id ID|FILE.gguf] [--gguf-file NAME] [--revision REV] [--cache-dir DIR]

`serve` loads the model, then serves gRPC (so Health answers only once loaded), and exits
cleanly on SIGTERM / SIGINT with its socket removed. Tensor-parallel ranks (WORLD_SIZE > 1)
join their group while loading, exchange their gRPC endpoints before serving, and exit with
status 1 when the group breaks (a collective failed or timed out). `prepare-model` prints the prepared
model directory as the last line of stdout (the launcher reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from ferrite_server.cli_flags import build_parser, shard_config_from_args
from ferrite_server.config import ShardConfig
from ferrite_server.grammar_service import GrammarService
from ferrite_server.log_format import JsonLineFormatter, OneLineFormatter

if TYPE_CHECKING:
    from ferrite_server.engine.engine import Engine
    from ferrite_server.engine.types import EngineInfo

logger = logging.getLogger("ferrite_server")

def configure_logging(level: str, json_output: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLineFormatter() if json_output else OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        wants_draft = args.speculative_method == "draft"
        if wants_draft != (args.draft_model_id is not None):
            parser.error("--speculative-method draft and --draft-model-id go together")
    configure_logging(args.log_level, args.json_output)
    if args.command == "serve":
        return asyncio.run(_serve(shard_config_from_args(args)))
    return _prepare_model(args)


def _prepare_model(args: argparse.Namespace) -> int:
    if args.model_id is not None:
        # Owned by the launcher's model preparation (hub download, conversions).
        from ferrite_server.model_prep import prepare

        return prepare.main(args)
    from ferrite_server.model_prep import DefaultModelError, ensure_default_model

    try:
        model_dir = ensure_default_model(args.cache_dir)
    except DefaultModelError as error:
        logger.error("%s", error)
        return 1
    except Exception:  # noqa: BLE001 - reported, then a non-zero exit
        logger.exception("cannot prepare the default model in %s", args.cache_dir)
        return 1
    print(model_dir, flush=True)
    return 0


async def _serve(config: ShardConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The engine thread both loads and steps the model: per-thread device state (e.g. the
    # current CUDA device) set during load stays valid for the steps. Collectives run there too.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    loaded = await _load(config, worker, stop)
    if isinstance(loaded, int):
        return loaded
    engine, info = loaded
    try:
        return await _serve_loaded(config, engine, info, worker, stop)
    finally:
        worker.shutdown(wait=True)


async def _load(
    config: ShardConfig, worker: ThreadPoolExecutor, stop: asyncio.Event
) -> tuple[Engine, EngineInfo] | int:
    """The loaded engine, or the exit status when loading failed."""
    # Imported here: torch and the models are heavy, and `prepare-model` does not need them.
    from ferrite_server.engine.errors import EngineError

    logger.info("loading %s (rank %d of %d)", config.model_id,
                config.distributed.rank, config.distributed.world_size)
    load = asyncio.get_running_loop().run_in_executor(worker, _load_engine, config)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not load.done():
        # A load cannot be interrupted (nor a rendezvous) and the worker would be joined at exit.
        logger.info("stop requested while loading; exiting")
        logging.shutdown()
        os._exit(0)
    try:
        engine, info = load.result()
    except EngineError as error:  # e.g. an unsupported architecture: the message says it all
        logger.error("cannot serve %s: %s", config.model_id, error)
        return 1
    except Exception:  # noqa: BLE001 - reported, then a non-zero exit
        logger.exception("failed to load %s", config.model_id)
        return 1
    logger.info("loaded %s: %s", config.model_id, info)
    return engine, info


async def _serve_loaded(
    config: ShardConfig,
    engine: Engine,
    info: EngineInfo,
    worker: ThreadPoolExecutor,
    stop: asyncio.Event,
) -> int:
    """Bind, tell the other ranks where this rank listens, serve until stopped; exit status."""
    from ferrite_server.engine.distributed import leave_tensor_parallel
    from ferrite_server.engine.errors import CollectiveError
    from ferrite_server.engine.group_watchdog import GroupWatchdog
    from ferrite_server.service import ShardService, bind_server, serve_bound_until_stopped
    from ferrite_server.tracing import build_tracer

    loop = asyncio.get_running_loop()
    server, tcp_port = bind_server(config.uds_path, config.tcp_listen)
    group = engine.tensor_parallel_group
    if group.is_parallel:
        try:
            info = await _with_rank_endpoints(config, info, engine, tcp_port, worker)
        except CollectiveError as error:
            logger.error("cannot exchange endpoints with the other ranks: %s", error)
            return 1
    failures: list[Exception] = []

    def on_fatal_error(error: Exception) -> None:  # on the event loop
        failures.append(error)
        stop.set()

    def on_fatal_error_from_thread(error: Exception) -> None:  # a call's or the watchdog's
        loop.call_soon_threadsafe(on_fatal_error, error)

    def on_group_lost(reason: str) -> None:
        lost = CollectiveError(f"lost contact with the tensor-parallel group: {reason}")
        on_fatal_error_from_thread(lost)

    watchdog = GroupWatchdog(group.heartbeat_group, on_group_lost) if group.is_parallel else None
    if watchdog is not None:
        watchdog.start()
    tracer = build_tracer(config.tracing, config.distributed.rank)
    service = ShardService(
        engine, info, worker, on_fatal_error_from_thread, tracer=tracer,
        grammars=GrammarService(engine.grammars, config.grammar_limits.compile_timeout_s),
    )
    try:
        await serve_bound_until_stopped(server, service, config.uds_path, stop)
    finally:
        if watchdog is not None:
            watchdog.stop()
        tracer.shutdown()  # flushes the spans still queued
    if failures:
        logger.error("exiting: the tensor-parallel group is broken (%s)", failures[0])
        # Not a normal return: the broken group's C++ destructors may abort at interpreter
        # exit (SIGABRT instead of this status), and the engine thread may still be blocked
        # in a collective that would be joined.
        logging.shutdown()
        os._exit(1)
    await loop.run_in_executor(worker, leave_tensor_parallel)
    logger.info("stopped")
    return 0


async def _with_rank_endpoints(
    config: ShardConfig,
    info: EngineInfo,
    engine: Engine,
    tcp_port: int | None,
    worker: ThreadPoolExecutor,
) -> EngineInfo:
    """`info` with every rank's endpoint (a collective: every rank exchanges once)."""
    from ferrite_server.endpoints import exchange_endpoints, own_endpoint

    group = engine.tensor_parallel_group
    own = own_endpoint(config, tcp_port)
    loop = asyncio.get_running_loop()
    endpoints = await loop.run_in_executor(worker, exchange_endpoints, group, own)
    logger.info("rank %d serves at %s; rank endpoints: %s", group.rank, own, endpoints)
    return replace(info, rank_endpoints=endpoints)


def _load_engine(config: ShardConfig) -> tuple[Engine, EngineInfo]:
    from ferrite_server.engine.engine import Engine
    from ferrite_server.engine.host_cpu import set_cpu_threads
    from ferrite_server.engine.model_runner import resolve_device

    if resolve_device(config).type == "cpu":
        # On the engine thread, which runs every step: OpenMP's thread count is per thread.
        set_cpu_threads(config.distributed.local_world_size)
    engine = Engine.load(config)
    return engine, engine.info()


if __name__ == "__main__":
    sys.exit(main())
