"""The regenerated RESULTS.md section: markers, ratios against ferrite, goal verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferrite_benchmark.compare.results_file import BEGIN_MARKER, END_MARKER, MarkerError, replace_between_markers
from ferrite_benchmark.compare.results_table import render_section


def _metrics(output_throughput: float) -> dict[str, Any]:
    dist = {"count": 1, "mean_ms": 10.0, "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 30.0}
    return {"completed": 4, "failed": 0, "duration_s": 1.0, "total_input_tokens": 10,
            "total_output_tokens": 40, "request_throughput": 4.0, "output_throughput": output_throughput,
            "total_token_throughput": 50.0, "goodput": None, "ttft": dist, "tpot": dist, "itl": dist,
            "e2e_latency": dist, "finish_reasons": {"length": 3, "stop": 1}}


def _target(name: str, tokens_per_s: float, tpot_ms: float, serving: list[tuple[Any, float]],
            error: str | None = None) -> dict[str, Any]:
    latency = {"num_requests": 9, "total_output_tokens": 90, "total_time_s": 90 / tokens_per_s,
               "tokens_per_s": tokens_per_s, "mean_request_s": 10 / tokens_per_s, "mean_ttft_ms": 50.0,
               "mean_tpot_ms": tpot_ms, "requests": []}
    return {"name": name, "info": {"name": name, "precision": "bfloat16", "version": "1", "how": "x"},
            "serving_mode": "server", "latency": None if error else latency,
            "serving": [{"request_rate": rate, "metrics": _metrics(t), "errors": []} for rate, t in serving],
            "error": error, "load_average_before": [0.5, 0.5, 0.5], "wall_s": 1.0}


def _document() -> dict[str, Any]:
    return {
        "command": "ferrite-benchmark compare",
        "machine": {"cpu": "CPU", "logical_cores": 2, "memory_gib": 24.0, "os": "Linux", "date_utc": "now",
                    "python": "3.11", "torch": "2", "load_average_at_start": [0.1, 0, 0],
                    "load_average_at_end": [0.2, 0, 0]},
        "workload": {"num_requests": 4, "seed": 0, "prompt_tokens_total": 10, "max_new_tokens_total": 40,
                     "latency_max_new_tokens": 200, "rate_fractions_of_ferrite_max": [0.5, 1.0],
                     "finite_request_rates": [1.0, 2.0], "sharegpt_output_len_override": None},
        "targets": [
            _target("ferrite", 20.0, 40.0, [("inf", 100.0), (1.0, 30.0)]),
            _target("llama-cpp", 40.0, 20.0, [("inf", 40.0), (1.0, 30.0)]),
            _target("transformers", 10.0, 80.0, [("inf", 50.0)]),
            _target("ctranslate2", 1.0, 1.0, [], error="ModuleNotFoundError: ctranslate2"),
        ],
    }


def test_ratios_are_taken_against_ferrite_in_the_same_run(tmp_path: Path) -> None:
    section = render_section(_document(), tmp_path / "plot.png", tmp_path / "RESULTS.md")
    lines = section.splitlines()
    llama_latency = next(line for line in lines if line.startswith("| llama-cpp | bfloat16 | 90 |"))
    assert "| 0.50× |" in llama_latency  # 20 tokens/s against 40
    llama_inf = next(line for line in lines if line.startswith("| llama-cpp") and "| inf |" in line)
    assert "| 2.50× |" in llama_inf  # 100 output tokens/s against 40
    assert "not run: ModuleNotFoundError: ctranslate2" in section
    assert "| length 3, stop 1 |" in llama_inf
    assert "![latency against throughput](plot.png)" in section


def test_goal_verdicts_say_where_ferrite_falls_short(tmp_path: Path) -> None:
    section = render_section(_document(), None, tmp_path / "RESULTS.md")
    goals = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| serving")
             or line.startswith("| batch-1")}
    assert "✔ met" in goals["serving output tokens/s ≥ 2× llama-cpp"]  # 2.5×
    assert "✘ falls short (67% of the goal)" in goals["serving output tokens/s ≥ 3× transformers"]  # 2×
    assert "✔ met" in goals["batch-1 decode tokens/s ≥ transformers (goal)"]  # 25 vs 12.5
    assert "✘ falls short (50% of the goal)" in goals["batch-1 decode tokens/s ≥ llama-cpp (target)"]


def test_markers_replace_only_their_section() -> None:
    text = "# Results\n\nhand-written\n"
    once = replace_between_markers(text, "first table")
    assert once.startswith(text.rstrip("\n")) and "first table" in once
    twice = replace_between_markers(once + "\nafter\n", "second table")
    assert "first table" not in twice and "second table" in twice
    assert twice.startswith("# Results\n\nhand-written\n") and twice.endswith("\nafter\n")
    assert twice.count(BEGIN_MARKER) == 1 and twice.count(END_MARKER) == 1
    with pytest.raises(MarkerError):
        replace_between_markers(END_MARKER + "\n" + BEGIN_MARKER, "x")


def test_resume_keeps_finished_targets_of_the_same_workload(tmp_path: Path) -> None:
    from ferrite_benchmark.compare.plan import CompareConfig
    from ferrite_benchmark.compare.run import _resumed
    from ferrite_benchmark.report import write_json

    saved = _document()
    saved["workload"].update(max_new_tokens_total=40)
    write_json(tmp_path / "compare.json", saved)
    fresh = {"command": "new", "workload": dict(saved["workload"]), "targets": []}
    config = CompareConfig(output=tmp_path / "compare.json", resume=True,
                           peers=("ferrite", "llama-cpp", "ctranslate2"))
    resumed = _resumed(config, fresh)
    # ctranslate2 failed and transformers is not asked for: both are dropped.
    assert [t["name"] for t in resumed["targets"]] == ["ferrite", "llama-cpp"]
    assert resumed["command"] == "new"
    assert _resumed(CompareConfig(output=tmp_path / "compare.json"), fresh) is fresh
    other = {"command": "new", "workload": {**saved["workload"], "seed": 1}, "targets": []}
    with pytest.raises(ValueError):
        _resumed(config, other)
