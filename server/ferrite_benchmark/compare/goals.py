"""Issue 7's goals checked against a comparison's numbers: met, or where ferrite falls short.

- Serving throughput on ShareGPT (output tokens/s at an infinite rate) >= 2x llama-cpp-python's
  server and >= 3x transformers static batching.
- Batch-1 decode (1000 / mean TPOT of the latency workload) >= transformers', llama.cpp's as the
  target.
"""

from __future__ import annotations

from typing import Any

SERVING_GOALS = (("llama-cpp", 2.0), ("transformers", 3.0))
DECODE_GOALS = (("transformers", "goal"), ("llama-cpp", "target"))


def _targets(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in document["targets"]}


def _inf_throughput(target: dict[str, Any] | None) -> float | None:
    for run in (target or {}).get("serving") or []:
        if run["request_rate"] == "inf":
            return run["metrics"]["output_throughput"]
    return None


def _decode_rate(target: dict[str, Any] | None) -> float | None:
    latency = (target or {}).get("latency")
    return 1e3 / latency["mean_tpot_ms"] if latency and latency["mean_tpot_ms"] else None


def _verdict(ratio: float | None, needed: float) -> str:
    if ratio is None:
        return "not measured"
    return "✔ met" if ratio >= needed else f"✘ falls short ({ratio / needed:.0%} of the goal)"


def goals_table(document: dict[str, Any]) -> list[str]:
    targets = _targets(document)
    ferrite = targets.get("ferrite")
    rows = ["| goal | ferrite | peer | ferrite ÷ peer | verdict |", "| --- | --- | --- | --- | --- |"]
    ours = _inf_throughput(ferrite)
    for name, needed in SERVING_GOALS:
        theirs = _inf_throughput(targets.get(name))
        ratio = ours / theirs if ours and theirs else None
        rows.append(f"| serving output tokens/s ≥ {needed:g}× {name} | {ours or 0:.2f} | "
                    f"{theirs or 0:.2f} | "
                    f"{f'{ratio:.2f}×' if ratio else '—'} | {_verdict(ratio, needed)} |")
    ours = _decode_rate(ferrite)
    for name, kind in DECODE_GOALS:
        theirs = _decode_rate(targets.get(name))
        ratio = ours / theirs if ours and theirs else None
        rows.append(f"| batch-1 decode tokens/s ≥ {name} ({kind}) | {ours or 0:.2f} | {theirs or 0:.2f} | "
                    f"{f'{ratio:.2f}×' if ratio else '—'} | {_verdict(ratio, 1.0)} |")
    return rows
