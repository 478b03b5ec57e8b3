"""The native CPU decode stack (kernels/cpu/decoder_stack.cpp) against the Python layers.

Both run the same step of decode tokens (ragged contexts over shuffled cache blocks) on the same
loaded bfloat16 model and caches: the hidden states and the K/V rows the step writes must agree
to bfloat16 precision (only the attention's order of float sums differs), over two consecutive
steps so the second reads what the first wrote. Dense, int8 and int4 weights, biases (Qwen2),
grouped-query heads, a tied head.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.config import ShardConfig
from ferrite_server.kernels.cpu.build import load_decoder_stack
from ferrite_server.models.native_decode import (
    NATIVE_DECODE_MAX_ROWS,
    _int4_layout_is_blocked64,
    unsupported_reason,
)
from tests.kernels.paged_cases import build_metadata
from tests.support.engines import shard_config
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

BLOCK_SIZE = 4
NUM_BLOCKS = 40
# Contexts before the step (tokens already cached), one decode token each on top: up to 4 rows
# take the native matrix-vector products, more take aten's kernels from C++.
CACHED_LENS = (1, 9, 22, 5)


def load_runner(model_dir: Path, quantize: str | None = None, dtype: str = "bfloat16") -> ModelRunner:
    config = replace(shard_config(model_dir, BLOCK_SIZE, dtype), quantize=quantize)  # type: ignore[arg-type]
    return ModelRunner.load(config)


def random_caches(runner: ModelRunner, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's cache filled with values of a plausible K/V size (a filled context)."""
    attention = runner.model.model.layers[0].self_attn
    shape = (NUM_BLOCKS, BLOCK_SIZE, attention.num_kv_heads, attention.head_dim)
    generator = torch.Generator().manual_seed(seed)

    def rand() -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(torch.bfloat16)

    return [(rand(), rand()) for _ in runner.model.model.layers]


def decode_step(cached_lens: tuple[int, ...], generator: torch.Generator) -> AttentionMetadata:
    seq_lens = tuple(n + 1 for n in cached_lens)
    return build_metadata((1,) * len(seq_lens), seq_lens, BLOCK_SIZE, NUM_BLOCKS, generator)


def run_step(
    runner: ModelRunner, caches: list, metadata: AttentionMetadata, tokens: torch.Tensor, native: bool
) -> torch.Tensor:
    model = runner.model.model
    stack = model.native_decode
    assert stack is not None
    assert stack.applies(torch.empty(tokens.shape[0], 1), metadata)
    positions = (metadata.seq_lens - 1).long()
    if not native:
        model.native_decode = None
    try:
        with torch.inference_mode():
            return model(tokens, positions, caches, metadata)
    finally:
        model.native_decode = stack


def assert_bf16_close(native: torch.Tensor, python: torch.Tensor) -> None:
    # A few bf16 roundings apart (~1% of the values' size: other float sum orders round
    # differently): anything structural (a wrong head, block, offset, rotation or weight)
    # moves values by their own size.
    native, python = native.float(), python.float()
    scale = python.abs().mean().item()
    assert (native - python).abs().max().item() < 0.1 * python.abs().max().item() + 1e-3
    assert (native - python).abs().mean().item() < 0.03 * scale


@pytest.mark.parametrize(
    ("spec", "quantize", "cached_lens"),
    [
        (TinyModelSpec(family="llama", seed=1), None, CACHED_LENS),
        (TinyModelSpec(family="llama", seed=2, tie_word_embeddings=True), "int8", (13,)),
        (TinyModelSpec(family="qwen2", seed=3), "int4", (3, 17, 1, 8, 30, 2)),
        (TinyModelSpec(family="qwen2", seed=7), None, (3, 17, 1, 8, 30, 2)),
        (TinyModelSpec(family="llama", seed=4, llama3_rope=True), "int4", CACHED_LENS),
        # Heads of 32: RoPE's halves fill the 16-lane vector loop (heads of 16 take its rest).
        (TinyModelSpec(family="llama", seed=5, num_attention_heads=2, num_key_value_heads=1),
         "int8", (3, 17, 30)),
        # More rows than the matrix-vector loops take: int8 products on aten's kernel.
        (TinyModelSpec(family="llama", seed=6), "int8", (3, 17, 1, 8, 30, 2)),
    ],
    ids=["llama-dense", "llama-tied-int8-batch1", "qwen2-bias-int4-6rows",
         "qwen2-bias-dense-6rows", "llama3-rope-int4", "llama-heads-of-32-int8",
         "llama-int8-6rows"],
)
def test_native_stack_matches_python_layers(
    tmp_path: Path, spec: TinyModelSpec, quantize: str | None, cached_lens: tuple[int, ...]
) -> None:
    runner = load_runner(write_tiny_model(tmp_path / "model", spec), quantize)
    assert runner.model.model.native_decode is not None, "the native stack should be on"
    generator = torch.Generator().manual_seed(spec.seed)
    native_caches = random_caches(runner, spec.seed)
    python_caches = [(k.clone(), v.clone()) for k, v in native_caches]
    for _ in range(2):  # the second step attends over the rows the first one wrote
        metadata = decode_step(cached_lens, generator)
        tokens = torch.randint(0, TINY_VOCAB_SIZE, (len(cached_lens),), generator=generator)
        native = run_step(runner, native_caches, metadata, tokens, native=True)
        python = run_step(runner, python_caches, metadata, tokens, native=False)
        assert_bf16_close(native, python)
        slots = metadata.slot_mapping
        for (nk, nv), (pk, pv) in zip(native_caches, python_caches, strict=True):
            for n, p in ((nk, pk), (nv, pv)):
                written_n, written_p = n.flatten(0, 1)[slots], p.flatten(0, 1)[slots]
                assert_bf16_close(written_n, written_p)
        # Rows the step does not write are left alone.
        untouched = torch.ones(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool)
        untouched[slots] = False
        assert torch.equal(native_caches[0][0].flatten(0, 1)[untouched],
                           python_caches[0][0].flatten(0, 1)[untouched])
        cached_lens = tuple(n + 1 for n in cached_lens)
        # Both continue from the Python path's caches, so each step compares one step's error.
        native_caches = [(k.clone(), v.clone()) for k, v in python_caches]
    # The native LM head against the Python one on the same hidden states, and the step's
    # logits, as sampling sees them, agree in their top token.
    with torch.inference_mode():
        native_head = runner.compute_logits(python)
        python_head = runner.model.lm_head(python)
        assert native_head.dtype == python_head.dtype == torch.float32
        assert_bf16_close(native_head, python_head)
        assert torch.equal(runner.compute_logits(native).argmax(-1), python_head.argmax(-1))


