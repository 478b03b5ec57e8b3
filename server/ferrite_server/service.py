"""The gRPC face of the shard: a servicer that converts proto <-> engine types and runs every
engine call on ONE dedicated worker thread.

Why one thread: steps must never overlap (the engine owns one KV cache and one batch). Each
call runs on a thread of gRPC's pool, so Health / Info answer while a long step runs. A step's
proto conversions run on its call's thread, before and after its turn on the worker, so with
asynchronous scheduling (the router sends step n+1 while step n computes) they overlap the
other step's forward; step_order.py keeps overlapped steps in the router's order. Typed
errors become gRPC status codes in `_abort_with_status` (`status_for_error` is the one
mapping); no exception escapes to take the process down. The one exception is deliberate: a
failed tensor-parallel collective (`CollectiveError`) leaves the ranks out of step, so the
service reports it through `on_fatal_error` (called on a call's thread) and the shard exits
(the launcher then reports it and stops the rest).

Why gRPC's synchronous server and not grpc.aio: the worker's forward needs the GIL between
its ~1,500 operator calls, and grpc.aio handles each call's completions in Cython on the event
loop while holding the GIL (~0.75 ms per step, measured with py-spy --gil), so every step
waited behind the previous step's reply. The synchronous server makes its core calls without
the GIL; bench/RESULTS.md ("The shard's gRPC server without asyncio") has the figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

import grpc

from ferrite_server import proto_convert as convert
from ferrite_server.config import TcpListen
from ferrite_server.endpoints import host_port
from ferrite_server.grammar_service import GrammarService
from ferrite_server.engine.errors import (
    CollectiveError,
    InsufficientMemoryError,
    InvalidStepError,
    NotWarmedUpError,
)
from ferrite_server.engine.types import EngineInfo, StepInput, StepOutput, WarmupResult
from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc
from ferrite_server.step_order import STEP_ORDER_MAX_WAIT_S, StepOrder, StepOrderError
from ferrite_server.tracing import NoTracing, StepTracer

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
# A Prefill of many long prompts with their block tables can exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# How long in-flight calls may finish after a stop signal.
SHUTDOWN_GRACE_S = 5.0
# Threads that run calls (gRPC's synchronous server gives each call one): two overlapped
# steps, Health / Info, Filter / Clear, and every CompileGrammar in flight, which holds its
# thread while it waits for the two compile threads (up to its time limit). The router
# compiles a request's grammar before admitting it, so a burst of constrained requests means
# as many calls at once; a call that finds no free thread waits, steps included. Threads are
# started only when no idle one is left, so a high bound costs nothing until it is used.
MAX_CALL_THREADS = 1024


class ShardEngine(Protocol):
    """What the service needs from engine.Engine (a fake satisfies it in unit tests)."""

    def info(self) -> EngineInfo: ...
    def warmup(
        self,
        max_batch_prefill_tokens: int,
        max_batch_size: int,
        max_total_tokens: int,
        num_speculative_tokens: int = 0,
    ) -> WarmupResult: ...
    def step(self, step: StepInput) -> StepOutput: ...
    def filter(self, keep_request_ids: Iterable[int]) -> None: ...
    def clear(self) -> None: ...


def status_for_error(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The one mapping of engine failures to gRPC status codes."""
    if isinstance(error, InvalidStepError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, (NotWarmedUpError, StepOrderError)):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, InsufficientMemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


