"""Overload, disconnects and deadlines through the real launcher on the tiny model: a burst of
10x `--max-concurrent-requests` gets only 200s and 429s and the KV cache is free afterwards;
200 streams dropped mid-way leak nothing; a request past its deadline gets 504 (generating)
or 408 (still queued, never computed), and a stream waiting in the queue is kept alive with
SSE comments (issue 20, "Must show")."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import requests

from support.launcher import running_ferrite
from support.metrics import metrics, wait_until_idle

MAX_CONCURRENT = 8


def generate_ok(base_url: str) -> None:
    response = requests.post(
        f"{base_url}/generate",
        json={"inputs": "still serving", "parameters": {"max_new_tokens": 8}},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["generated_text"] is not None


async def burst(base_url: str, num_requests: int) -> Counter:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(index: int) -> int:
            body = {"inputs": f"request {index}:", "parameters": {"max_new_tokens": 24}}
            async with session.post(f"{base_url}/generate", json=body) as response:
                payload = await response.json()
                if response.status == 429:
                    assert payload["error_type"] == "overloaded", payload
                return response.status

        return Counter(await asyncio.gather(*(one(index) for index in range(num_requests))))


def test_a_burst_of_ten_times_the_limit_gets_only_200_and_429(tiny_model_dir: Path) -> None:
    args = ["--model-id", str(tiny_model_dir), "--max-concurrent-requests", str(MAX_CONCURRENT),
            "--max-batch-size", "4"]
    with running_ferrite(args) as server:
        statuses = asyncio.run(burst(server.base_url, 10 * MAX_CONCURRENT))
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0, f"the burst never overloaded the server: {statuses}"
        assert statuses[200] >= 4, statuses
        after = wait_until_idle(server.base_url)
        assert after["ferrite_kv_blocks_free"] == after["ferrite_kv_blocks_total"]
        generate_ok(server.base_url)


async def open_and_drop_streams(base_url: str, num_streams: int) -> int:
    """Starts `num_streams` streams, reads each one's first event, then drops the connection."""
    timeout = aiohttp.ClientTimeout(total=300)
    # One connection per stream: closing a response then really closes its socket.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(index: int) -> bool:
            body = {"inputs": f"stream {index}:", "parameters": {"max_new_tokens": 200}}
            response = await session.post(f"{base_url}/generate_stream", json=body)
            assert response.status == 200, await response.text()
            first = await response.content.readline()
            response.close()
            return first.startswith(b"data:")

        return sum(await asyncio.gather(*(one(index) for index in range(num_streams))))


def test_two_hundred_clients_dropping_their_streams_leak_nothing(tiny_model_dir: Path) -> None:
    args = ["--model-id", str(tiny_model_dir), "--max-concurrent-requests", "256",
            "--max-batch-size", "64"]
    with running_ferrite(args) as server:
        before = metrics(server.base_url)
        assert asyncio.run(open_and_drop_streams(server.base_url, 200)) == 200
        after = wait_until_idle(server.base_url)
        assert after["ferrite_kv_blocks_free"] == after["ferrite_kv_blocks_total"]
        # Dropped streams stopped early: far fewer steps than 200 tokens each would need.
        steps = after["ferrite_scheduler_steps_total"] - before["ferrite_scheduler_steps_total"]
        assert steps < 200 * 200 / 64, steps
        generate_ok(server.base_url)


def test_deadlines_end_requests_with_408_or_504_and_free_their_blocks(tiny_model_dir: Path) -> None:
    # One request at a time, so later ones wait in the queue behind the first.
    args = ["--model-id", str(tiny_model_dir), "--max-batch-size", "1", "--stream-keep-alive-s", "0.1",
            "--request-timeout-s", "600"]
    with running_ferrite(args) as server:
        url = server.base_url
        long_body = {"inputs": "a long answer:", "parameters": {"max_new_tokens": 240}}
        # How long one long request takes here sets the budgets below (the CPU varies).
        started = time.monotonic()
        untimed = requests.post(f"{url}/generate", json=long_body, timeout=120)
        long_request_s = time.monotonic() - started
        assert untimed.status_code == 200, untimed.text

        timed_out = requests.post(f"{url}/generate", json=long_body,
                                  headers={"x-request-timeout-s": f"{long_request_s / 10:.3f}"}, timeout=120)
        assert timed_out.status_code == 504, timed_out.text
        assert timed_out.json()["error_type"] == "timeout"
        wait_until_idle(url)

        with requests.Session() as first, requests.Session() as second:
            # Two long requests hold the only batch slot, one after the other...
            blockers = [session.post(f"{url}/generate_stream", json=long_body, stream=True, timeout=120)
                        for session in (first, second)]
            before = metrics(url)
            # ...so this one waits in the queue until its budget is gone, never computed.
            queued = requests.post(
                f"{url}/generate", json={"inputs": "queued", "parameters": {"max_new_tokens": 4}},
                headers={"x-request-timeout-s": f"{long_request_s / 2:.3f}"}, timeout=120,
            )
            after = metrics(url)
            # And a stream waiting behind them starts with keep-alive comments.
            waiting = requests.post(
                f"{url}/generate_stream", json={"inputs": "waiting", "parameters": {"max_new_tokens": 4}},
                stream=True, timeout=120,
            )
            first_line = next(waiting.iter_lines())
            waiting.close()
            for blocker in blockers:
                assert blocker.status_code == 200
                blocker.close()
        assert queued.status_code == 408, queued.text
        assert queued.json()["error_type"] == "timeout"
        computed = after["ferrite_prompt_tokens_computed_total"] - before["ferrite_prompt_tokens_computed_total"]
        assert computed == 0, f"the queued request reached the shard ({computed} prompt tokens)"
        assert waiting.status_code == 200
        assert first_line == b": keep-alive", first_line
        wait_until_idle(url)
        generate_ok(url)
