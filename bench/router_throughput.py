"""Throughput with N concurrent requests against batch 1, and the router's own time per step,
through the real launcher (issue 3 "Measure").

    python bench/router_throughput.py [--concurrency 16,32] [--new-tokens 64] [-- LAUNCHER FLAGS]

One server, one run, the workloads one after another: batch 1 (requests sent one at a time),
then each concurrency level. Throughput = generated tokens / wall time. Router time per step
= (step wall time - shard-reported forward time) / steps, from the deltas of ferrite's
`/metrics` counters over each workload.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))
from support.launcher import running_ferrite  # noqa: E402

# Plain-text prompts that the instruct model continues at length (some chat-style prompts end
# at once with EOS when sent without the chat template).
PROMPTS = [
    "Explain how a compiler works, step by step.",
    "The history of the printing press begins",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
]
COUNTERS = ("ferrite_scheduler_steps_total", "ferrite_step_seconds_total",
            "ferrite_forward_seconds_total")


@dataclass(frozen=True)
class Workload:
    name: str
    concurrency: int
    num_requests: int


def scrape(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in COUNTERS}


def generate(base_url: str, prompt: str, new_tokens: int) -> int:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "details": True}}
    response = requests.post(f"{base_url}/generate", json=body, timeout=3600)
    response.raise_for_status()
    return response.json()["details"]["generated_tokens"]


def run(base_url: str, workload: Workload, new_tokens: int) -> dict[str, float]:
    before = scrape(base_url)
    start = time.perf_counter()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(workload.num_requests)]
    with ThreadPoolExecutor(workload.concurrency) as pool:
        tokens = sum(pool.map(lambda p: generate(base_url, p, new_tokens), prompts))
    wall_s = time.perf_counter() - start
    after = scrape(base_url)
    delta = {name: after[name] - before[name] for name in COUNTERS}
    steps = max(delta["ferrite_scheduler_steps_total"], 1)
    return {
        "tokens_per_s": tokens / wall_s,
        "steps": steps,
        "step_ms": 1e3 * delta["ferrite_step_seconds_total"] / steps,
        "router_ms_per_step": 1e3 * (delta["ferrite_step_seconds_total"]
                                     - delta["ferrite_forward_seconds_total"]) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="16,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("launcher_args", nargs="*", help="after --: flags for ferrite-launcher")
    args = parser.parse_args()
    workloads = [Workload("batch 1", 1, 4)] + [
        Workload(f"{c} concurrent", c, c) for c in map(int, args.concurrency.split(","))
    ]
    with running_ferrite(args.launcher_args) as server:
        generate(server.base_url, PROMPTS[0], 8)  # warm-up
        results = {w.name: run(server.base_url, w, args.new_tokens) for w in workloads}
    batch1 = results["batch 1"]["tokens_per_s"]
    print("| workload | output tokens/s | × batch 1 | steps | ms / step | router ms / step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / batch1:.2f} | "
              f"{r['steps']:.0f} | {r['step_ms']:.1f} | {r['router_ms_per_step']:.2f} |")


if __name__ == "__main__":
    main()