class ShardService(shard_pb2_grpc.ShardServicer):
    def __init__(
        self,
        engine: ShardEngine,
        info: EngineInfo,
        worker: ThreadPoolExecutor,
        on_fatal_error: Callable[[Exception], None] | None = None,
        tracer: StepTracer | None = None,
        grammars: GrammarService | None = None,
        step_order_max_wait_s: float = STEP_ORDER_MAX_WAIT_S,
    ) -> None:
        self._engine = engine
        self._step_order = StepOrder(step_order_max_wait_s)
        self._grammars = grammars if grammars is not None else GrammarService(None, 1.0)
        self._info = convert.info_to_proto(info)  # fixed once loaded; answered without the worker
        self._worker = worker
        self._on_fatal_error = on_fatal_error
        self._tracer: StepTracer = tracer if tracer is not None else NoTracing()

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        return self._info

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        # Serving starts only after Engine.load returned, so answering at all means healthy.
        return pb.HealthResponse()

    def Warmup(self, request: pb.WarmupRequest, context: grpc.ServicerContext) -> pb.WarmupResponse:
        def work() -> pb.WarmupResponse:
            result = self._engine.warmup(
                max_batch_prefill_tokens=request.max_batch_prefill_tokens,
                max_batch_size=request.max_batch_size,
                max_total_tokens=request.max_total_tokens,
                num_speculative_tokens=request.num_speculative_tokens,
            )
            logger.info("warmup: %s", result)
            return convert.warmup_to_proto(result)

        return self._engine_call(context, work)

    def Prefill(self, request: pb.Step, context: grpc.ServicerContext) -> pb.StepResponse:
        return self._step(context, "prefill", request)

    def Decode(self, request: pb.Step, context: grpc.ServicerContext) -> pb.StepResponse:
        return self._step(context, "decode", request)

    def Filter(self, request: pb.FilterRequest, context: grpc.ServicerContext) -> pb.FilterResponse:
        keep_request_ids = tuple(request.keep_request_ids)

        def work() -> pb.FilterResponse:
            self._engine.filter(keep_request_ids)
            return pb.FilterResponse()

        return self._engine_call(context, work)

    def Clear(self, request: pb.ClearRequest, context: grpc.ServicerContext) -> pb.ClearResponse:
        def work() -> pb.ClearResponse:
            self._engine.clear()
            return pb.ClearResponse()

        self._step_order.forget()  # a restarted router numbers its steps anew
        return self._engine_call(context, work)

    def CompileGrammar(
        self, request: pb.CompileGrammarRequest, context: grpc.ServicerContext
    ) -> pb.CompileGrammarResponse:
        # Not on the engine thread: steps go on while a grammar compiles.
        return self._grammars.compile(request)

    def _step(
        self, context: grpc.ServicerContext, name: str, request: pb.Step
    ) -> pb.StepResponse:
        """One Prefill / Decode, in a span under the router's step when it is traced."""
        started_ns = time.perf_counter_ns()
        metadata = context.invocation_metadata() or ()
        with self._tracer.step_span(name, metadata, _step_sizes(request)) as span:
            output = self._run_step_in_order(context, request)
            # On this call's thread, while the worker computes the next step (if one waits).
            # The output is immutable (frozen dataclasses of Python values), so that step cannot
            # change it underneath.
            try:
                response = convert.step_output_to_proto(output, total_ns=0)
            except Exception as error:  # noqa: BLE001 - every failure becomes a status
                self._abort_with_status(context, error)
            # The whole call inside the shard: conversions, the wait for its turn, the step.
            response.timings.total_ns = max(
                time.perf_counter_ns() - started_ns, output.timings.total_ns
            )
            span.record_timings(output.timings)
        return response

    def _run_step_in_order(
        self, context: grpc.ServicerContext, request: pb.Step
    ) -> StepOutput:
        """Convert `request` (while the worker may still compute the step before it), wait for
        the step it must follow to be handed over, then hand it over."""
        try:
            step = convert.step_from_proto(request)
            if request.after_step_id:  # a cancelled call stops waiting (its follower fails)
                context.add_callback(self._step_order.wake_waiters)
            self._step_order.wait_turn(request.step_id, request.after_step_id, context.is_active)
            # submit queues the work before it returns, so the worker runs it before that of
            # any step that follows this one.
            running = self._worker.submit(self._engine.step, step)
        except Exception as error:  # noqa: BLE001 - its follower must not wait for it
            self._step_order.abandoned(request.step_id)
            self._abort_with_status(context, error)
        self._step_order.handed_over(request.step_id)
        return self._outcome(context, running)

    def _engine_call(self, context: grpc.ServicerContext, work: Callable[[], ResultT]) -> ResultT:
        """Run `work` on the engine thread; its failure becomes a gRPC status."""
        return self._outcome(context, self._worker.submit(work))

    def _outcome(self, context: grpc.ServicerContext, call: Future[ResultT]) -> ResultT:
        try:
            return call.result()
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            self._abort_with_status(context, error)

    def _abort_with_status(
        self, context: grpc.ServicerContext, error: Exception
    ) -> NoReturn:
        """Fail the call with `error`'s status (never re-raise it to grpc, which would hide
        the message behind UNKNOWN)."""
        code, message = status_for_error(error)
        if isinstance(error, CollectiveError) and self._on_fatal_error is not None:
            logger.error("the tensor-parallel group is broken: %s", message)
            self._on_fatal_error(error)
        elif code == grpc.StatusCode.INTERNAL:
            logger.error("engine call failed: %s", message, exc_info=error)
        else:
            logger.warning("rejected call (%s): %s", code.name, message)
        context.abort(code, message)  # raises
        raise AssertionError("context.abort returned")


