"""How often a draft cut from the bundled model (its first k decoder layers, then the model's
own final norm and head, as tests/support/draft_models.py writes it) picks the full model's
greedy token: the per-token acceptance rate a greedy request would see with
`--speculative-method draft` and that draft (issue 18 "Measure", draft method).

    python bench/draft_agreement.py [--layers 2,4,8,16,24,28,29] [--new-tokens 64]

transformers, float32, one forward per prompt over the prompt and the full model's greedy
continuation (`generate`), keeping every layer's hidden states: the draft with k layers sees
exactly hidden state k, so one forward measures every depth. Prompts: bench/speculative.py's
lookup tasks and its first ShareGPT turns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speculative import LOOKUP_TASKS, sharegpt_prompts  # noqa: E402

from ferrite_server.cli_flags import DEFAULT_MODEL_CACHE_DIR  # noqa: E402
from ferrite_server.model_prep.default_model import ensure_default_model  # noqa: E402


@torch.inference_mode()
def agreement_by_depth(model, tokenizer, prompt: str, layers: list[int], new_tokens: int) -> dict[int, list[bool]]:
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    sequence = model.generate(input_ids, max_new_tokens=new_tokens, do_sample=False)
    output = model(sequence, output_hidden_states=True)
    first = input_ids.shape[1] - 1  # the row predicting the first generated token
    full = output.logits[0, first:-1].argmax(dim=-1)
    result = {}
    for depth in layers:
        hidden = output.hidden_states[depth][0, first:-1]  # after `depth` decoder layers
        draft = model.lm_head(model.model.norm(hidden)).argmax(dim=-1)
        result[depth] = (draft == full).tolist()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,4,8,16,24,28,29")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sharegpt-requests", type=int, default=12)
    args = parser.parse_args()
    layers = [int(part) for part in args.layers.split(",")]
    model_dir = ensure_default_model(DEFAULT_MODEL_CACHE_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lookup = [tokenizer.apply_chat_template([{"role": "user", "content": task}], tokenize=False,
                                            add_generation_prompt=True) for task in LOOKUP_TASKS]
    report = {"command": " ".join(["python bench/draft_agreement.py", *sys.argv[1:]])}
    for name, prompts in {"lookup": lookup, "sharegpt": sharegpt_prompts(args.sharegpt_requests)}.items():
        matches: dict[int, list[bool]] = {depth: [] for depth in layers}
        for prompt in prompts:
            for depth, agreed in agreement_by_depth(model, tokenizer, prompt, layers, args.new_tokens).items():
                matches[depth].extend(agreed)
        report[name] = {f"first_{depth}_layers": round(sum(m) / len(m), 3) for depth, m in matches.items()}
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
