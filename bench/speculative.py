"""Speculative decoding on the bundled model, side by side in one run (issue 18 "Measure"):
no speculation, n-gram proposals and a draft model.

    python bench/speculative.py [--output bench/results-speculative-cpu.json] [--draft-layers 4]

Three servers run at once on the same model, float32: one plain, one with `--speculate 3`
(n-gram) and one with `--speculate 3 --speculative-method draft`, whose draft is the bundled
model cut to its first `--draft-layers` decoder layers (embedding, final norm and head kept:
tests/support/draft_models.py). Each request goes to one server after the other, one request
at a time (batch 1), so all see the same machine state. Per request the stream's token
timestamps give the decode rate (tokens after the first / time from first to last token).
Workloads:
1. lookup: the model is asked to copy or lightly edit a given text (code, a paragraph), where
   the output repeats the prompt and n-gram proposals are right often;
2. sharegpt: the first human turns of the bundled ShareGPT file, which rarely repeat.
The acceptance rate is each speculating server's accepted / proposed tokens per workload.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from text_generation import Client
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "integration-tests"))
sys.path.insert(0, str(REPO_ROOT))
from support.launcher import running_ferrite  # noqa: E402
from tests.support.draft_models import write_truncated_model  # noqa: E402

from machine import cpu_model  # noqa: E402

from ferrite_benchmark.sharegpt import bundled_dataset_path, parse_entries  # noqa: E402
from ferrite_server.cli_flags import DEFAULT_MODEL_CACHE_DIR  # noqa: E402
from ferrite_server.model_prep.default_model import ensure_default_model  # noqa: E402

COMMON = ["--dtype", "float32", "--max-input-tokens", "1500", "--max-total-tokens", "2000"]
PLAIN, NGRAM, DRAFT = "plain", "ngram_speculate_3", "draft_speculate_3"
MAX_NEW_TOKENS = 96
CODE = '''def moving_average(values, window):
    averages = []
    for index in range(len(values) - window + 1):
        chunk = values[index:index + window]
        averages.append(sum(chunk) / window)
    return averages
'''
PARAGRAPH = ("The lighthouse stood at the end of the harbor wall, painted white with a red band "
             "around its middle. Every evening the keeper climbed the ninety steps, lit the lamp "
             "and wrote the weather in a small blue book.")
LOOKUP_TASKS = [
    f"Rename the function to rolling_mean and return the code:\n\n{CODE}",
    f"Add a docstring to this function and return the whole code:\n\n{CODE}",
    f"Copy this text exactly:\n\n{PARAGRAPH}",
    f"Rewrite this text, replacing 'keeper' with 'guard':\n\n{PARAGRAPH}",
    f"Return this code unchanged:\n\n{CODE}",
    f"Repeat the following paragraph twice:\n\n{PARAGRAPH}",
]


def chat_prompts(tasks: list[str]) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model(DEFAULT_MODEL_CACHE_DIR))
    return [tokenizer.apply_chat_template([{"role": "user", "content": task}], tokenize=False,
                                          add_generation_prompt=True) for task in tasks]


def sharegpt_prompts(count: int) -> list[str]:
    entries, _ = parse_entries(bundled_dataset_path().read_text(encoding="utf-8"))
    prompts = []
    for entry in entries:
        turns = entry.get("conversations", [])
        if turns and turns[0].get("from") == "human" and 20 <= len(turns[0]["value"]) <= 1500:
            prompts.append(turns[0]["value"])
        if len(prompts) == count:
            return chat_prompts(prompts)
    raise RuntimeError("not enough ShareGPT prompts")


def decode_rate(client: Client, prompt: str) -> tuple[float, int]:
    """(decode tokens/s, tokens) of one greedy stream."""
    stamps = []
    for _ in client.generate_stream(prompt, max_new_tokens=MAX_NEW_TOKENS):
        stamps.append(time.perf_counter())
    if len(stamps) < 2:
        return float("nan"), len(stamps)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def speculation_totals(base_url: str) -> tuple[float, float]:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples}
    return (values["ferrite_speculative_proposed_tokens_total"],
            values["ferrite_speculative_accepted_tokens_total"])


def run_workload(servers: dict[str, str], prompts: list[str]) -> dict[str, float]:
    """servers: label -> base URL, the plain one first."""
    speculating = [label for label in servers if label != PLAIN]
    before = {label: speculation_totals(servers[label]) for label in speculating}
    clients = {label: Client(url, timeout=600) for label, url in servers.items()}
    rates: dict[str, list[float]] = {label: [] for label in servers}
    for prompt in prompts:
        pair = {label: decode_rate(client, prompt)[0] for label, client in clients.items()}
        if all(rate == rate for rate in pair.values()):  # not NaN: at least two tokens each
            for label, rate in pair.items():
                rates[label].append(rate)
    result: dict[str, float] = {
        f"{label}_decode_tokens_per_s_mean": statistics.mean(values) for label, values in rates.items()
    }
    for label in speculating:
        # Per-request ratios: each request ran on every server back to back, under the same load.
        ratios = [s / p for p, s in zip(rates[PLAIN], rates[label])]
        result[f"{label}_speedup_mean_of_pairs"] = statistics.mean(ratios)
        result[f"{label}_speedup_median_of_pairs"] = statistics.median(ratios)
        proposed, accepted = (after - start for after, start in
                              zip(speculation_totals(servers[label]), before[label]))
        result[f"{label}_acceptance_rate"] = accepted / max(proposed, 1.0)
    result["num_requests"] = len(rates[PLAIN])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("bench/results-speculative-cpu.json"))
    parser.add_argument("--sharegpt-requests", type=int, default=12)
    parser.add_argument("--draft-layers", type=int, default=4,
                        help="decoder layers of the bundled model the draft keeps (of 30)")
    parser.add_argument("--draft-dir", type=Path, default=Path("/tmp/ferrite-bench-draft"))
    args = parser.parse_args()
    command = " ".join(["python bench/speculative.py", *sys.argv[1:]])
    report: dict[str, object] = {"cpu": cpu_model(), "python": platform.python_version(),
                                 "command": command, "max_new_tokens": MAX_NEW_TOKENS,
                                 "draft": f"bundled model, first {args.draft_layers} of 30 layers"}
    model_dir = ensure_default_model(DEFAULT_MODEL_CACHE_DIR)
    draft_dir = write_truncated_model(model_dir, args.draft_dir, args.draft_layers)
    workloads = {"lookup": chat_prompts(LOOKUP_TASKS), "sharegpt": sharegpt_prompts(args.sharegpt_requests)}
    draft_flags = ["--speculative-method", "draft", "--draft-model-id", str(draft_dir)]
    with (running_ferrite(COMMON) as plain,
          running_ferrite([*COMMON, "--speculate", "3"]) as ngram,
          running_ferrite([*COMMON, "--speculate", "3", *draft_flags]) as draft):
        servers = {PLAIN: plain.base_url, NGRAM: ngram.base_url, DRAFT: draft.base_url}
        for url in servers.values():
            Client(url, timeout=600).generate("warm up", max_new_tokens=4)
        for name, prompts in workloads.items():
            report[name] = run_workload(servers, prompts)
            print(name, json.dumps(report[name]), flush=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
