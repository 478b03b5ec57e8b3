"""The step-contract conformance scenarios (proto/conformance/step_contract.json) against a
real shard process over gRPC. The router's fake shard runs the same file
(router/src/scheduler/fake_shard/tests.rs through router/src/testing/step_contract.rs), so the
two cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrite_server.proto import shard_pb2 as pb
from tests.support.shard_process import ShardProcess, start_shard
from tests.support.tiny_models import write_tiny_model

CONTRACT_PATH = Path(__file__).resolve().parents[1] / "proto" / "conformance" / "step_contract.json"
CONTRACT = json.loads(CONTRACT_PATH.read_text())
FINISH = {"none": pb.FINISH_REASON_UNSPECIFIED, "length": pb.FINISH_REASON_LENGTH,
          "eos": pb.FINISH_REASON_EOS}


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    model_dir = write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    running = start_shard(model_dir, tmp_path_factory.mktemp("shard"), CONTRACT["block_size"])
    warmup = running.stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=8,
                                                  max_total_tokens=64))
    assert warmup.num_blocks >= CONTRACT["num_blocks"]
    yield running
    assert running.stop() == 0


def _new_request(spec: dict[str, Any], generated: dict[int, list[int]]) -> pb.NewRequest:
    token_ids = list(spec["prompt"])
    if "append_generated_of" in spec:
        token_ids += generated.get(spec["append_generated_of"], [])
    cached = spec.get("cached", 0)
    request = pb.NewRequest(
        request_id=spec["id"], token_ids=token_ids, num_prompt_tokens=len(spec["prompt"]),
        num_cached_tokens=cached, num_scheduled_tokens=spec.get("scheduled", len(token_ids) - cached),
        block_ids=spec["blocks"])
    if not spec.get("no_parameters", False):
        request.parameters.CopyFrom(pb.RequestParameters(
            stopping=pb.StoppingParameters(max_new_tokens=spec["max_new_tokens"], ignore_eos=True),
            prompt_logprobs=spec.get("prompt_logprobs", False)))
    return request


def _step(spec: dict[str, Any], generated: dict[int, list[int]]) -> pb.Step:
    running = [
        pb.RunningRequest(
            request_id=entry["id"],
            new_token_ids=generated.get(entry["id"], [])[-1:] if entry.get("sampled") else [],
            new_block_ids=entry.get("new_blocks", []),
            num_scheduled_tokens=entry["scheduled"],
            # Asynchronous scheduling: the shard appends its own previous generation.
            append_generated_tokens=entry.get("generated", False))
        for entry in spec.get("running", [])
    ]
    return pb.Step(new_requests=[_new_request(new, generated) for new in spec.get("new", [])],
                   running_requests=running, release_request_ids=spec.get("release", []))


def _problem(expectation: dict[str, Any], generation: pb.Generation) -> str | None:
    if expectation.get("error", False) != bool(generation.error):
        return f"error expected: {expectation.get('error', False)}, got {generation.error!r}"
    if "tokens" in expectation and len(generation.tokens) != expectation["tokens"]:
        return f"{expectation['tokens']} tokens expected, got {len(generation.tokens)}"
    if "finish" in expectation and generation.finish_reason != FINISH[expectation["finish"]]:
        return f"finish {expectation['finish']} expected, got {generation.finish_reason}"
    if "prompt_logprobs" in expectation and len(generation.prompt_logprobs) != expectation["prompt_logprobs"]:
        return f"{expectation['prompt_logprobs']} prompt logprobs expected, got {len(generation.prompt_logprobs)}"
    return None


@pytest.mark.parametrize("scenario", CONTRACT["scenarios"], ids=lambda scenario: scenario["name"])
def test_the_real_shard_follows_the_step_contract(shard: ShardProcess, scenario: dict[str, Any]) -> None:
    shard.stub.Clear(pb.ClearRequest())
    generated: dict[int, list[int]] = {}
    problems = []
    for index, spec in enumerate(scenario["steps"]):
        response = shard.stub.Prefill(_step(spec, generated))
        by_id = {generation.request_id: generation for generation in response.generations}
        for request_id, expectation in spec["expect"].items():
            generation = by_id.get(int(request_id))
            if generation is None:
                problems.append(f"step {index}: no answer for request {request_id}")
                continue
            generated.setdefault(int(request_id), []).extend(t.token_id for t in generation.tokens)
            if (problem := _problem(expectation, generation)) is not None:
                problems.append(f"step {index}, request {request_id}: {problem}")
    for first, second in scenario.get("same_tokens", []):
        if generated.get(first) != generated.get(second):
            problems.append(f"requests {first} and {second} differ: {generated.get(first)} vs {generated.get(second)}")
    assert problems == []
