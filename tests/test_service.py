"""A real `ferrite-server serve` process driven over gRPC on a unix socket, on a tiny
random-weight Llama; greedy tokens and logprobs are checked against transformers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc
from tests.support.tiny_models import TINY_GENERATION_EOS_TOKEN_IDS, TINY_VOCAB_SIZE, write_tiny_model

SERVER_SOURCE_DIR = Path(__file__).resolve().parents[1] / "server"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
BLOCK_SIZE = 16
PROMPT = [1, 17, 42, 99, 7, 250, 3]
MAX_NEW_TOKENS = 6


@dataclass
class ShardProcess:
    process: subprocess.Popen[bytes]
    uds_path: Path
    stub: shard_pb2_grpc.ShardStub
    channel: grpc.Channel

    def stop(self) -> int:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def start_shard(model_dir: Path, work_dir: Path) -> ShardProcess:
    uds_path = work_dir / "shard.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SERVER_SOURCE_DIR), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "ferrite_server.cli", "serve", "--model-id", str(model_dir),
               "--uds-path", str(uds_path), "--dtype", "float32", "--kv-cache-memory", "1MiB",
               "--block-size", str(BLOCK_SIZE)]
    log_file = open(work_dir / "shard.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"unix://{uds_path}")
    stub = shard_pb2_grpc.ShardStub(channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"shard exited {process.returncode}: {(work_dir / 'shard.log').read_text()}")
        try:
            stub.Health(pb.HealthRequest(), timeout=2.0)
            return ShardProcess(process, uds_path, stub, channel)
        except grpc.RpcError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def shard(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardProcess]:
    running = start_shard(model_dir, tmp_path_factory.mktemp("shard"))
    running.stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=128))
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[list[int], list[float]]:
    return _reference(model_dir, PROMPT)


def _greedy_chunk(request_id: int, input_ids: list[int], block_table: list[int], top_n: int = 0) -> pb.PrefillChunk:
    params = pb.RequestParameters(
        stopping=pb.StoppingParameters(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True), top_n_tokens=top_n
    )
    return pb.PrefillChunk(request_id=request_id, input_ids=input_ids, block_table=block_table,
                           is_last_chunk=True, parameters=params)


def _decode(*entries: tuple[int, list[int]]) -> pb.DecodeRequest:
    return pb.DecodeRequest(decodes=[pb.DecodeEntry(request_id=i, block_table=t) for i, t in entries])


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
    first = shard.stub.Prefill(pb.PrefillRequest(chunks=[_greedy_chunk(1, PROMPT, [0], top_n=3)]))
    generations = [first.generations[0]]
    assert first.timings.total_ns >= first.timings.forward_ns > 0
    while generations[-1].finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        generations.append(shard.stub.Decode(_decode((1, [0]))).generations[0])
    tokens = [g.tokens[0] for g in generations]
    assert [t.token_id for t in tokens] == expected_tokens
    assert [t.logprob for t in tokens] == pytest.approx(expected_logprobs, abs=1e-4)
    assert generations[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert all(t.top_tokens[0].token_id == t.token_id and len(t.top_tokens) == 3 for t in tokens)


def test_filter_and_clear_forget_requests(shard: ShardProcess) -> None:
    shard.stub.Prefill(pb.PrefillRequest(chunks=[_greedy_chunk(10, PROMPT, [1]), _greedy_chunk(11, PROMPT, [2])]))
    shard.stub.Filter(pb.FilterRequest(keep_request_ids=[10]))
    response = shard.stub.Decode(_decode((10, [1]), (11, [2])))
    by_id = {g.request_id: g for g in response.generations}
    assert by_id[10].error == "" and len(by_id[10].tokens) == 1
    assert by_id[11].error and not by_id[11].tokens
    shard.stub.Clear(pb.ClearRequest())
    assert shard.stub.Decode(_decode((10, [1]))).generations[0].error


def test_bad_requests_fail_alone_and_the_process_keeps_serving(
    shard: ShardProcess, reference: tuple[list[int], list[float]]
) -> None:
    unknown = shard.stub.Decode(_decode((12345, [3])))
    assert unknown.generations[0].request_id == 12345 and unknown.generations[0].error
    too_long = shard.stub.Prefill(pb.PrefillRequest(chunks=[_greedy_chunk(20, PROMPT * 5, [4])]))
    assert too_long.generations[0].error  # 35 tokens do not fit one 16-token block
    with pytest.raises(grpc.RpcError) as raised:
        shard.stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=10**6))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shard.stub.Health(pb.HealthRequest())
    again = shard.stub.Prefill(pb.PrefillRequest(chunks=[_greedy_chunk(21, PROMPT, [5])]))
    assert again.generations[0].tokens[0].token_id == reference[0][0]
    shard.stub.Filter(pb.FilterRequest())


def test_prefill_before_warmup_is_refused_and_sigterm_stops_cleanly(model_dir: Path, tmp_path: Path) -> None:
    fresh = start_shard(model_dir, tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            fresh.stub.Prefill(pb.PrefillRequest(chunks=[_greedy_chunk(1, PROMPT, [0])]))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        fresh.stub.Health(pb.HealthRequest())
    finally:
        exit_code = fresh.stop()
    assert exit_code == 0
    assert not fresh.uds_path.exists()
    log_lines = (tmp_path / "shard.log").read_text().splitlines()
    assert any(line.startswith("WARNING ") and "FAILED_PRECONDITION" in line for line in log_lines)
