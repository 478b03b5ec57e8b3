"""Where a batch-1 token's time goes through the whole server: the client's time per output
token against the shard's forward and sampling time per decode step (issue 22's "router + gRPC
overhead per token"). Starts the real launcher, streams greedy requests one at a time and reads
the router's step counters from /metrics before and after each request.

    python bench/router_overhead.py [--requests 5] [--new-tokens 64] [--setting NAME=FLAGS ...]
        [--shard-source NAME=DIR ...]

Each setting (default: one with the launcher's defaults) runs its own server, all started
first; requests then alternate between them, so the settings share the machine's state.
`--shard-source NAME=DIR` runs setting NAME's shard from the `ferrite_server` package under DIR
(PYTHONPATH), e.g. the `server/` of a `git worktree` of the previous commit: an A/B of shard
code in one run.

Per request: TPOT = (last token - first token) / (tokens - 1) seen by the client; the shard's
forward and sampling per decode step (tgi_batch_forward_duration, ferrite_step_sampling_seconds);
the router's step wall (tgi_batch_inference_duration: send, gRPC, shard, reply; with
asynchronous scheduling it includes the wait behind the step sent before); overhead = TPOT -
forward - sampling (router planning, gRPC, the shard's host work, detokenizing, streaming; what
asynchronous scheduling hides behind the forward is not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from text_generation import Client

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "integration-tests"))
from support.launcher import running_ferrite  # noqa: E402

from machine import server_machine  # noqa: E402

PROMPT = "The history of the printing press begins"  # a continuation: no early end of text
# The router's series for decode steps (prefill steps excluded).
# (The parser names a counter's sample with `_total`, as OpenMetrics does.)
COUNTERS = ("tgi_batch_inference_count_total", "tgi_batch_inference_duration_sum",
            "tgi_batch_forward_duration_sum", "ferrite_step_sampling_seconds_sum")


def counters(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in COUNTERS and sample.labels.get("method") == "decode"}


def one_request(client: Client, base_url: str, new_tokens: int) -> dict[str, float]:
    before = counters(base_url)
    token_times = []
    for response in client.generate_stream(PROMPT, max_new_tokens=new_tokens):
        if not response.token.special:
            token_times.append(time.perf_counter())
    after = counters(base_url)
    delta = {name: after[name] - before[name] for name in COUNTERS}
    steps = delta["tgi_batch_inference_count_total"]
    return {
        "tpot_ms": (token_times[-1] - token_times[0]) / (len(token_times) - 1) * 1e3,
        "forward_ms": delta["tgi_batch_forward_duration_sum"] / steps * 1e3,
        "sampling_ms": delta["ferrite_step_sampling_seconds_sum"] / steps * 1e3,
        "step_wall_ms": delta["tgi_batch_inference_duration_sum"] / steps * 1e3,
        "steps": steps,
    }


def report(name: str, rows: list[dict[str, float]]) -> None:
    print(f"== {name}")
    for key in ("tpot_ms", "step_wall_ms", "forward_ms", "sampling_ms"):
        values = [row[key] for row in rows]
        print(f"{key:14s} median {statistics.median(values):7.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    overheads = [row["tpot_ms"] - row["forward_ms"] - row["sampling_ms"] for row in rows]
    outside = [row["tpot_ms"] - row["step_wall_ms"] for row in rows]
    print(f"{'overhead_ms':14s} median {statistics.median(overheads):7.2f}  "
          f"(TPOT - forward - sampling: {', '.join(f'{v:.2f}' for v in overheads)})")
    print(f"{'between_ms':14s} median {statistics.median(outside):7.2f}  "
          f"(TPOT - router step wall: time outside the step RPC, {', '.join(f'{v:.2f}' for v in outside)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="per setting")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--setting", action="append", default=None, metavar="NAME=FLAGS",
                        help="launcher flags of one server, e.g. 'sync=--async-scheduling off'")
    parser.add_argument("--shard-source", action="append", default=[], metavar="NAME=DIR",
                        help="run setting NAME's shard from the ferrite_server package in DIR")
    args = parser.parse_args()
    settings = [setting.partition("=") for setting in args.setting or ["defaults="]]
    sources = dict(source.split("=", 1) for source in args.shard_source)
    unknown = set(sources) - {name for name, _, _ in settings}
    if unknown:
        parser.error(f"--shard-source names no setting: {', '.join(sorted(unknown))}")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in settings}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(running_ferrite(
                       shlex.split(flags),
                       env={"PYTHONPATH": str(Path(sources[name]).resolve())} if name in sources else None))
                   for name, _, flags in settings}
        clients = {name: Client(server.base_url, timeout=600) for name, server in servers.items()}
        for client in clients.values():
            client.generate(PROMPT, max_new_tokens=8)  # warm
        for _ in range(args.requests):
            for name, client in clients.items():
                rows[name].append(one_request(client, servers[name].base_url, args.new_tokens))
    print(server_machine())
    print(f"{args.requests} requests of {args.new_tokens} tokens per setting, batch 1, settings alternating")
    for name, _, flags in settings:
        source = f" (shard from {sources[name]})" if name in sources else ""
        report(f"{name}: {flags or '(defaults)'}{source}", rows[name])


if __name__ == "__main__":
    main()
