"""`ferrite-benchmark serve`: one workload against one server at one or more request rates."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrite_benchmark.backends import BackendConfig, make_backend
from ferrite_benchmark.metrics import GoodputSlo, compute_metrics
from ferrite_benchmark.plot import plot_latency_vs_throughput
from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.report import rate_label, run_entry, summary_text, write_json
from ferrite_benchmark.runner import RunSpec, run_workload
from ferrite_benchmark.tokenizer import token_counter


@dataclass(frozen=True)
class SweepSpec:
    request_rates: tuple[float, ...]
    max_concurrency: int | None
    seed: int
    slo: GoodputSlo
    show_progress: bool = True


def run_sweep(backend_config: BackendConfig, requests: list[BenchRequest], tokenizer: Any,
              sweep: SweepSpec, title: str) -> list[dict[str, Any]]:
    """Run the workload once per rate; returns the report's run entries (printing summaries)."""
    backend = make_backend(backend_config, token_counter(tokenizer))
    runs = []
    for rate in sweep.request_rates:
        spec = RunSpec(rate, sweep.max_concurrency, sweep.seed, sweep.show_progress)
        result = run_workload(backend, requests, spec)
        metrics = compute_metrics(result.records, result.duration_s, sweep.slo)
        print(summary_text(f"{title} @ {rate_label(rate)} req/s", metrics), flush=True)
        runs.append(run_entry(rate, metrics, result.records))
    return runs


def plot_path_for(output: Path, explicit: Path | None, num_rates: int) -> Path | None:
    """A sweep gets a plot beside the JSON (FILE.png) unless --plot names another place."""
    if explicit is not None:
        return explicit
    return output.with_suffix(".png") if num_rates > 1 else None


def serve_main(args: argparse.Namespace, requests: list[BenchRequest], tokenizer: Any,
               workload: dict[str, Any]) -> int:
    config = BackendConfig(url=args.url, api=args.api, model=args.model)
    sweep = SweepSpec(tuple(args.request_rate), args.max_concurrency, args.seed,
                      GoodputSlo.parse(args.goodput or []), not args.no_progress)
    runs = run_sweep(config, requests, tokenizer, sweep, f"{args.api} {args.url}")
    document = {
        "benchmark": "serve",
        "config": {"url": args.url, "api": args.api, "dataset": args.dataset,
                   "num_prompts": args.num_prompts, "seed": args.seed,
                   "max_concurrency": args.max_concurrency, "goodput_slo_ms": args.goodput or []},
        "workload": workload,
        "runs": runs,
    }
    write_json(args.output, document)
    plot_path = plot_path_for(args.output, args.plot, len(runs))
    if plot_path is not None:
        plot_latency_vs_throughput({args.url: runs}, f"{args.api} {args.url}, {args.dataset}", plot_path)
    failed = sum(run["metrics"]["failed"] for run in runs)
    return 1 if failed else 0
