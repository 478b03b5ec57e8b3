"""Throughput with OpenTelemetry tracing on against off (issue 8 "Measure": goal < 3% cost).

    python bench/tracing_overhead.py [--rounds 8] [--concurrency 16] [--requests 16]
                                     [--new-tokens 32] [-- LAUNCHER FLAGS]

Two servers run side by side on the same model: one plain, one with `--otlp-endpoint` pointing
at a real OTLP receiver in this process (every request traced: router request / phase / step
spans and the shard's step spans, all exported). Rounds alternate between them (off, on, off,
on, ...) so that drifting machine load hits both alike; each round sends the same requests at
the same concurrency. Reported per server: the median over rounds of output tokens/s, and of
the CPU time (user + system) the router and shard processes spent per generated token. On a
shared machine the CPU time is the steadier figure: other processes' load changes how long a
round takes much more than how much work ferrite does in it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))
from router_throughput import PROMPTS, generate  # noqa: E402
from support.launcher import RunningFerrite, running_ferrite  # noqa: E402
from support.otlp_receiver import running_otlp_receiver  # noqa: E402

SERVING_PROGRAMS = ("ferrite-router", "ferrite-server")


@dataclass(frozen=True)
class Round:
    tokens_per_s: float
    cpu_ms_per_token: float


def serving_processes(server: RunningFerrite) -> list[psutil.Process]:
    """The router and shard processes under the launcher (not the launcher itself)."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(Path(part).name in SERVING_PROGRAMS for part in child.cmdline()[:2]):
                found.append(child)
    return found


def cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def run_round(server: RunningFerrite, args: argparse.Namespace) -> Round:
    processes = serving_processes(server)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    cpu_before, start = cpu_s(processes), time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        tokens = sum(pool.map(lambda prompt: generate(server.base_url, prompt, args.new_tokens), prompts))
    wall_s, cpu_used_s = time.perf_counter() - start, cpu_s(processes) - cpu_before
    return Round(tokens / wall_s, 1e3 * cpu_used_s / tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="rounds per server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16, help="requests per round")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("launcher_args", nargs="*", help="after --: flags for ferrite-launcher")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(running_otlp_receiver())
        servers = {
            "off": stack.enter_context(running_ferrite(args.launcher_args)),
            "on": stack.enter_context(
                running_ferrite([*args.launcher_args, "--otlp-endpoint", receiver.endpoint])),
        }
        for server in servers.values():
            generate(server.base_url, PROMPTS[0], 8)  # warm-up
        rounds: dict[str, list[Round]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                rounds[name].append(run_round(server, args))
        num_spans = len(receiver.wait_for(lambda spans: len(spans) > 0, timeout_s=10))
    for name, results in rounds.items():
        print(f"{name}: tokens/s {[round(r.tokens_per_s, 1) for r in results]}, "
              f"CPU ms/token {[round(r.cpu_ms_per_token, 2) for r in results]}")
    print(f"spans received from the traced server (before its last flush): {num_spans}")
    median = {name: (statistics.median(r.tokens_per_s for r in results),
                     statistics.median(r.cpu_ms_per_token for r in results))
              for name, results in rounds.items()}
    (off_tps, off_cpu), (on_tps, on_cpu) = median["off"], median["on"]
    print("| tracing | output tokens/s (median) | × off | router + shard CPU ms / token (median) | × off |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| off | {off_tps:.1f} | 1.000 | {off_cpu:.2f} | 1.000 |")
    print(f"| on, every request traced and exported | {on_tps:.1f} | {on_tps / off_tps:.3f} | "
          f"{on_cpu:.2f} | {on_cpu / off_cpu:.3f} |")


if __name__ == "__main__":
    main()
