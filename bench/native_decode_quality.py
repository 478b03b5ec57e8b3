"""Quality of the native CPU decode step (kernels/cpu/decoder_stack.cpp) against the Python
layers, on the bundled SmolLM2-135M-Instruct: the same text teacher-forced token by token
through decode steps (the path generated tokens take); mean per-token log-likelihood, largest
logit difference and argmax agreement, each against the float32 model's decode (Python
layers: the reference that matches transformers). The native stack should be as close to it
as the Python layers with the same weights are.

    python bench/native_decode_quality.py
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
from quantized_quality import TEXT  # noqa: E402
from tests.support.quant_eval import decode_logits  # noqa: E402

WEIGHTS = {"bfloat16": None, "int8": "int8", "int4": "int4"}


def mean_log_likelihood(logits: torch.Tensor, token_ids: list[int]) -> float:
    targets = torch.tensor(token_ids[1:])
    return logits[:-1].log_softmax(-1).gather(1, targets[:, None]).mean().item()


def main() -> None:
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    token_ids = AutoTokenizer.from_pretrained(model_dir)(TEXT)["input_ids"]
    base = ShardConfig(model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype="bfloat16")
    print(f"{len(token_ids)} tokens, {torch.get_num_threads()} threads\n")
    reference = decode_logits(ModelRunner.load(replace(base, dtype="float32")), token_ids)
    reference_ll = mean_log_likelihood(reference, token_ids)
    print(f"float32 reference (Python layers): mean log-likelihood {reference_ll:.4f}\n")
    print("| weights | decode path | mean log-likelihood | Δ vs float32 | max abs logit Δ vs "
          "float32 | argmax agrees with float32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, quantize in WEIGHTS.items():
        for native, label in ((False, "Python layers"), (True, "native")):
            runner = ModelRunner.load(replace(base, quantize=quantize, cpu_native_decode=native))
            assert (runner.model.model.native_decode is not None) == native
            logits = decode_logits(runner, token_ids)
            ll = mean_log_likelihood(logits, token_ids)
            delta = (logits - reference).abs().max().item()
            agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            print(f"| {name} | {label} | {ll:.4f} | {ll - reference_ll:+.4f} | {delta:.2f} | "
                  f"{agree:.1%} |")

if __name__ == "__main__":
    main()
