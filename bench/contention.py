"""Batch-1 decode speed with and without a CPU-bound process beside the server (issue 22).

    python bench/contention.py [--setting NAME=FLAGS ...] [--rounds 3] [--new-tokens 64]

Each setting starts its own `ferrite-launcher` (FLAGS appended, e.g. `--omp-wait-policy
runtime` for the OpenMP runtime's own spin-then-sleep policy), then alternates quiet and busy
measurements round by round, so the machine's other load hits both alike. Busy: `--busy`
processes spinning in pure Python (`while True: pass`), started before and killed after each
busy measurement. One measurement: `--requests` greedy chat requests (`/v1/chat/completions`,
streamed) of `--new-tokens` tokens one after another; decode tokens/s = 1 / mean time per
output token after the first (TTFT excluded). Reports the best round of each and busy / quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ferrite_benchmark.backends import BackendConfig, make_backend  # noqa: E402
from ferrite_benchmark.peers.ferrite_server import FerriteSettings, running_ferrite  # noqa: E402
from ferrite_benchmark.peers.server_process import free_port  # noqa: E402
from ferrite_benchmark.records import BenchRequest  # noqa: E402
from machine import server_machine  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DEFAULT_SETTINGS = ("default=", "runtime-wait=--omp-wait-policy runtime")


def decode_tokens_per_s(url: str, num_requests: int, new_tokens: int) -> float:
    backend = make_backend(BackendConfig(url=url, api="openai-chat", model="any"), lambda text: 0)

    async def run() -> list[float]:
        tpots = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            for _ in range(num_requests):
                record = await backend.send(session, BenchRequest(PROMPT, 0, new_tokens))
                if not record.success or record.tpot_s is None:
                    raise RuntimeError(f"request failed: {record.error or record.finish_reason}")
                tpots.append(record.tpot_s)
        return tpots

    return 1.0 / statistics.mean(asyncio.run(run()))


def split_dtype(flags: list[str], default: str) -> tuple[str, list[str]]:
    """(a setting's own --dtype or `default`, its other flags): FerriteSettings passes --dtype."""
    if "--dtype" not in flags:
        return default, flags
    index = flags.index("--dtype")
    return flags[index + 1], flags[:index] + flags[index + 2 :]


def start_busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_busy(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def measure_setting(name: str, flags: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    metrics = ("--prometheus-port", str(free_port()))  # 9000 may be another server's
    dtype, flags = split_dtype(flags, args.dtype)
    settings = FerriteSettings(dtype=dtype, extra_args=(*flags, *metrics))
    speeds: dict[str, list[float]] = {"quiet": [], "busy": []}
    with running_ferrite(settings) as (_, client):
        decode_tokens_per_s(client.url, 1, 8)  # warm-up
        for round_index in range(args.rounds):
            speeds["quiet"].append(decode_tokens_per_s(client.url, args.requests, args.new_tokens))
            busy = start_busy(args.busy)
            try:
                time.sleep(0.5)  # let the spinners get their share of the cores
                speeds["busy"].append(
                    decode_tokens_per_s(client.url, args.requests, args.new_tokens)
                )
            finally:
                stop_busy(busy)
            print(f"  {name} round {round_index + 1}: quiet {speeds['quiet'][-1]:.1f}, "
                  f"busy {speeds['busy'][-1]:.1f} tok/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=None, metavar="NAME=FLAGS",
                        help=f"launcher flags to compare (default: {DEFAULT_SETTINGS})")
    parser.add_argument("--dtype", default="auto", help="unless a setting gives its own")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside it")
    args = parser.parse_args()
    print(server_machine())
    print(f"cores usable: {len(os.sched_getaffinity(0))}, load average "
          f"{os.getloadavg()[0]:.2f}; {args.busy} busy process(es); --dtype {args.dtype}")
    results = {}
    for setting in args.setting or DEFAULT_SETTINGS:
        name, _, flags = setting.partition("=")
        results[name] = measure_setting(name, flags.split(), args)
    print("\n| setting | quiet tok/s (best) | busy tok/s (best) | busy / quiet |")
    print("| --- | --- | --- | --- |")
    for name, speeds in results.items():
        quiet, busy = max(speeds["quiet"]), max(speeds["busy"])
        print(f"| {name} | {quiet:.1f} | {busy:.1f} | {busy / quiet:.2f} |")


if __name__ == "__main__":
    main()
