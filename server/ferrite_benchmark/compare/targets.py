"""Running the comparison's workloads against one target: a server or an in-process peer.

Servers get the latency workload, then the serving workload at an infinite rate and at the
finite rates; in-process peers get the latency workload at batch 1 and the serving workload as
static batches with every request there from the start (they have no server to send Poisson
arrivals to). A target that cannot run (not installed, failed to start) is recorded with the
reason and the comparison goes on.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ferrite_benchmark.backends import BackendConfig, make_backend
from ferrite_benchmark.compare.machine import load_average
from ferrite_benchmark.latency import LatencySummary, http_target, latency_text, run_latency
from ferrite_benchmark.metrics import GoodputSlo, compute_metrics
from ferrite_benchmark.peers.base import InProcessPeer, PeerInfo
from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.report import run_entry, summary_text
from ferrite_benchmark.serve_command import SweepSpec, run_sweep
from ferrite_benchmark.tokenizer import token_counter


@dataclass
class TargetResult:
    name: str
    info: PeerInfo | None = None
    serving_mode: str = ""
    latency: LatencySummary | None = None
    serving: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    load_average_before: list[float] = field(default_factory=load_average)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "info": self.info.__dict__ if self.info else None,
            "serving_mode": self.serving_mode,
            "latency": self.latency.to_json() if self.latency else None,
            "serving": self.serving, "error": self.error,
            "load_average_before": self.load_average_before, "wall_s": self.wall_s,
        }


@dataclass(frozen=True)
class Workloads:
    sharegpt: list[BenchRequest]
    latency_max_new_tokens: int
    seed: int


ServerStarter = Callable[[], AbstractContextManager[tuple[PeerInfo, BackendConfig]]]
RatesFor = Callable[[list[dict[str, Any]]], Sequence[float]]


def _guarded(name: str, body: Callable[[TargetResult], None]) -> TargetResult:
    result = TargetResult(name)
    start_s = time.perf_counter()
    try:
        body(result)
    except Exception as error:  # noqa: BLE001 - one peer failing must not end the comparison
        result.error = f"{type(error).__name__}: {error}"
        print(f"[compare] {name} failed:\n{traceback.format_exc()}", flush=True)
    result.wall_s = time.perf_counter() - start_s
    return result


def run_server_target(name: str, start: ServerStarter, workloads: Workloads, tokenizer: Any,
                      rates_after_inf: RatesFor) -> TargetResult:
    """`rates_after_inf` picks the finite rates once the infinite-rate run is known."""

    def body(result: TargetResult) -> None:
        with start() as (info, backend_config):
            result.info, result.serving_mode = info, f"server, {backend_config.api} API"
            print(f"[compare] {name}: latency workload", flush=True)
            backend = make_backend(backend_config, token_counter(tokenizer))
            result.latency = run_latency(http_target(backend), token_counter(tokenizer),
                                         workloads.latency_max_new_tokens)
            print(latency_text(name, result.latency), flush=True)
            result.serving = _sweep(name, backend_config, workloads, tokenizer, (math.inf,))
            finite = tuple(rates_after_inf(result.serving))
            result.serving += _sweep(name, backend_config, workloads, tokenizer, finite)

    return _guarded(name, body)


def _sweep(name: str, config: BackendConfig, workloads: Workloads, tokenizer: Any,
           rates: tuple[float, ...]) -> list[dict[str, Any]]:
    sweep = SweepSpec(rates, None, workloads.seed, GoodputSlo())
    return run_sweep(config, workloads.sharegpt, tokenizer, sweep, name)


def run_in_process_target(name: str, load: Callable[[], InProcessPeer], workloads: Workloads,
                          tokenizer: Any) -> TargetResult:
    def body(result: TargetResult) -> None:
        peer = load()
        result.info = peer.info
        result.serving_mode = f"static batches of {peer.static_batch_size}, offline"
        print(f"[compare] {name}: latency workload (batch 1)", flush=True)
        result.latency = run_latency(peer.latency_target(), token_counter(tokenizer),
                                     workloads.latency_max_new_tokens)
        print(latency_text(name, result.latency), flush=True)
        print(f"[compare] {name}: serving workload (static batches)", flush=True)
        run = peer.run_static_batches(workloads.sharegpt)
        metrics = compute_metrics(run.records, run.duration_s)
        print(summary_text(f"{name} static batches", metrics), flush=True)
        result.serving = [run_entry(math.inf, metrics, run.records)]

    return _guarded(name, body)
