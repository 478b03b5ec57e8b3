"""Latency against throughput for a sweep of request rates, as a PNG.

Each rate is one point per curve: x = output tokens/s achieved, y = latency (TTFT, TPOT and
end-to-end; median solid, p99 dashed). One curve per target, so a comparison shows where each
server stops gaining throughput and only adds latency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e_latency", "end-to-end latency"))


def _points(runs: Sequence[dict[str, Any]], key: str, stat: str) -> list[tuple[float, float, str]]:
    points = []
    for run in runs:
        dist = run["metrics"][key]
        if dist is not None:
            points.append((run["metrics"]["output_throughput"], dist[stat], f"{run['request_rate']}/s"))
    return sorted(points)


def plot_latency_vs_throughput(series: Mapping[str, Sequence[dict[str, Any]]], title: str,
                               path: Path) -> None:
    """Write the plot; `series` maps a target's name to its report run entries."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(16, 4.8))
    for axis, (key, label) in zip(axes, PANELS):
        for index, (name, runs) in enumerate(series.items()):
            color = f"C{index}"
            for stat, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
                points = _points(runs, key, stat)
                axis.plot([x for x, _, _ in points], [y for _, y, _ in points], style, color=color,
                          label=f"{name} {stat[:3]}")
                if stat == "p50_ms":
                    for x, y, rate in points:
                        axis.annotate(rate, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel("output tokens/s")
        axis.set_ylabel(f"{label} (ms)")
        axis.set_yscale("log")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
