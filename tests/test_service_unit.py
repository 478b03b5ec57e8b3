"""The servicer in-process over a real unix socket, with a small fake engine: conversions both
ways (on the call's thread, overlapping the step before), the one error mapping, Health while a
step runs, steps never overlapping, overlapped steps run in the router's order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from ferrite_server import proto_convert as convert
from ferrite_server.engine.errors import InvalidStepError, NotWarmedUpError
from ferrite_server.engine.grammar import GrammarError
from ferrite_server.engine.types import (
    EngineInfo,
    FinishReason,
    GeneratedToken,
    Generation,
    StepInput,
    StepOutput,
    StepTimings,
    WarmupResult,
)
from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc
from ferrite_server.grammar_service import GrammarService
from ferrite_server.service import ShardService, serve_until_stopped

INFO = EngineInfo(
    model_id="fake", architecture="FakeForCausalLM", dtype="float32", device="cpu",
    block_size=16, vocab_size=320, eos_token_ids=(2, 5), max_position_embeddings=256,
    world_size=1, attention_backend="torch",
)
UNKNOWN_ID, CRASH_ID, SLOW_ID = 999, 666, 555


class FakeEngine:
    """Answers each decode with token = request_id; some ids misbehave on purpose."""

    def __init__(self) -> None:
        self.steps: list[StepInput] = []
        self.kept: tuple[int, ...] | None = None
        self.warmed_up = False
        self.active_steps = 0
        self.max_active_steps = 0
        self.events: list[tuple[str, int, str]] = []  # (what, first request id, thread name)
        self._lock = threading.Lock()

    def info(self) -> EngineInfo:
        return INFO

    def warmup(self, max_batch_prefill_tokens: int, max_batch_size: int, max_total_tokens: int,
               num_speculative_tokens: int = 0) -> WarmupResult:
        self.warmed_up = True
        self.num_speculative_tokens = num_speculative_tokens
        return WarmupResult(num_blocks=max_total_tokens // 16, max_supported_total_tokens=max_total_tokens,
                            model_memory_bytes=1, kv_cache_memory_bytes=2, peak_activation_memory_bytes=3)

    def step(self, step: StepInput) -> StepOutput:
        assert isinstance(step, StepInput)  # converted before it reached the worker
        first_id = _first_request_id(step)
        self.events.append(("step starts", first_id, threading.current_thread().name))
        with self._lock:
            self.active_steps += 1
            self.max_active_steps = max(self.max_active_steps, self.active_steps)
        try:
            return self._step(step)
        finally:
            with self._lock:
                self.active_steps -= 1
            self.events.append(("step ends", first_id, threading.current_thread().name))

    def _step(self, step: StepInput) -> StepOutput:
        if not self.warmed_up:
            raise NotWarmedUpError("Warmup first")
        self.steps.append(step)
        ids = [r.request_id for r in step.new_requests] + [r.request_id for r in step.running_requests]
        if CRASH_ID in ids:
            raise RuntimeError("kaboom")
        if not ids:
            raise InvalidStepError("empty step")
        if SLOW_ID in ids:
            time.sleep(0.5)
        generations = tuple(
            Generation(request_id=i, error=f"unknown request {i}") if i == UNKNOWN_ID else
            Generation(request_id=i, tokens=(GeneratedToken(i, -0.5, ((i, -0.5), (7, -1.5))),),
                       finish_reason=FinishReason.LENGTH)
            for i in ids
        )
        return StepOutput(generations, StepTimings(forward_ns=10, sampling_ns=5, total_ns=20))

    def filter(self, keep_request_ids: Iterable[int]) -> None:
        self.kept = tuple(keep_request_ids)

    def clear(self) -> None:
        self.kept = ()


def _first_request_id(step: StepInput) -> int:
    ids = [r.request_id for r in step.new_requests] + [r.request_id for r in step.running_requests]
    return ids[0] if ids else 0


async def _with_server(tmp_path: Path, engine: FakeEngine, body, **service_options: object) -> None:
    uds_path = tmp_path / "shard.sock"
    stop = asyncio.Event()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    service = ShardService(engine, INFO, worker, **service_options)
    server = asyncio.create_task(serve_until_stopped(service, uds_path, stop))
    try:
        async with grpc.aio.insecure_channel(f"unix://{uds_path}") as channel:
            await channel.channel_ready()
            await body(shard_pb2_grpc.ShardStub(channel))
    finally:
        stop.set()
        await server
        worker.shutdown()
    assert not uds_path.exists()


def _decode(*ids: int, step_id: int = 0, after_step_id: int = 0) -> pb.Step:
    return pb.Step(running_requests=[
        pb.RunningRequest(request_id=i, new_token_ids=[i], num_scheduled_tokens=1) for i in ids
    ], step_id=step_id, after_step_id=after_step_id)


def test_info_warmup_and_conversions(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        info = await stub.Info(pb.InfoRequest())
        assert (info.model_id, info.block_size, list(info.eos_token_ids)) == ("fake", 16, [2, 5])
        await stub.Health(pb.HealthRequest())
        warm = await stub.Warmup(pb.WarmupRequest(
            max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=256, num_speculative_tokens=3
        ))
        assert (warm.num_blocks, warm.max_supported_total_tokens, warm.peak_activation_memory_bytes) == (16, 256, 3)
        assert engine.num_speculative_tokens == 3
        sampling = pb.SamplingParameters(do_sample=True, top_k=5, seed=7, has_seed=True, logit_bias={3: -1.0})
        new = pb.NewRequest(
            request_id=1, token_ids=[9, 9, 9, 9, 4, 5, 6], num_prompt_tokens=6, num_cached_tokens=4,
            num_scheduled_tokens=3, block_ids=[2, 3],
            parameters=pb.RequestParameters(sampling=sampling, stopping=pb.StoppingParameters(max_new_tokens=9),
                                            top_n_tokens=2, prompt_logprobs=True),
        )
        plain = pb.NewRequest(request_id=2, token_ids=[8], num_prompt_tokens=1, num_scheduled_tokens=1, block_ids=[4])
        running = pb.RunningRequest(request_id=3, new_token_ids=[12], new_block_ids=[5, 6], num_scheduled_tokens=1)
        response = await stub.Prefill(pb.Step(new_requests=[new, plain], running_requests=[running],
                                              release_request_ids=[11]))
        first = response.generations[0]
        assert (first.request_id, first.tokens[0].token_id, first.finish_reason) == (1, 1, pb.FINISH_REASON_LENGTH)
        assert [(t.token_id, t.logprob) for t in first.tokens[0].top_tokens] == [(1, -0.5), (7, -1.5)]
        assert response.timings.forward_ns == 10 and response.timings.total_ns >= 20
        step = engine.steps[-1]
        assert step.release_request_ids == (11,)
        converted_running = step.running_requests[0]
        assert (converted_running.request_id, converted_running.new_token_ids, converted_running.new_block_ids,
                converted_running.num_scheduled_tokens) == (3, (12,), (5, 6), 1)
        converted = step.new_requests[0]
        assert (converted.token_ids, converted.num_prompt_tokens, converted.num_cached_tokens,
                converted.num_scheduled_tokens, converted.block_table) == ((9, 9, 9, 9, 4, 5, 6), 6, 4, 3, (2, 3))
        params = converted.params
        assert params is not None and step.new_requests[1].params is None
        assert (params.top_n_tokens, params.prompt_logprobs, params.stopping.max_new_tokens) == (2, True, 9)
        s = params.sampling
        # proto zeros are "off": normalized to the engine's neutral values
        assert (s.do_sample, s.top_k, s.seed, s.logit_bias) == (True, 5, 7, ((3, -1.0),))
        assert (s.temperature, s.top_p, s.typical_p, s.repetition_penalty, s.min_p) == (1.0, 1.0, 1.0, 1.0, 0.0)
        await stub.Filter(pb.FilterRequest(keep_request_ids=[3, 1]))
        assert engine.kept == (3, 1)
        await stub.Clear(pb.ClearRequest())
        assert engine.kept == ()

    asyncio.run(_with_server(tmp_path, engine, body))


def test_errors_map_to_status_codes_and_the_process_keeps_serving(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def expect(call, code: grpc.StatusCode, text: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == code and text in raised.value.details()

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await expect(stub.Decode(_decode(1)), grpc.StatusCode.FAILED_PRECONDITION, "Warmup first")
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        await expect(stub.Decode(_decode()), grpc.StatusCode.INVALID_ARGUMENT, "empty step")
        await expect(stub.Decode(_decode(CRASH_ID)), grpc.StatusCode.INTERNAL, "RuntimeError: kaboom")
        response = await stub.Decode(_decode(1, UNKNOWN_ID))
        assert [g.error for g in response.generations] == ["", f"unknown request {UNKNOWN_ID}"]
        await stub.Health(pb.HealthRequest())

    asyncio.run(_with_server(tmp_path, engine, body))


def test_health_answers_during_a_step_and_steps_never_overlap(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        slow = [asyncio.ensure_future(stub.Decode(_decode(SLOW_ID))) for _ in range(2)]
        await asyncio.sleep(0.1)
        await stub.Health(pb.HealthRequest(), timeout=0.3)  # would time out on the engine thread
        assert not any(call.done() for call in slow)
        await asyncio.gather(*slow)
        assert engine.max_active_steps == 1

    asyncio.run(_with_server(tmp_path, engine, body))


def test_overlapped_steps_run_in_the_routers_order_whatever_order_they_arrive_in(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        # Steps 7, 8, 9 (each after the one before) reach the shard as 9, 8, 7.
        third = asyncio.ensure_future(stub.Decode(_decode(3, step_id=9, after_step_id=8)))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(stub.Decode(_decode(2, step_id=8, after_step_id=7)))
        await asyncio.sleep(0.1)
        assert not third.done() and not second.done() and engine.steps == []
        unordered = await stub.Decode(_decode(4))  # no after_step_id: goes at once
        first = await stub.Decode(_decode(1, step_id=7))
        responses = [first, await second, await third]
        assert [r.generations[0].request_id for r in responses] == [1, 2, 3]
        assert unordered.generations[0].request_id == 4
        assert [_first_request_id(step) for step in engine.steps] == [4, 1, 2, 3]

    asyncio.run(_with_server(tmp_path, engine, body))


def test_a_step_whose_predecessor_never_starts_fails_with_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    real_step_from_proto = convert.step_from_proto

    def step_from_proto(message: pb.Step) -> StepInput:
        if message.step_id == 20:
            raise InvalidStepError("step 20 is malformed")
        return real_step_from_proto(message)

    monkeypatch.setattr(convert, "step_from_proto", step_from_proto)

    async def expect(call, code: grpc.StatusCode, text: str) -> float:
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == code and text in raised.value.details(), raised.value.details()
        return time.perf_counter() - started

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        waited_s = await expect(stub.Decode(_decode(1, step_id=11, after_step_id=10)),
                                grpc.StatusCode.FAILED_PRECONDITION, "after step 10, which did not reach")
        assert waited_s >= 0.3
        # Its follower fails at once: step 11 never ran, so 12 would run on a wrong history.
        waited_s = await expect(stub.Decode(_decode(1, step_id=12, after_step_id=11)),
                                grpc.StatusCode.FAILED_PRECONDITION, "after step 11, which failed")
        assert waited_s < 0.3
        # A conversion error keeps its own status; the step after it fails as well.
        await expect(stub.Decode(_decode(1, step_id=20)), grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        await expect(stub.Decode(_decode(1, step_id=21, after_step_id=20)),
                     grpc.StatusCode.FAILED_PRECONDITION, "after step 20, which failed")
        assert engine.steps == []
        await stub.Decode(_decode(1, step_id=30))
        assert len(engine.steps) == 1

    asyncio.run(_with_server(tmp_path, engine, body, step_order_max_wait_s=0.3))


def test_conversions_run_on_the_calls_thread_beside_the_running_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    real_from_proto, real_to_proto = convert.step_from_proto, convert.step_output_to_proto

    def step_from_proto(message: pb.Step) -> StepInput:
        converted = real_from_proto(message)
        engine.events.append(("converted in", _first_request_id(converted), threading.current_thread().name))
        return converted

    def step_output_to_proto(output: StepOutput, total_ns: int) -> pb.StepResponse:
        first_id = output.generations[0].request_id
        engine.events.append(("converted out", first_id, threading.current_thread().name))
        return real_to_proto(output, total_ns)

    monkeypatch.setattr(convert, "step_from_proto", step_from_proto)
    monkeypatch.setattr(convert, "step_output_to_proto", step_output_to_proto)
    running = pb.RunningRequest(request_id=1, new_block_ids=[4], num_scheduled_tokens=1,
                                append_generated_tokens=True)

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        slow = asyncio.ensure_future(stub.Decode(_decode(SLOW_ID, step_id=1)))
        await asyncio.sleep(0.1)
        response = await stub.Decode(pb.Step(running_requests=[running], step_id=2, after_step_id=1))
        await slow
        assert response.timings.total_ns >= 0.3e9  # it waited for the slow step: counted

    asyncio.run(_with_server(tmp_path, engine, body))
    converting = {thread for what, _, thread in engine.events if what.startswith("converted")}
    stepping = {thread for what, _, thread in engine.events if what.startswith("step")}
    assert len(stepping) == 1 and stepping.isdisjoint(converting)  # never the engine's thread
    order = [(what, request_id) for what, request_id, _ in engine.events]
    # The second step was converted while the slow one computed, and handed over as one.
    assert order.index(("converted in", 1)) < order.index(("step ends", SLOW_ID))
    assert engine.steps[1].running_requests[0].append_generated_tokens
    assert engine.steps[1].running_requests[0].new_token_ids == ()


class _SlowFailingCompiler:
    def compile(self, grammar: object) -> None:
        time.sleep(1.0)
        raise GrammarError("not this one")


def test_a_step_is_answered_while_many_grammar_compilations_wait(tmp_path: Path) -> None:
    """Every waiting CompileGrammar holds a call thread: a burst of them must not leave a
    step waiting for one."""
    engine = FakeEngine()
    grammars = GrammarService(_SlowFailingCompiler(), compile_timeout_s=2.0)  # type: ignore[arg-type]
    grammar = pb.Grammar(kind=pb.GRAMMAR_KIND_REGEX, value="[0-9]+")

    async def body(stub: shard_pb2_grpc.ShardStub) -> None:
        await stub.Warmup(pb.WarmupRequest(max_total_tokens=64))
        compiles = [asyncio.ensure_future(stub.CompileGrammar(pb.CompileGrammarRequest(grammar=grammar)))
                    for _ in range(64)]
        await asyncio.sleep(0.3)  # all of them in the shard, two compiling, the rest waiting
        response = await stub.Decode(_decode(1), timeout=1.0)
        assert response.generations[0].request_id == 1
        assert not all(call.done() for call in compiles)
        answers = await asyncio.gather(*compiles)
        assert all(answer.error for answer in answers)  # refused or timed out, every one

    asyncio.run(_with_server(tmp_path, engine, body, grammars=grammars))
