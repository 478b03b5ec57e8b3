"""Asynchronous scheduling against synchronous through the real server, side by side (issue 22):
batch-1 decode (one greedy stream at a time) and serving (ShareGPT prompts sent at once, at
most `--max-concurrency` in flight), on two servers started first; rounds alternate between
them so the machine's other load hits both alike.

    cd bench && python async_scheduling.py [--rounds 3] [--num-prompts 32] [--max-concurrency 16]
        [--launcher-flags "..."]

Batch 1: TPOT and TPOT - forward - sampling per request (router_overhead.py's measure).
Serving: output tokens/s and median TPOT of the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import statistics

from text_generation import Client

from ferrite_benchmark.backends import BackendConfig, make_backend
from ferrite_benchmark.metrics import compute_metrics
from ferrite_benchmark.runner import RunSpec, run_workload
from ferrite_benchmark.tokenizer import load_tokenizer, token_counter
from ferrite_benchmark.workloads import DatasetSpec, build_requests
from machine import server_machine
from router_overhead import PROMPT, one_request, running_ferrite

SETTINGS = {"async": ["--async-scheduling", "on"], "sync": ["--async-scheduling", "off"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch1-requests", type=int, default=2, help="per round and setting")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--sharegpt-output-len", type=int, default=64)
    parser.add_argument("--launcher-flags", default="", help="added to both servers")
    args = parser.parse_args()
    tokenizer = load_tokenizer(None)
    workload = build_requests(
        DatasetSpec("sharegpt", args.num_prompts, sharegpt_output_len=args.sharegpt_output_len),
        tokenizer,
    )
    batch1 = {name: [] for name in SETTINGS}
    serving = {name: [] for name in SETTINGS}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(running_ferrite([*flags, *shlex.split(args.launcher_flags)]))
                   for name, flags in SETTINGS.items()}
        for server in servers.values():
            Client(server.base_url, timeout=600).generate(PROMPT, max_new_tokens=8)  # warm
        for _ in range(args.rounds):
            for name, server in servers.items():
                client = Client(server.base_url, timeout=600)
                batch1[name] += [one_request(client, server.base_url, args.new_tokens)
                                 for _ in range(args.batch1_requests)]
                backend = make_backend(BackendConfig(url=server.base_url, api="tgi"), token_counter(tokenizer))
                result = run_workload(backend, workload, RunSpec(math.inf, args.max_concurrency, 0, False))
                metrics = compute_metrics(result.records, result.duration_s)
                if metrics.failed:
                    raise RuntimeError(f"{name}: {metrics.failed} requests failed")
                serving[name].append((metrics.output_throughput, metrics.tpot.p50_ms))
    print(server_machine())
    print(f"{args.rounds} rounds; batch 1: {args.batch1_requests} x {args.new_tokens} tokens per round; "
          f"serving: {args.num_prompts} ShareGPT prompts x {args.sharegpt_output_len} tokens, "
          f"max concurrency {args.max_concurrency}; launcher flags: {args.launcher_flags or '(defaults)'}")
    for name in SETTINGS:
        tpots = [row["tpot_ms"] for row in batch1[name]]
        overheads = [row["tpot_ms"] - row["forward_ms"] - row["sampling_ms"] for row in batch1[name]]
        throughputs = [round_[0] for round_ in serving[name]]
        serving_tpots = [round_[1] for round_ in serving[name]]
        print(f"{name:6s} batch-1 TPOT median {statistics.median(tpots):6.2f} ms, outside forward+sampling "
              f"{statistics.median(overheads):5.2f} ms | serving {', '.join(f'{t:.1f}' for t in throughputs)} "
              f"tok/s, TPOT median {', '.join(f'{t:.0f}' for t in serving_tpots)} ms")
    ratios = [a[0] / s[0] for a, s in zip(serving["async"], serving["sync"])]
    batch1_ratios = [s["tpot_ms"] / a["tpot_ms"] for a, s in zip(batch1["async"], batch1["sync"])]
    print(f"async / sync: serving output tok/s per round {', '.join(f'{r:.3f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.3f}); batch-1 speed per request pair median "
          f"{statistics.median(batch1_ratios):.3f}")


if __name__ == "__main__":
    main()
