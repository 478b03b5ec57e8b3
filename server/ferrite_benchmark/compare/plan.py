"""What a comparison runs: its configuration and the choice of request rates.

The finite request rates are fractions of the request throughput ferrite itself reaches at an
infinite rate in the same run (by default half of it and all of it), so the sweep covers light
and full load on any machine without choosing numbers after seeing a peer's results. Every
server peer gets the same absolute rates and the same arrival schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PEER_NAMES = ("ferrite", "llama-cpp", "transformers", "ctranslate2")


@dataclass(frozen=True)
class CompareConfig:
    num_prompts: int = 64
    seed: int = 0
    sharegpt_output_len: int | None = None  # smoke runs: every request asks for this many tokens
    rate_fractions: tuple[float, ...] = (0.5, 1.0)
    request_rates: tuple[float, ...] | None = None  # explicit finite rates instead of fractions
    latency_max_new_tokens: int = 200
    peers: tuple[str, ...] = PEER_NAMES
    dtype: str = "bfloat16"  # ferrite and transformers
    ctranslate2_compute_type: str = "float32"
    static_batch_size: int = 16
    llama_cpp_python: str | None = None  # interpreter with llama-cpp-python[server]
    ferrite_url: str | None = None
    ferrite_args: tuple[str, ...] = ()
    output: Path = Path("bench/results-compare-cpu.json")
    results_md: Path | None = Path("bench/RESULTS.md")
    command: str = ""  # the command line, as written into the table
    resume: bool = False  # keep the finished targets of an interrupted run saved at `output`
    log_dir: Path = field(default_factory=lambda: Path("/tmp"))


def round_rate(rate: float) -> float:
    """Three significant digits: rates are written into the table and reused verbatim."""
    return float(f"{rate:.3g}")


def finite_rates(config: CompareConfig, ferrite_max_request_rate: float) -> tuple[float, ...]:
    if config.request_rates:
        return config.request_rates
    if ferrite_max_request_rate <= 0:
        raise ValueError("ferrite completed no request at the infinite rate")
    return tuple(round_rate(f * ferrite_max_request_rate) for f in config.rate_fractions)
