"""The shard's step spans (ferrite_server.tracing) through the real servicer over a unix
socket: parented to the `traceparent` in the gRPC metadata, forward / sampling children placed
from the engine's timings, failures marked, and nothing built when tracing is off."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ferrite_server.config import TracingConfig
from ferrite_server.engine.types import StepInput, StepOutput, StepTimings
from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc
from ferrite_server.service import ShardService, serve_until_stopped
from ferrite_server.tracing import NoTracing, OtlpTracing, build_tracer
from tests.test_service_unit import CRASH_ID, INFO, FakeEngine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
FORWARD_NS, SAMPLING_NS = 3_000_000, 1_000_000


class TimedEngine(FakeEngine):
    """The fake engine, reporting when its (pretend) forward started."""

    def _step(self, step: StepInput) -> StepOutput:
        forward_start_ns = time.perf_counter_ns()
        output = super()._step(step)
        # Take as long as the timings say, so they fall inside the call.
        time.sleep((FORWARD_NS + SAMPLING_NS) / 1e9)
        timings = StepTimings(forward_ns=FORWARD_NS, sampling_ns=SAMPLING_NS, total_ns=FORWARD_NS + SAMPLING_NS,
                              forward_start_ns=forward_start_ns)
        return StepOutput(output.generations, timings)


def _serve_and_call(tmp_path: Path, tracer: OtlpTracing, calls) -> None:
    async def run() -> None:
        uds_path = tmp_path / "shard.sock"
        stop = asyncio.Event()
        worker = ThreadPoolExecutor(max_workers=1)
        service = ShardService(TimedEngine(), INFO, worker, tracer=tracer)
        server = asyncio.create_task(serve_until_stopped(service, uds_path, stop))
        try:
            async with grpc.aio.insecure_channel(f"unix://{uds_path}") as channel:
                await channel.channel_ready()
                stub = shard_pb2_grpc.ShardStub(channel)
                await stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=256))
                await calls(stub)
        finally:
            stop.set()
            await server
            worker.shutdown()

    asyncio.run(run())
    tracer.shutdown()  # flushes the batch processor into the exporter


def _traced_spans(tmp_path: Path, calls) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    tracer = OtlpTracing(TracingConfig(otlp_service_name="test.shard"), rank=0, exporter=exporter)
    _serve_and_call(tmp_path, tracer, calls)
    return list(exporter.get_finished_spans())


def _decode(*ids: int) -> pb.Step:
    return pb.Step(running_requests=[
        pb.RunningRequest(request_id=i, new_token_ids=[i], num_scheduled_tokens=1) for i in ids
    ])


def test_a_step_joins_the_routers_trace_with_forward_and_sampling_children(tmp_path: Path) -> None:
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),)

    async def calls(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Decode(_decode(1, 2), metadata=metadata)

    spans = {span.name: span for span in _traced_spans(tmp_path, calls)}
    assert set(spans) == {"decode", "forward", "sampling"}
    decode, forward, sampling = spans["decode"], spans["forward"], spans["sampling"]
    assert format(decode.context.trace_id, "032x") == TRACE_ID
    assert decode.parent is not None and format(decode.parent.span_id, "016x") == PARENT_SPAN_ID
    assert decode.attributes["num_decodes"] == 2
    assert decode.resource.attributes["service.name"] == "test.shard"
    for child in (forward, sampling):
        assert child.context.trace_id == decode.context.trace_id
        assert child.parent is not None and child.parent.span_id == decode.context.span_id
    assert forward.end_time - forward.start_time == FORWARD_NS
    assert sampling.start_time == forward.end_time
    assert sampling.end_time - sampling.start_time == SAMPLING_NS
    # Placed inside the step's own span (the fake's forward ended just before it returned).
    assert decode.start_time <= forward.start_time and sampling.end_time <= decode.end_time


def test_a_prefill_span_counts_prompt_chunks_apart_from_decodes(tmp_path: Path) -> None:
    new = pb.NewRequest(request_id=1, token_ids=[4, 5, 6, 7], num_prompt_tokens=4, num_scheduled_tokens=2,
                        block_ids=[0])
    # A running request handed no token computes a prompt chunk; one handed a token decodes.
    next_chunk = pb.RunningRequest(request_id=2, num_scheduled_tokens=3)
    step = pb.Step(new_requests=[new], running_requests=[next_chunk, *_decode(3, 4).running_requests])

    async def calls(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Prefill(step)

    spans = {span.name: span for span in _traced_spans(tmp_path, calls)}
    assert (spans["prefill"].attributes["num_chunks"], spans["prefill"].attributes["num_decodes"]) == (2, 2)


def test_without_a_traceparent_a_step_starts_its_own_trace(tmp_path: Path) -> None:
    async def calls(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Decode(_decode(1))

    spans = {span.name: span for span in _traced_spans(tmp_path, calls)}
    assert spans["decode"].parent is None
    assert format(spans["decode"].context.trace_id, "032x") != TRACE_ID


def test_a_failed_step_is_marked_as_an_error(tmp_path: Path) -> None:
    async def calls(stub: shard_pb2_grpc.ShardStub) -> None:
        try:
            await stub.Decode(_decode(CRASH_ID))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INTERNAL
        else:
            raise AssertionError("the crash must fail the call")

    spans = {span.name: span for span in _traced_spans(tmp_path, calls)}
    assert spans["decode"].status.status_code == StatusCode.ERROR


def test_tracing_off_builds_nothing() -> None:
    assert isinstance(build_tracer(TracingConfig(), rank=0), NoTracing)
    assert isinstance(build_tracer(TracingConfig(otlp_endpoint="http://127.0.0.1:4317"), rank=1), OtlpTracing)
