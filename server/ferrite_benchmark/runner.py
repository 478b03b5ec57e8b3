"""The serving run loop: send a workload to an HTTP server on an arrival schedule, at most
`max_concurrency` in flight, and collect what each request recorded.

Requests are launched on time whether or not earlier ones finished (an open-loop client: a slow
server builds a queue, as it would with real users); `max_concurrency` turns it into a bounded
pool. The run's duration is first send to last completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
from tqdm import tqdm

from ferrite_benchmark.arrivals import arrival_offsets_s
from ferrite_benchmark.backends import HttpBackend
from ferrite_benchmark.records import BenchRequest, RequestRecord

# No client-side limit on a request's lifetime: a saturated CPU server may take many minutes.
_SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)


@dataclass(frozen=True)
class RunSpec:
    request_rate: float  # requests/s, math.inf for all at once
    max_concurrency: int | None = None
    seed: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class RunResult:
    records: list[RequestRecord]
    duration_s: float


async def _run(backend: HttpBackend, requests: list[BenchRequest], spec: RunSpec) -> RunResult:
    offsets_s = arrival_offsets_s(len(requests), spec.request_rate, spec.seed)
    limit = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
    progress = tqdm(total=len(requests), disable=not spec.show_progress, unit="req",
                    desc=f"rate {spec.request_rate:g}/s")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=_SESSION_TIMEOUT) as session:

        async def one(request: BenchRequest) -> RequestRecord:
            async with limit if limit else contextlib.nullcontext():
                record = await backend.send(session, request)
            progress.update(1)
            return record

        start_s = time.perf_counter()
        tasks = []
        for request, offset_s in zip(requests, offsets_s):
            delay_s = start_s + offset_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(one(request)))
        records = list(await asyncio.gather(*tasks))
        duration_s = time.perf_counter() - start_s
    progress.close()
    return RunResult(records, duration_s)


def run_workload(backend: HttpBackend, requests: list[BenchRequest], spec: RunSpec) -> RunResult:
    """Run one workload to completion (blocking)."""
    return asyncio.run(_run(backend, requests, spec))