def bind_server(
    uds_path: Path, tcp_listen: TcpListen | None = None
) -> tuple[grpc.Server, int | None]:
    """A gRPC server bound to unix socket `uds_path` (and `tcp_listen`), not started yet, and
    the TCP port it got (None without TCP). Binding first lets a rank learn its port (0: any
    free port) and tell the others before it answers anything."""
    if uds_path.is_socket():
        # Left by a killed predecessor; binding would fail with "address in use".
        logger.warning("removing stale socket %s", uds_path)
        uds_path.unlink()
    server = grpc.server(
        ThreadPoolExecutor(MAX_CALL_THREADS, thread_name_prefix="grpc-call"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    server.add_insecure_port(f"unix://{uds_path}")
    tcp_port = None
    if tcp_listen is not None:
        address = host_port(tcp_listen.host, tcp_listen.port)
        tcp_port = server.add_insecure_port(address)
        if tcp_port == 0:  # grpc answers 0 instead of raising when it cannot bind
            raise OSError(f"cannot listen for gRPC on {address}")
    return server, tcp_port


async def serve_until_stopped(service: ShardService, uds_path: Path, stop: asyncio.Event) -> None:
    """Serve gRPC on unix socket `uds_path` until `stop` is set; remove the socket after."""
    server, _ = bind_server(uds_path)
    await serve_bound_until_stopped(server, service, uds_path, stop)


async def serve_bound_until_stopped(
    server: grpc.Server, service: ShardService, uds_path: Path, stop: asyncio.Event
) -> None:
    """Start `server` (from bind_server) with `service`, until `stop` is set."""
    shard_pb2_grpc.add_ShardServicer_to_server(service, server)
    server.start()
    logger.info("serving on unix://%s", uds_path)
    try:
        await stop.wait()
        logger.info("stopping (grace %.0f s)", SHUTDOWN_GRACE_S)
        stopped = server.stop(SHUTDOWN_GRACE_S)  # a threading.Event, set once calls ended
        await asyncio.to_thread(stopped.wait)
    finally:
        uds_path.unlink(missing_ok=True)


def _step_sizes(request: pb.Step) -> dict[str, int]:
    """Span attributes: new requests, and running ones split into prompt chunks / decodes (a
    running request handed a new token, or told to append its own, decodes)."""
    num_decodes = sum(
        1
        for running in request.running_requests
        if running.new_token_ids or running.append_generated_tokens
    )
    num_chunks = len(request.new_requests) + len(request.running_requests) - num_decodes
    return {"num_chunks": num_chunks, "num_decodes": num_decodes}
