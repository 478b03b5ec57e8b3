"""`ferrite-benchmark latency`: the classic single-user test.

Nine fixed prompts (coding, literature, math), greedy, `max_new_tokens` each (200), one at a
time after one warm-up request; reports tokens/s (generated tokens / generation time) and time
per request, with TTFT and TPOT. A target is anything that turns one request into a record: an
HTTP server (through a backend) or an in-process peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from ferrite_benchmark.backends import HttpBackend
from ferrite_benchmark.latency_prompts import LATENCY_PROMPTS
from ferrite_benchmark.records import BenchRequest, RequestRecord
from ferrite_benchmark.tokenizer import TokenCounter

DEFAULT_MAX_NEW_TOKENS = 200

LatencyTarget = Callable[[BenchRequest], RequestRecord]


@dataclass(frozen=True)
class LatencySummary:
    num_requests: int
    total_output_tokens: int
    total_time_s: float
    tokens_per_s: float
    mean_request_s: float
    mean_ttft_ms: float
    mean_tpot_ms: float
    requests: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def latency_requests(count_tokens: TokenCounter, max_new_tokens: int) -> list[BenchRequest]:
    return [BenchRequest(prompt, count_tokens(prompt), max_new_tokens) for _, prompt in LATENCY_PROMPTS]


def http_target(backend: HttpBackend) -> LatencyTarget:
    """One request at a time to a server, each over a fresh connection pool."""

    async def one(request: BenchRequest) -> RequestRecord:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            return await backend.send(session, request)

    return lambda request: asyncio.run(one(request))


def summarize(records: Sequence[RequestRecord], categories: Sequence[str]) -> LatencySummary:
    failed = [r.error for r in records if not r.success]
    if failed:
        raise RuntimeError(f"{len(failed)} latency requests failed, first: {failed[0]}")
    total_tokens = sum(r.output_tokens for r in records)
    total_time_s = sum(r.e2e_latency_s for r in records)
    tpots = [r.tpot_s for r in records if r.tpot_s is not None]
    per_request = [
        {"category": category, "prompt_tokens": r.prompt_len, "output_tokens": r.output_tokens,
         "time_s": r.e2e_latency_s, "ttft_ms": r.ttft_s * 1e3,
         "tokens_per_s": r.output_tokens / r.e2e_latency_s}
        for category, r in zip(categories, records)
    ]
    return LatencySummary(
        num_requests=len(records),
        total_output_tokens=total_tokens,
        total_time_s=total_time_s,
        tokens_per_s=total_tokens / total_time_s,
        mean_request_s=total_time_s / len(records),
        mean_ttft_ms=1e3 * sum(r.ttft_s for r in records) / len(records),
        mean_tpot_ms=1e3 * sum(tpots) / len(tpots) if tpots else 0.0,
        requests=per_request,
    )


def run_latency(target: LatencyTarget, count_tokens: TokenCounter,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> LatencySummary:
    requests = latency_requests(count_tokens, max_new_tokens)
    target(requests[0])  # warm-up: caches, lazy initialization, first-call compilation
    records = [target(request) for request in requests]
    return summarize(records, [category for category, _ in LATENCY_PROMPTS])


def latency_text(title: str, summary: LatencySummary) -> str:
    return (f"== {title} ==\n"
            f"{summary.num_requests} requests, {summary.total_output_tokens} tokens in "
            f"{summary.total_time_s:.2f} s: {summary.tokens_per_s:.2f} tokens/s, "
            f"{summary.mean_request_s:.2f} s per request, TTFT {summary.mean_ttft_ms:.1f} ms, "
            f"TPOT {summary.mean_tpot_ms:.1f} ms")
