"""A real `ferrite-server serve` process driven over gRPC on a unix socket, on a tiny
random-weight Llama; greedy tokens and logprobs are checked against transformers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from ferrite_server.proto import shard_pb2 as pb
from tests.support.shard_process import ShardProcess, start_shard
from tests.support.tiny_models import TINY_GENERATION_EOS_TOKEN_IDS, TINY_VOCAB_SIZE, write_tiny_model

BLOCK_SIZE = 16
PROMPT = [1, 17, 42, 99, 7, 250, 3]
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def shard(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    running = start_shard(model_dir, tmp_path_factory.mktemp("shard"), BLOCK_SIZE)
    running.stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=128))
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[list[int], list[float]]:
    return _reference(model_dir, PROMPT)


def _greedy_new(request_id: int, token_ids: list[int], block_ids: list[int], top_n: int = 0) -> pb.NewRequest:
    """A whole prompt, nothing cached, computed in one step."""
    params = pb.RequestParameters(
        stopping=pb.StoppingParameters(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True), top_n_tokens=top_n
    )
    return pb.NewRequest(request_id=request_id, token_ids=token_ids, num_prompt_tokens=len(token_ids),
                         num_scheduled_tokens=len(token_ids), block_ids=block_ids, parameters=params)


def _prefill(*new_requests: pb.NewRequest) -> pb.Step:
    return pb.Step(new_requests=new_requests)


def _decode(*entries: tuple[int, int]) -> pb.Step:
    """(request id, the token it sampled last) -> one decode each, no new blocks."""
    return pb.Step(running_requests=[
        pb.RunningRequest(request_id=i, new_token_ids=[t], num_scheduled_tokens=1) for i, t in entries
    ])


def _last_token(response: pb.StepResponse, request_id: int) -> int:
    (generation,) = [g for g in response.generations if g.request_id == request_id]
    return generation.tokens[-1].token_id


def _reference(model_dir: Path, prompt: list[int]) -> tuple[list[int], list[float]]:
    """transformers greedy tokens and the log-softmax of each chosen one."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             min_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [float(step.log_softmax(-1)[0, t]) for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def test_info_answers_model_facts(shard: ShardProcess) -> None:
    info = shard.stub.Info(pb.InfoRequest())
    assert (info.architecture, info.dtype) == ("LlamaForCausalLM", "float32")
    assert info.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert (info.block_size, info.vocab_size, info.world_size) == (BLOCK_SIZE, TINY_VOCAB_SIZE, 1)
    assert set(TINY_GENERATION_EOS_TOKEN_IDS) <= set(info.eos_token_ids)


def test_prefill_and_decode_match_transformers(
    shard: ShardProcess, reference: tuple[list[int], list[float]]
) -> None:
    expected_tokens, expected_logprobs = reference
    first = shard.stub.Prefill(_prefill(_greedy_new(1, PROMPT, [0], top_n=3)))
    generations = [first.generations[0]]
    assert first.timings.total_ns >= first.timings.forward_ns > 0
    while generations[-1].finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        last_token = generations[-1].tokens[-1].token_id
        generations.append(shard.stub.Decode(_decode((1, last_token))).generations[0])
    tokens = [g.tokens[0] for g in generations]
    assert [t.token_id for t in tokens] == expected_tokens
    assert [t.logprob for t in tokens] == pytest.approx(expected_logprobs, abs=1e-4)
    assert generations[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(t.top_tokens[0].token_id == t.token_id and len(t.top_tokens) == 3 for t in tokens)


def test_filter_and_clear_forget_requests(shard: ShardProcess) -> None:
    prefilled = shard.stub.Prefill(_prefill(_greedy_new(10, PROMPT, [1]), _greedy_new(11, PROMPT, [2])))
    shard.stub.Filter(pb.FilterRequest(keep_request_ids=[10]))
    response = shard.stub.Decode(_decode((10, _last_token(prefilled, 10)), (11, _last_token(prefilled, 11))))
    by_id = {g.request_id: g for g in response.generations}
    assert by_id[10].error == "" and len(by_id[10].tokens) == 1
    assert by_id[11].error and not by_id[11].tokens
    shard.stub.Clear(pb.ClearRequest())
    assert shard.stub.Decode(_decode((10, _last_token(response, 10)))).generations[0].error


def test_bad_requests_fail_alone_and_the_process_keeps_serving(
    shard: ShardProcess, reference: tuple[list[int], list[float]]
) -> None:
    unknown = shard.stub.Decode(_decode((12345, 3)))
    assert unknown.generations[0].request_id == 12345 and unknown.generations[0].error
    too_long = shard.stub.Prefill(_prefill(_greedy_new(20, PROMPT * 5, [4])))
    assert too_long.generations[0].error  # 35 tokens do not fit one 16-token block
    with pytest.raises(grpc.RpcError) as raised:
        shard.stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=10**6))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shard.stub.Health(pb.HealthRequest())
    again = shard.stub.Prefill(_prefill(_greedy_new(21, PROMPT, [5])))
    assert again.generations[0].tokens[0].token_id == reference[0][0]
    shard.stub.Filter(pb.FilterRequest())


def test_prefill_before_warmup_is_refused_and_sigterm_stops_cleanly(model_dir: Path, tmp_path: Path) -> None:
    fresh = start_shard(model_dir, tmp_path, BLOCK_SIZE)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            fresh.stub.Prefill(_prefill(_greedy_new(1, PROMPT, [0])))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        fresh.stub.Health(pb.HealthRequest())
    finally:
        exit_code = fresh.stop()
    assert exit_code == 0
    assert not fresh.uds_path.exists()
    log_lines = (tmp_path / "shard.log").read_text().splitlines()
    assert any(line.startswith("WARNING ") and "FAILED_PRECONDITION" in line for line in log_lines)
