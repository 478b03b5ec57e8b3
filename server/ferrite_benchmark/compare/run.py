"""`ferrite-benchmark compare`: every target in turn, then the JSON, the plot and the table.

Order: ferrite first (its infinite-rate throughput fixes the finite rates), then
llama-cpp-python's server, transformers, ctranslate2. One target runs at a time, so each has
the machine to itself apart from the benchmark client. The JSON is saved after every target;
`--resume` keeps the finished targets of an interrupted run (same workload) and runs the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ferrite_benchmark.compare.machine import load_average, machine_facts
from ferrite_benchmark.compare.plan import CompareConfig, finite_rates
from ferrite_benchmark.compare.results_file import replace_marked_section
from ferrite_benchmark.compare.results_table import render_section
from ferrite_benchmark.compare.targets import (
    TargetResult,
    Workloads,
    run_in_process_target,
    run_server_target,
)
from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.plot import plot_latency_vs_throughput
from ferrite_benchmark.report import write_json
from ferrite_benchmark.sharegpt import load_sharegpt
from ferrite_benchmark.tokenizer import default_model_dir, load_tokenizer, token_counter
from ferrite_benchmark.workloads import describe, with_output_len


class _RateChoice:
    """Finite rates: chosen from ferrite's infinite-rate run, then reused for every server."""

    def __init__(self, config: CompareConfig) -> None:
        self.config = config
        self.rates: tuple[float, ...] = config.request_rates or ()

    def from_ferrite(self, inf_runs: list[dict[str, Any]]) -> tuple[float, ...]:
        self.rates = finite_rates(self.config, inf_runs[0]["metrics"]["request_throughput"])
        print(f"[compare] finite request rates: {self.rates}", flush=True)
        return self.rates

    def same(self, _inf_runs: list[dict[str, Any]]) -> tuple[float, ...]:
        return self.rates


@dataclass(frozen=True)
class _Context:
    """What every target of one comparison shares."""

    config: CompareConfig
    model_dir: Path
    workloads: Workloads
    tokenizer: Any


def _run_target(name: str, context: _Context, rates: _RateChoice) -> TargetResult:
    config, model_dir, workloads, tokenizer = (context.config, context.model_dir, context.workloads,
                                               context.tokenizer)
    if name == "ferrite":
        from ferrite_benchmark.peers.ferrite_server import FerriteSettings, running_ferrite

        settings = FerriteSettings(config.ferrite_url, config.dtype, extra_args=config.ferrite_args,
                                   log_dir=config.log_dir)
        return run_server_target(name, lambda: running_ferrite(settings), workloads, tokenizer,
                                 rates.from_ferrite)
    if name == "llama-cpp":
        from ferrite_benchmark.peers.llama_cpp_server import LlamaCppSettings, running_llama_cpp

        settings_l = LlamaCppSettings(log_dir=config.log_dir)
        if config.llama_cpp_python:
            settings_l = replace(settings_l, python=config.llama_cpp_python)
        return run_server_target(name, lambda: running_llama_cpp(settings_l), workloads, tokenizer,
                                 rates.same)
    if name == "transformers":
        def load_transformers() -> Any:
            from ferrite_benchmark.peers.transformers_generate import TransformersPeer, TransformersSettings

            return TransformersPeer(TransformersSettings(model_dir, config.dtype, config.static_batch_size))

        return run_in_process_target(name, load_transformers, workloads, tokenizer)
    if name == "ctranslate2":
        def load_ctranslate2() -> Any:
            from ferrite_benchmark.peers.ctranslate2_generate import Ctranslate2Peer, Ctranslate2Settings

            return Ctranslate2Peer(Ctranslate2Settings(model_dir, model_dir.parent,
                                                       config.ctranslate2_compute_type,
                                                       config.static_batch_size))

        return run_in_process_target(name, load_ctranslate2, workloads, tokenizer)
    raise ValueError(f"unknown peer {name!r}")


def _new_document(config: CompareConfig, requests: list[BenchRequest]) -> dict[str, Any]:
    return {
        "benchmark": "compare", "command": config.command, "machine": machine_facts(),
        "workload": {"dataset": "sharegpt", "seed": config.seed, **describe(requests),
                     "sharegpt_output_len_override": config.sharegpt_output_len,
                     "latency_max_new_tokens": config.latency_max_new_tokens,
                     "rate_fractions_of_ferrite_max": list(config.rate_fractions),
                     "finite_request_rates": list(config.request_rates or ())},
        "targets": [],
    }


def _resumed(config: CompareConfig, fresh: dict[str, Any]) -> dict[str, Any]:
    """The saved document of an interrupted run, keeping its finished targets; `fresh` if none."""
    if not config.resume or not config.output.exists():
        return fresh
    saved = json.loads(config.output.read_text())
    same = ("seed", "num_requests", "max_new_tokens_total", "latency_max_new_tokens")
    if any(saved["workload"].get(key) != fresh["workload"][key] for key in same):
        raise ValueError(f"--resume: {config.output} was measured on another workload; remove it")
    saved["targets"] = [t for t in saved["targets"] if t["error"] is None and t["name"] in config.peers]
    saved["command"] = fresh["command"]
    print(f"[compare] resuming: kept {[t['name'] for t in saved['targets']]}", flush=True)
    return saved


def _finish(config: CompareConfig, document: dict[str, Any]) -> None:
    servers = {t["name"]: t["serving"] for t in document["targets"] if len(t["serving"]) > 1}
    plot_path = config.output.with_suffix(".png")
    if servers:
        plot_latency_vs_throughput(servers, f"ShareGPT, {config.num_prompts} prompts", plot_path)
    if config.results_md is not None:
        section = render_section(document, plot_path if servers else None, config.results_md)
        replace_marked_section(config.results_md, section)
        print(f"[compare] regenerated the comparison section of {config.results_md}", flush=True)


def run_compare(config: CompareConfig) -> int:
    model_dir = default_model_dir()
    tokenizer = load_tokenizer(model_dir)
    requests = with_output_len(load_sharegpt(None, config.num_prompts, token_counter(tokenizer), config.seed),
                               config.sharegpt_output_len)
    context = _Context(config, model_dir, Workloads(requests, config.latency_max_new_tokens, config.seed),
                       tokenizer)
    document = _resumed(config, _new_document(config, requests))
    rates = _RateChoice(config)
    rates.rates = tuple(document["workload"]["finite_request_rates"]) or rates.rates
    done = {t["name"]: t for t in document["targets"]}
    for name in config.peers:
        if name not in done:
            done[name] = _run_target(name, context, rates).to_json()
            document["workload"]["finite_request_rates"] = list(rates.rates)
            # Saved after every target: an interrupted run can go on with --resume.
            document["targets"] = [done[n] for n in config.peers if n in done]
            write_json(config.output, document)
    document["machine"]["load_average_at_end"] = load_average()
    write_json(config.output, document)
    _finish(config, document)
    return 0 if all(t["error"] is None for t in document["targets"]) else 1
