"""`ferrite-benchmark` (the installed script) against a real ferrite: `serve` with a handful of
random-dataset prompts over each API and a two-rate sweep with its plot, and a small `compare`
that regenerates a RESULTS.md section (issue 7)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.launcher import running_ferrite

NUM_PROMPTS = 4
OUTPUT_LEN = 8
INPUT_LEN = 16


@pytest.fixture(scope="module")
def server():
    with running_ferrite() as running:
        yield running


def _run(*argv: str) -> subprocess.CompletedProcess:
    program = shutil.which("ferrite-benchmark")
    assert program, "ferrite-benchmark is not on PATH: install ferrite first (scripts/test.sh does)"
    completed = subprocess.run([program, *argv], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed


def _serve(url: str, output: Path, *flags: str) -> dict[str, Any]:
    argv = ["serve", "--url", url, "--dataset", "random", "--num-prompts", str(NUM_PROMPTS),
            "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
            "--output", str(output), "--no-progress", *flags]
    _run(*argv)
    return json.loads(output.read_text())


def _check_run(run: dict[str, Any], workload: dict[str, Any]) -> None:
    metrics = run["metrics"]
    assert (metrics["completed"], metrics["failed"]) == (NUM_PROMPTS, 0), run["errors"]
    assert metrics["total_input_tokens"] == workload["prompt_tokens_total"]
    assert 0 < metrics["total_output_tokens"] <= NUM_PROMPTS * OUTPUT_LEN
    assert sum(metrics["finish_reasons"].values()) == NUM_PROMPTS
    assert metrics["output_throughput"] == pytest.approx(metrics["total_output_tokens"] / metrics["duration_s"])
    assert metrics["request_throughput"] == pytest.approx(NUM_PROMPTS / metrics["duration_s"])
    ttft, e2e = metrics["ttft"], metrics["e2e_latency"]
    assert ttft["count"] == e2e["count"] == NUM_PROMPTS
    assert 0 < ttft["p50_ms"] <= ttft["p99_ms"] <= e2e["p99_ms"] <= metrics["duration_s"] * 1e3
    # Inter-token gaps exist for every request that streamed more than one chunk.
    assert metrics["itl"]["count"] >= metrics["total_output_tokens"] - 2 * NUM_PROMPTS


@pytest.mark.parametrize("api", ["tgi", "openai-completions", "openai-chat"])
def test_serve_report_is_consistent(server, tmp_path: Path, api: str) -> None:
    report = _serve(server.base_url, tmp_path / "report.json", "--api", api,
                    "--goodput", "ttft:600000", "e2el:600000")
    assert report["config"]["api"] == api
    assert report["workload"]["num_requests"] == NUM_PROMPTS
    assert report["workload"]["max_new_tokens_total"] == NUM_PROMPTS * OUTPUT_LEN
    [run] = report["runs"]
    assert run["request_rate"] == "inf"
    _check_run(run, report["workload"])
    # Generous SLOs: every request meets them, so goodput equals request throughput.
    assert run["metrics"]["goodput"] == pytest.approx(run["metrics"]["request_throughput"])


def test_a_rate_sweep_writes_every_run_and_a_plot(server, tmp_path: Path) -> None:
    output = tmp_path / "sweep.json"
    report = _serve(server.base_url, output, "--request-rate", "4,inf")
    assert [run["request_rate"] for run in report["runs"]] == [4.0, "inf"]
    for run in report["runs"]:
        _check_run(run, report["workload"])
    plot = output.with_suffix(".png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_regenerates_the_results_section(server, tmp_path: Path) -> None:
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\nkept as it is\n")
    output = tmp_path / "compare.json"
    # A smoke-sized comparison against the running server (the in-process peers have their
    # own tests in tests/benchmark, and llama-cpp-python is not part of the test environment).
    _run("compare", "--ferrite-url", server.base_url, "--peers", "ferrite",
         "--num-prompts", "2", "--sharegpt-output-len", "3", "--latency-max-new-tokens", "3",
         "--rate-fractions", "4", "--static-batch-size", "2", "--output", str(output),
         "--results-md", str(results_md), "--log-dir", str(tmp_path))
    document = json.loads(output.read_text())
    [ferrite] = document["targets"]
    assert ferrite["name"] == "ferrite" and ferrite["error"] is None
    [finite_rate] = document["workload"]["finite_request_rates"]
    inf_throughput = ferrite["serving"][0]["metrics"]["request_throughput"]
    assert finite_rate == pytest.approx(4 * inf_throughput, rel=0.01)
    assert [run["request_rate"] for run in ferrite["serving"]] == ["inf", finite_rate]
    assert ferrite["latency"]["num_requests"] == 9
    assert 0 < ferrite["latency"]["total_output_tokens"] <= 9 * 3
    for run in ferrite["serving"]:
        assert run["metrics"]["completed"] == 2 and run["metrics"]["failed"] == 0
    text = results_md.read_text()
    assert text.startswith("# Benchmark results\n\nkept as it is\n")
    # The precision column is what the server reports (`--dtype auto`: float32 on a CPU without
    # native bf16, bfloat16 with it).
    precision = ferrite["info"]["precision"]
    assert precision in ("float32", "bfloat16")
    assert f"| ferrite | {precision} | server, openai-completions API | inf | 2 / 0 |" in text
    assert "Smoke run, not a measurement" in text
    assert "![latency against throughput](compare.png)" in text and output.with_suffix(".png").exists()
