"""The in-process peers on the bundled model: per-request records from static batches, and
ctranslate2's converted model generating the same greedy tokens as transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ferrite_benchmark.peers.ctranslate2_generate import Ctranslate2Peer, Ctranslate2Settings
from ferrite_benchmark.peers.transformers_generate import TransformersPeer, TransformersSettings
from ferrite_benchmark.records import BenchRequest, RequestRecord
from tests.conftest import MODEL_CACHE_DIR
from tests.support.torch_threads import single_threaded_torch

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")


def _requests(tokenizer: AutoTokenizer, output_lens: tuple[int, ...]) -> list[BenchRequest]:
    return [BenchRequest(p, len(tokenizer(p).input_ids), n) for p, n in zip(PROMPTS, output_lens)]


def _check_records(records: list[RequestRecord], requests: list[BenchRequest]) -> None:
    assert len(records) == len(requests)
    for record, request in zip(records, requests):
        assert record.success, record.error
        assert record.prompt_len == request.prompt_len
        assert 1 <= record.output_tokens <= request.output_len
        if record.finish_reason == "length":
            assert record.output_tokens == request.output_len
        assert len(record.chunk_times_s) == record.output_tokens
        assert record.chunk_times_s == sorted(record.chunk_times_s)
        assert record.send_time_s <= record.chunk_times_s[0] <= record.end_time_s


def _transformers_greedy_ids(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs.input_ids.shape[1]:].tolist()


def test_transformers_static_batches_give_per_request_records(default_model_dir: Path) -> None:
    with single_threaded_torch():
        peer = TransformersPeer(TransformersSettings(default_model_dir, "float32", static_batch_size=2))
        requests = _requests(peer.tokenizer, (3, 6, 4))
        run = peer.run_static_batches(requests)
        single = peer.latency_target()(requests[1])
    _check_records(run.records, requests)
    # Every request was there from the start; the third waited for the first batch.
    assert {r.send_time_s for r in run.records} == {run.records[0].send_time_s}
    assert run.records[2].chunk_times_s[0] > run.records[1].end_time_s
    assert run.duration_s >= max(r.e2e_latency_s for r in run.records)
    expected = _transformers_greedy_ids(default_model_dir, PROMPTS[1], 6)
    assert single.generated_text == peer.tokenizer.decode(expected, skip_special_tokens=True)


@pytest.fixture(scope="module")
def ctranslate2_peer(default_model_dir: Path) -> Ctranslate2Peer:
    settings = Ctranslate2Settings(default_model_dir, MODEL_CACHE_DIR, "float32", static_batch_size=2,
                                   num_threads=1)
    return Ctranslate2Peer(settings)


def test_ctranslate2_matches_transformers_greedy(ctranslate2_peer: Ctranslate2Peer,
                                                 default_model_dir: Path) -> None:
    request = _requests(ctranslate2_peer.tokenizer, (8,))[0]
    record = ctranslate2_peer.latency_target()(request)
    with single_threaded_torch():
        expected = _transformers_greedy_ids(default_model_dir, PROMPTS[0], 8)
    assert record.generated_text == ctranslate2_peer.tokenizer.decode(expected, skip_special_tokens=True)
    assert record.output_tokens == len(expected)


def test_ctranslate2_rows_stop_at_their_own_limits(ctranslate2_peer: Ctranslate2Peer) -> None:
    requests = _requests(ctranslate2_peer.tokenizer, (3, 7, 5))
    run = ctranslate2_peer.run_static_batches(requests)
    _check_records(run.records, requests)
