"""Reference outputs from Hugging Face transformers on the same checkpoint directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


@dataclass(frozen=True)
class ReferenceGeneration:
    token_ids: list[int]
    logprobs: list[float]  # log-softmax of the raw logits at each chosen token
    top_tokens: list[list[tuple[int, float]]]  # per generated token: top n, most likely first
    prompt_logprobs: list[float]  # per prompt token; NaN for the first


def load_reference_model(model_dir: Path, trust_remote_code: bool = False) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model.eval()


@torch.inference_mode()
def greedy_reference(
    model: PreTrainedModel, prompt_ids: list[int], max_new_tokens: int, top_n: int
) -> ReferenceGeneration:
    """transformers `generate(do_sample=False)` (stopping at the checkpoint's EOS ids)."""
    input_ids = torch.tensor([prompt_ids])
    output = model.generate(  # type: ignore[operator]
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    token_ids = output.sequences[0, len(prompt_ids) :].tolist()
    step_logprobs = [logits[0].float().log_softmax(-1) for logits in output.logits]
    top_tokens = []
    for row in step_logprobs:
        values, ids = row.topk(top_n)
        top_tokens.append(list(zip(ids.tolist(), values.tolist(), strict=True)))
    prompt_rows = model(input_ids).logits[0].float().log_softmax(-1)  # [P, V]
    prompt_logprobs = [float("nan")] + [
        prompt_rows[i - 1, prompt_ids[i]].item() for i in range(1, len(prompt_ids))
    ]
    return ReferenceGeneration(
        token_ids=token_ids,
        logprobs=[row[token].item() for row, token in zip(step_logprobs, token_ids, strict=True)],
        top_tokens=top_tokens,
        prompt_logprobs=prompt_logprobs,
    )
