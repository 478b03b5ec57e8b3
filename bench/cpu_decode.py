"""Batch-1 decode speed on CPU, every option side by side in one run (issue 22).

    python bench/cpu_decode.py [--rounds 3] [--new-tokens 64] [--llama-cpp Q4_1=PATH ...]

Targets, all on the bundled SmolLM2-135M-Instruct and all started before the first round:
- ferrite through its launcher, one server per `--ferrite NAME=FLAGS` (default: float32,
  bfloat16, int8, int4, and the default flags, which serve the bundled Q4_1 GGUF as int4);
- llama.cpp's OpenAI server (llama-cpp-python) on each `--llama-cpp NAME=GGUF` when the package
  is importable (bench/make_q8_0_gguf.py writes the Q8_0 file from the bundled Q4_1 one);
- llama.cpp's own HTTP server, `llama-server` (a CMake build of llama.cpp, no Python), on each
  `--llama-server NAME=GGUF` (`--llama-server-binary`), one slot, through the same OpenAI API;
- llama.cpp's own `llama-bench` binary on each `--llama-bench NAME=GGUF` (a CMake build of
  llama.cpp's `llama-bench` target; `--llama-bench-binary`): generation only, in its process;
- transformers `generate` in this process, float32 and bfloat16.
Rounds alternate over the targets so the machine's other load hits all alike. One measurement:
`--requests` greedy requests of `--new-tokens` tokens (the same prompt; the servers through
their OpenAI chat API, so the model answers instead of stopping at once; transformers on the
same conversation through the model's chat template); decode tokens/s = output tokens after the first / the time they took (TTFT
excluded, so prompt length does not matter), from the arrival times of the streamed tokens
(llama.cpp's stream reports no token count). Reports the best round of each target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ferrite_benchmark.backends import BackendConfig, make_backend  # noqa: E402
from ferrite_benchmark.peers.ferrite_server import FerriteSettings, running_ferrite  # noqa: E402
from ferrite_benchmark.peers.server_process import free_port  # noqa: E402
from ferrite_benchmark.records import BenchRequest, RequestRecord  # noqa: E402
from machine import cpu_model, server_machine  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DEFAULT_FERRITE = (
    "float32=--dtype float32",
    "bfloat16=--dtype bfloat16",
    "int8=--quantize int8",
    "int4=--quantize int4",
    "default=",
)
KV_CACHE = ("--kv-cache-memory", "128MiB", "--max-total-tokens", "1024")  # five servers at once
Measure = Callable[[], float]  # one measurement -> decode tokens/s


def split_dtype(flags: list[str]) -> tuple[str, list[str]]:
    """(--dtype's value or "auto", the other flags): FerriteSettings passes --dtype itself."""
    if "--dtype" not in flags:
        return "auto", flags
    index = flags.index("--dtype")
    return flags[index + 1], flags[:index] + flags[index + 2 :]


def server_measure(config: BackendConfig, args: argparse.Namespace) -> Measure:
    backend = make_backend(replace(config, api="openai-chat"), lambda text: 0)
    request = BenchRequest(PROMPT, 0, args.new_tokens)

    async def run() -> list[RequestRecord]:
        timeout = aiohttp.ClientTimeout(total=None)
        # A connection per request: llama-server drops kept-alive connections between requests.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            return [await backend.send(session, request) for _ in range(args.requests)]

    def measure() -> float:
        records = asyncio.run(run())
        failed = [r.error for r in records if not r.success]
        if failed:
            raise RuntimeError(f"{config.url}: {failed[0]}")
        return decode_tokens_per_s(records)

    return measure


def decode_tokens_per_s(records: list[RequestRecord]) -> float:
    """Streamed tokens after the first over the time they took (one chunk per token)."""
    tokens = sum(len(r.chunk_times_s) - 1 for r in records)
    seconds = sum(r.chunk_times_s[-1] - r.chunk_times_s[0] for r in records)
    if tokens < 1:
        raise RuntimeError("no request streamed two tokens")
    return tokens / seconds


def llama_bench_measure(binary: Path, gguf: Path, args: argparse.Namespace) -> Measure:
    """llama.cpp's own `llama-bench` (a build of llama.cpp without Python): generation of
    `--new-tokens` tokens after an empty prompt, 2 threads, in its process (no HTTP, no
    tokenizer, no sampling: a lower bound on what its server would take per token)."""

    def measure() -> float:
        command = [str(binary), "-m", str(gguf), "-p", "0", "-n", str(args.new_tokens),
                   "-t", str(len(os.sched_getaffinity(0))), "-r", str(args.requests), "-o", "json"]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return float(json.loads(result.stdout)[0]["avg_ts"])

    return measure


def transformers_measure(model_dir: Path, dtype: str, args: argparse.Namespace) -> Measure:
    from ferrite_benchmark.peers.transformers_generate import TransformersPeer, TransformersSettings

    peer = TransformersPeer(TransformersSettings(model_dir, dtype, 1))
    target = peer.latency_target()
    chat = peer.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    request = BenchRequest(chat, 0, args.new_tokens)

    def measure() -> float:
        return decode_tokens_per_s([target(request) for _ in range(args.requests)])

    return measure


@contextlib.contextmanager
def started_targets(args: argparse.Namespace) -> Iterator[dict[str, Measure]]:
    from ferrite_server.model_prep import ensure_default_model

    targets: dict[str, Measure] = {}
    with contextlib.ExitStack() as stack:
        for setting in args.ferrite or DEFAULT_FERRITE:
            name, _, flags = setting.partition("=")
            dtype, rest = split_dtype(flags.split())
            metrics = ("--prometheus-port", str(free_port()))  # several servers at once
            settings = FerriteSettings(dtype=dtype, extra_args=(*rest, *KV_CACHE, *metrics))
            _, client = stack.enter_context(running_ferrite(settings))
            targets[f"ferrite {name}"] = server_measure(client, args)
        if args.llama_cpp:
            from ferrite_benchmark.peers.llama_cpp_server import LlamaCppSettings, running_llama_cpp

            for setting in args.llama_cpp:
                name, _, path = setting.partition("=")
                _, client = stack.enter_context(running_llama_cpp(LlamaCppSettings(Path(path))))
                targets[f"llama.cpp {name}"] = server_measure(client, args)
        for setting in args.llama_server or ():
            from ferrite_benchmark.peers.llama_server import LlamaServerSettings, running_llama_server

            name, _, path = setting.partition("=")
            settings = LlamaServerSettings(binary=args.llama_server_binary, gguf_path=Path(path))
            _, client = stack.enter_context(running_llama_server(settings))
            targets[f"llama-server {name}"] = server_measure(client, args)
        for setting in args.llama_bench or ():
            name, _, path = setting.partition("=")
            targets[f"llama-bench {name}"] = llama_bench_measure(args.llama_bench_binary, Path(path), args)
        model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
        for dtype in ("float32", "bfloat16"):
            targets[f"transformers {dtype}"] = transformers_measure(model_dir, dtype, args)
        yield targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ferrite", action="append", default=None, metavar="NAME=FLAGS")
    parser.add_argument("--llama-cpp", action="append", default=None, metavar="NAME=GGUF")
    parser.add_argument("--llama-bench", action="append", default=None, metavar="NAME=GGUF",
                        help="llama.cpp's llama-bench on this GGUF (see --llama-bench-binary)")
    parser.add_argument("--llama-bench-binary", type=Path, default=Path("llama-bench"))
    parser.add_argument("--llama-server", action="append", default=None, metavar="NAME=GGUF",
                        help="llama.cpp's own llama-server binary on this GGUF (one slot)")
    parser.add_argument("--llama-server-binary", type=Path, default=Path("llama-server"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="JSON of every round")
    args = parser.parse_args()
    print(f"{server_machine()}\nusable cores {len(os.sched_getaffinity(0))}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    speeds: dict[str, list[float]] = {}
    with started_targets(args) as targets:
        for measure in targets.values():
            measure()  # warm-up
        for round_index in range(args.rounds):
            for name, measure in targets.items():
                speeds.setdefault(name, []).append(measure())
            load = os.getloadavg()[0]
            line = ", ".join(f"{name} {values[-1]:.1f}" for name, values in speeds.items())
            print(f"round {round_index + 1} (load {load:.2f}): {line}", flush=True)
    print("\n| target | decode tok/s (best round) | rounds |")
    print("| --- | --- | --- |")
    for name, values in speeds.items():
        print(f"| {name} | {max(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    if args.output:
        args.output.write_text(json.dumps({"cpu": cpu_model(), "time": time.ctime(),
                                           "speeds": speeds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
