"""GPTQ and AWQ checkpoints written by the test in each format's exact layout (packed from
known integer weights): ferrite loads them, its dequantized weights equal the known ones, and
greedy generation matches transformers running a float checkpoint of those same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.engine.types import RequestParams, StoppingParams
from ferrite_server.layers.quantization.packed_linear import dequantize_packed
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import shard_config
from tests.support.hf_reference import greedy_reference, load_reference_model
from tests.support.quantized_checkpoints import PackedScheme, write_packed_checkpoints
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

GROUP_SIZE = 16
MAX_NEW_TOKENS = 12
# Both sides multiply the same float32 weights; only summation order differs.
LOGPROB_TOLERANCE = 1e-3
PROMPT_LENGTHS = (7, 19, 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fused_known(known: dict, layer: str, parts: tuple[str, ...]) -> torch.Tensor:
    return torch.cat([known[f"{layer}.{part}"].dequantized() for part in parts])


@pytest.mark.parametrize(("scheme", "bits"), [("gptq", 4), ("gptq", 8), ("awq", 4)])
def test_dequantized_weights_equal_the_known_integers(
    tmp_path: Path, scheme: PackedScheme, bits: int
) -> None:
    source = write_tiny_model(tmp_path / "float", TinyModelSpec(seed=3))
    written = write_packed_checkpoints(source, tmp_path, scheme, GROUP_SIZE, bits=bits)
    runner = ModelRunner.load(shard_config(written.quantized_dir))
    assert runner.facts.quantization == scheme
    for index, layer in enumerate(runner.model.model.layers):
        prefix = f"model.layers.{index}"
        expected = {
            layer.self_attn.qkv_proj: _fused_known(
                written.known, f"{prefix}.self_attn", ("q_proj", "k_proj", "v_proj")
            ),
            layer.self_attn.o_proj: written.known[f"{prefix}.self_attn.o_proj"].dequantized(),
            layer.mlp.gate_up_proj: _fused_known(
                written.known, f"{prefix}.mlp", ("gate_proj", "up_proj")
            ),
            layer.mlp.down_proj: written.known[f"{prefix}.mlp.down_proj"].dequantized(),
        }
        for module, weight in expected.items():
            assert torch.equal(dequantize_packed(module.packed, torch.float32), weight)
    if scheme == "gptq":  # act-order: the groups really are permuted over the inputs
        g_idx = runner.model.model.layers[0].self_attn.qkv_proj.g_idx
        assert not torch.equal(g_idx.sort().values, g_idx)


def _prompts(seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(6, TINY_VOCAB_SIZE, (n,), generator=generator).tolist()
        for n in PROMPT_LENGTHS
    ]


@pytest.mark.parametrize("scheme", ["gptq", "awq"])
def test_generation_matches_a_float_model_of_the_same_weights(
    tmp_path: Path, scheme: PackedScheme
) -> None:
    source = write_tiny_model(tmp_path / "float", TinyModelSpec(seed=4))
    written = write_packed_checkpoints(source, tmp_path, scheme, GROUP_SIZE, seed=1)
    engine = Engine.load(shard_config(written.quantized_dir))
    num_blocks = engine.warmup(
        max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=64
    ).num_blocks
    params = RequestParams(stopping=StoppingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True))
    prompts = _prompts(seed=2)
    requests = [ScriptedRequest(i, prompt, params) for i, prompt in enumerate(prompts)]
    EngineDriver(engine, BlockAllocator(num_blocks)).run(requests)

    reference_model = load_reference_model(written.float_dir)
    reference_model.generation_config.eos_token_id = None  # ignore_eos, like the request
    for request, prompt in zip(requests, prompts, strict=True):
        reference = greedy_reference(reference_model, prompt, MAX_NEW_TOKENS, top_n=0)
        assert request.generated_ids == reference.token_ids
        got = [token.logprob for token in request.tokens]
        assert (
            max(abs(a - b) for a, b in zip(got, reference.logprobs, strict=True))
            < LOGPROB_TOLERANCE
        )
