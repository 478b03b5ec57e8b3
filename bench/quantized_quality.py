"""Quality and weight memory of each quantization on the bundled SmolLM2-135M-Instruct (CPU).

Side by side in one process: mean per-token log-likelihood of a fixed text (teacher-forced,
through the paged KV cache), the largest logit difference from the unquantized bfloat16 model,
how often the argmax next token agrees with it, and the weights' memory.

    python bench/quantized_quality.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from transformers import AutoTokenizer  # noqa: E402

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.model_runner import ModelRunner  # noqa: E402
from ferrite_server.model_prep import ensure_default_model  # noqa: E402
from tests.support.quant_eval import prompt_logits  # noqa: E402

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It "
    "is named after the engineer Gustave Eiffel, whose company designed and built the tower from "
    "1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centerpiece of the "
    "1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)
VARIANTS = {
    "none": {},
    "fp8": {"quantize": "fp8"},
    "kv fp8": {"kv_cache_dtype": "fp8"},
    "fp8 + kv fp8": {"quantize": "fp8", "kv_cache_dtype": "fp8"},
    "bitsandbytes (int8)": {"quantize": "bitsandbytes"},
    "bitsandbytes-nf4": {"quantize": "bitsandbytes-nf4"},
    "bitsandbytes-fp4": {"quantize": "bitsandbytes-fp4"},
    "int8 (weight-only)": {"quantize": "int8"},
    "int4 (weight-only, group 32)": {"quantize": "int4"},
}


def main() -> None:
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    token_ids = AutoTokenizer.from_pretrained(model_dir)(TEXT)["input_ids"]
    base = ShardConfig(model_id=model_dir, uds_path=Path("/unused"), dtype="bfloat16",
                       kv_cache_memory_bytes=16 << 20)
    targets = torch.tensor(token_ids[1:])[:, None]
    print(f"{len(token_ids)} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| variant | mean log-likelihood | Δ vs none | max abs logit Δ | argmax agrees | weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    reference = None
    for name, overrides in VARIANTS.items():
        runner = ModelRunner.load(replace(base, **overrides))
        logits = prompt_logits(runner, token_ids)
        log_likelihood = logits[:-1].log_softmax(-1).gather(1, targets).mean().item()
        if reference is None:
            reference = (logits, log_likelihood)
        max_delta = (logits - reference[0]).abs().max().item()
        agrees = (logits.argmax(-1) == reference[0].argmax(-1)).float().mean().item()
        print(f"| {name} | {log_likelihood:.4f} | {log_likelihood - reference[1]:+.4f} | "
              f"{max_delta:.2f} | {100 * agrees:.1f}% | "
              f"{runner.facts.model_memory_bytes / 2**20:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
