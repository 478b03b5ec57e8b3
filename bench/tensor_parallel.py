"""Tensor parallelism through the real launcher: N shards against one, side by side (issue 10).

    python bench/tensor_parallel.py [--num-shards 1,3] [--new-tokens 32] [--dtype float32]

For each shard count, one after another on the bundled SmolLM2-135M: seconds from launch to
ready, each rank's weight bytes and anonymous resident growth while loading (from the shard
logs), and batch-1 greedy decode (output tokens/s, ms per step and the shard's forward ms per
step from ferrite's /metrics).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))
from support.launcher import free_port, running_ferrite  # noqa: E402

PROMPTS = ["The history of the printing press begins", "def fibonacci(n):"]
COUNTERS = ("ferrite_scheduler_steps_total", "ferrite_step_seconds_total",
            "ferrite_forward_seconds_total")
_WEIGHTS = re.compile(r"rank (\d+) of \d+ holds (\d+) weight bytes; anonymous resident "
                      r"memory grew by (-?\d+) bytes")


def scrape(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in COUNTERS}


def measure(num_shard: int, new_tokens: int, dtype: str) -> dict[str, object]:
    flags = ["--num-shard", str(num_shard), "--dtype", dtype, "--master-port", str(free_port()),
             "--max-input-tokens", "64", "--max-total-tokens", "256",
             "--max-batch-prefill-tokens", "64"]
    started = time.perf_counter()
    with running_ferrite(flags) as server:
        ready_s = time.perf_counter() - started
        before = scrape(server.base_url)
        tokens = 0
        decode_start = time.perf_counter()
        for prompt in PROMPTS:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens,
                                                     "details": True}}
            answer = requests.post(f"{server.base_url}/generate", json=body, timeout=3600)
            answer.raise_for_status()
            tokens += answer.json()["details"]["generated_tokens"]
        wall_s = time.perf_counter() - decode_start
        after = scrape(server.base_url)
        ranks = {int(m[1]): (int(m[2]), int(m[3])) for m in _WEIGHTS.finditer(server.log())}
    steps = after[COUNTERS[0]] - before[COUNTERS[0]]
    return {
        "num_shard": num_shard,
        "ready_s": ready_s,
        "tokens_per_s": tokens / wall_s,
        "ms_per_step": 1000 * (after[COUNTERS[1]] - before[COUNTERS[1]]) / steps,
        "forward_ms_per_step": 1000 * (after[COUNTERS[2]] - before[COUNTERS[2]]) / steps,
        "weight_mb_per_rank": max(w for w, _ in ranks.values()) / 1e6,
        "resident_growth_mb_per_rank": max(g for _, g in ranks.values()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-shards", default="1,3")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    results = [measure(int(n), args.new_tokens, args.dtype) for n in args.num_shards.split(",")]
    base = results[0]
    print("| shards | ready s | weights MB / rank | resident growth MB / rank | tok/s | "
          "× first | ms / step | forward ms / step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['num_shard']} | {r['ready_s']:.1f} | {r['weight_mb_per_rank']:.1f} | "
              f"{r['resident_growth_mb_per_rank']:.1f} | {r['tokens_per_s']:.2f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['ms_per_step']:.1f} | "
              f"{r['forward_ms_per_step']:.1f} |")


if __name__ == "__main__":
    main()
