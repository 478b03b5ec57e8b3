"""Measuring a (quantized) model: logits of a prompt, and the mean per-token log-likelihood of
a text — both computed in the test, for the quantized and the reference model side by side."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.engine.forward_inputs import build_forward_inputs
from ferrite_server.engine.kv_cache import allocate_kv_cache
from ferrite_server.engine.model_runner import ModelRunner

_BLOCK_SIZE = 16


@dataclass(frozen=True)
class _Prompt:
    input_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]


@torch.inference_mode()
def prompt_logits(runner: ModelRunner, token_ids: list[int]) -> torch.Tensor:
    """Logits [T, V] (float32) after each token of one prompt, through the paged KV cache."""
    num_blocks = -(-len(token_ids) // _BLOCK_SIZE)
    device = runner.facts.device
    kv_caches = allocate_kv_cache(runner.kv_cache_spec(_BLOCK_SIZE), num_blocks, device)
    prompt = _Prompt(tuple(token_ids), 0, tuple(range(num_blocks)))
    inputs = build_forward_inputs([prompt], _BLOCK_SIZE, device)
    hidden = runner.forward(inputs, kv_caches)  # [T, H]
    return runner.compute_logits(hidden).float().cpu()


@torch.inference_mode()
def decode_logits(runner: ModelRunner, token_ids: list[int]) -> torch.Tensor:
    """Logits [T, V] (float32) after each token, the first as a one-token prompt and every
    later one as a decode step (teacher-forced): the path a generated token takes."""
    num_blocks = -(-len(token_ids) // _BLOCK_SIZE)
    device = runner.facts.device
    kv_caches = allocate_kv_cache(runner.kv_cache_spec(_BLOCK_SIZE), num_blocks, device)
    table = tuple(range(num_blocks))
    rows = []
    for position, token in enumerate(token_ids):
        inputs = build_forward_inputs([_Prompt((token,), position, table)], _BLOCK_SIZE, device)
        rows.append(runner.compute_logits(runner.forward(inputs, kv_caches)).float().cpu())
    return torch.cat(rows)


def mean_log_likelihood(runner: ModelRunner, token_ids: list[int]) -> float:
    """Mean log p(token_i | tokens_<i) over i >= 1: the text's per-token log-likelihood."""
    logprobs = prompt_logits(runner, token_ids).log_softmax(-1)  # [T, V]
    targets = torch.tensor(token_ids[1:])
    return logprobs[:-1].gather(1, targets[:, None]).mean().item()
