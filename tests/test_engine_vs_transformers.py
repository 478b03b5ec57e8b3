"""Greedy float32 outputs of Engine.step equal transformers `generate`, token for token.

Six prompts of different lengths run in ONE batch driven like the router drives it: the longest
prompt is prefilled in three chunks across steps, others join while earlier requests are
mid-decode, and steps mix prompt chunks with decodes. Logprobs (chosen, top-n alternatives and
prompt logprobs across chunk boundaries) must be within 1e-4 of transformers' log-softmax.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from ferrite_server.config import RopeOverride
from ferrite_server.engine.types import FinishReason, RequestParams, StoppingParams
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.hf_reference import ReferenceGeneration, greedy_reference, load_reference_model
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

LOGPROB_TOLERANCE = 1e-4
TOP_N = 3
# (join step, chunk sizes) per request, in prompt order; request 0 gets prompt logprobs and
# the top-n alternatives, request 4 prompt logprobs too.
SCRIPT: list[tuple[int, tuple[int, ...]]] = [
    (0, (9, 8)),  # prefilled in three chunks (9, 8, rest) over steps 0-2
    (0, ()),
    (0, ()),
    (2, ()),  # joins while requests 1 and 2 are mid-decode
    (3, (3,)),  # two chunks, mixed with decodes
    (5, ()),
]
TINY_PROMPT_LENGTHS = (29, 5, 14, 23, 9, 40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scripted_requests(prompts: list[list[int]], max_new_tokens: int) -> list[ScriptedRequest]:
    requests = []
    for index, (prompt, (join_step, chunk_sizes)) in enumerate(zip(prompts, SCRIPT, strict=True)):
        params = RequestParams(
            stopping=StoppingParams(max_new_tokens=max_new_tokens),
            top_n_tokens=TOP_N if index == 0 else 0,
            prompt_logprobs=index in (0, 4),
        )
        requests.append(
            ScriptedRequest(
                request_id=100 + index,
                prompt_ids=prompt,
                params=params,
                join_step=join_step,
                chunk_sizes=chunk_sizes,
            )
        )
    return requests


def _assert_close(actual: float, expected: float, what: str) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"{what}: {actual} is not NaN"
    else:
        assert abs(actual - expected) <= LOGPROB_TOLERANCE, f"{what}: {actual} != {expected}"


def _assert_matches(request: ScriptedRequest, reference: ReferenceGeneration) -> None:
    rid = request.request_id
    assert request.generated_ids == reference.token_ids, f"request {rid}"
    ended_on_eos = len(reference.token_ids) < request.params.stopping.max_new_tokens
    expected_finish = FinishReason.EOS if ended_on_eos else FinishReason.LENGTH
    assert request.finish_reason == expected_finish, f"request {rid}"
    for i, (token, logprob) in enumerate(zip(request.tokens, reference.logprobs, strict=True)):
        _assert_close(token.logprob, logprob, f"request {rid} token {i} logprob")
        top_n = request.params.top_n_tokens
        assert [t for t, _ in token.top_tokens] == [t for t, _ in reference.top_tokens[i][:top_n]]
        expected_top = reference.top_tokens[i][:top_n]
        for (_, got), (_, want) in zip(token.top_tokens, expected_top, strict=True):
            _assert_close(got, want, f"request {rid} token {i} alternative")
    if request.params.prompt_logprobs:
        assert len(request.prompt_logprobs) == len(request.prompt_ids)
        pairs = zip(request.prompt_logprobs, reference.prompt_logprobs, strict=True)
        for i, (got, want) in enumerate(pairs):
            _assert_close(got, want, f"request {rid} prompt token {i}")


def _assert_batch_was_mixed(driver: EngineDriver, requests: list[ScriptedRequest]) -> None:
    assert any(step.chunk_ids and step.decode_ids for step in driver.steps), "no mixed step"
    chunked = requests[0].request_id
    assert sum(chunked in step.chunk_ids for step in driver.steps) == 3
    joiner = requests[3].request_id
    join_step = next(step for step in driver.steps if joiner in step.chunk_ids)
    assert join_step.decode_ids, "the late request did not join a decoding batch"


def _run_and_compare(
    model_dir: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    block_size_tokens: int,
    reference_dir: Path | None = None,
    **config_overrides: Any,
) -> None:
    """`reference_dir`: the checkpoint transformers runs (default: `model_dir`)."""
    engine, num_blocks = warmed_up_engine(model_dir, block_size_tokens, **config_overrides)
    requests = _scripted_requests(prompts, max_new_tokens)
    driver = EngineDriver(engine, BlockAllocator(num_blocks, seed=7))
    driver.run(requests)
    _assert_batch_was_mixed(driver, requests)
    trust_remote_code = bool(config_overrides.get("trust_remote_code", False))
    reference_model = load_reference_model(reference_dir or model_dir, trust_remote_code)
    for request in requests:
        reference = greedy_reference(reference_model, request.prompt_ids, max_new_tokens, TOP_N)
        _assert_matches(request, reference)


def _tiny_prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Ids from 6 up: none is BOS / EOS (0..5), as in a real tokenized prompt body.
    return [[rng.randrange(6, TINY_VOCAB_SIZE) for _ in range(n)] for n in TINY_PROMPT_LENGTHS]


@pytest.mark.parametrize(
    "spec",
    [
        TinyModelSpec(family="llama", seed=1),
        TinyModelSpec(family="llama", seed=2, llama3_rope=True, tie_word_embeddings=True),
        TinyModelSpec(family="mistral", seed=3),
        TinyModelSpec(family="qwen2", seed=4, sharded=True),
        TinyModelSpec(family="qwen3", seed=5),
        TinyModelSpec(family="gemma2", seed=6),
        TinyModelSpec(family="gemma3", seed=7, tie_word_embeddings=True),
        TinyModelSpec(family="phi3", seed=8),
        TinyModelSpec(family="mixtral", seed=9),
    ],
    ids=[
        "llama", "llama3-rope-tied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
        "mixtral",
    ],
)
def test_tiny_models_match_transformers(spec: TinyModelSpec, tmp_path: Path) -> None:
    # Families with windows (mistral, qwen3, gemma, phi3) have windows of 8-12 tokens, shorter
    # than most prompts (tiny_models.py), so the windowed layers attend differently.
    model_dir = write_tiny_model(tmp_path / "model", spec)
    # 4-token blocks: every sequence spans several non-contiguous blocks.
    _run_and_compare(model_dir, _tiny_prompts(spec.seed), max_new_tokens=12, block_size_tokens=4)


def test_tgi_rope_flags_match_transformers_with_that_scaling(tmp_path: Path) -> None:
    # --rope-scaling linear --rope-factor 4 on a checkpoint without scaling serves what
    # transformers computes for the same checkpoint with that scaling in its config.json.
    spec = TinyModelSpec(family="llama", seed=12)
    model_dir = write_tiny_model(tmp_path / "plain", spec)
    scaled_dir = write_tiny_model(tmp_path / "scaled", spec)
    config_path = scaled_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    config_path.write_text(json.dumps(config))
    prompts = _tiny_prompts(spec.seed)
    plain = greedy_reference(load_reference_model(model_dir), prompts[0], 6, TOP_N)
    scaled = greedy_reference(load_reference_model(scaled_dir), prompts[0], 6, TOP_N)
    assert plain.logprobs != pytest.approx(scaled.logprobs, abs=1e-4), "the scaling matters"
    _run_and_compare(
        model_dir, prompts, max_new_tokens=8, block_size_tokens=4, reference_dir=scaled_dir,
        rope_override=RopeOverride(scaling="linear", factor=4.0),
    )


SMOLLM_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "1, 2, 3, 4,",
    "The three primary colors are",
]


def test_smollm2_matches_transformers(default_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    texts = [SMOLLM_PROMPTS[2], *SMOLLM_PROMPTS[:2], chat, *SMOLLM_PROMPTS[3:]]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    assert len(prompts[0]) > 17, "the chunked prompt must span three chunks"
    _run_and_compare(default_model_dir, prompts, max_new_tokens=10, block_size_tokens=16)