def test_native_stack_takes_only_small_steps_of_decodes(tmp_path: Path) -> None:
    runner = load_runner(write_tiny_model(tmp_path / "model", TinyModelSpec(seed=5)))
    stack = runner.model.model.native_decode
    assert stack is not None
    generator = torch.Generator().manual_seed(0)
    decodes = decode_step(CACHED_LENS, generator)
    assert stack.applies(torch.empty(len(CACHED_LENS), 64), decodes)
    prompt = build_metadata((1, 3), (4, 3), BLOCK_SIZE, NUM_BLOCKS, generator)
    assert not stack.applies(torch.empty(4, 64), prompt)
    many = decode_step((1,) * (NATIVE_DECODE_MAX_ROWS + 1), generator)
    assert not stack.applies(torch.empty(NATIVE_DECODE_MAX_ROWS + 1, 64), many)
    with_lora = replace(decodes, lora=object())  # type: ignore[arg-type]
    assert not stack.applies(torch.empty(len(CACHED_LENS), 64), with_lora)


@pytest.mark.parametrize(
    ("spec", "dtype", "reason"),
    [
        (TinyModelSpec(family="llama"), "float32", "bfloat16 only"),
        (TinyModelSpec(family="mistral"), "bfloat16", "sliding windows"),
        (TinyModelSpec(family="qwen3"), "bfloat16", "q/k norms"),
        (TinyModelSpec(family="phi3"), "bfloat16", "partial RoPE"),
    ],
    ids=["float32", "mistral-window", "qwen3-qk-norm", "phi3-partial-rope"],
)
def test_models_the_native_stack_cannot_run_keep_python_layers(
    tmp_path: Path, spec: TinyModelSpec, dtype: str, reason: str
) -> None:
    runner = load_runner(write_tiny_model(tmp_path / "model", spec), dtype=dtype)
    inner = runner.model.model
    assert inner.native_decode is None
    found = unsupported_reason(inner)
    assert found is not None and reason in found, found


def test_disabled_by_config(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "model", TinyModelSpec(seed=6))
    config = replace(shard_config(model_dir, BLOCK_SIZE, "bfloat16"), cpu_native_decode=False)
    assert ModelRunner.load(config).model.model.native_decode is None


def test_native_step_gives_the_same_bits_on_any_thread_count(tmp_path: Path) -> None:
    """The measured thread choice (engine/step_thread_choice.py) moves bfloat16 steps between
    one thread and all: each output of the native loops is computed by one thread whatever
    their number, so the answer must not depend on it."""
    runner = load_runner(write_tiny_model(tmp_path / "model", TinyModelSpec(seed=8)), "int4")
    generator = torch.Generator().manual_seed(8)
    caches = random_caches(runner, 8)
    metadata = decode_step(CACHED_LENS, generator)
    tokens = torch.randint(0, TINY_VOCAB_SIZE, (len(CACHED_LENS),), generator=generator)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            step_caches = [(k.clone(), v.clone()) for k, v in caches]
            hidden = run_step(runner, step_caches, metadata, tokens, native=True)
            with torch.inference_mode():
                results.append((hidden, runner.compute_logits(hidden), step_caches[0][0]))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_the_native_int4_loops_read_aten_packing_here() -> None:
    """The int4 cases above compare the native int4 loops with the Python layers only when the
    load-time check lets the loops run (else aten's kernel runs in their place and a broken loop
    would go unseen). On AVX-512 CPUs the check multiplies with the native loops (the VNNI ones
    where the CPU has VNNI) against aten's kernel; elsewhere the loops are not compiled and it
    compares aten with itself. Either way it must pass."""
    assert _int4_layout_is_blocked64(load_decoder_stack(ShardConfig.native_kernel_dir))
