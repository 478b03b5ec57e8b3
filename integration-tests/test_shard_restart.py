"""A shard killed with SIGKILL while requests stream is restarted by the launcher, and the
router replays its requests: every client gets its whole answer, identical to an uninterrupted
run, with no error; once the restart budget is spent the launcher exits naming the shard
(issue 20, "Must show")."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import requests
from text_generation import AsyncClient, Client

from support.launcher import running_ferrite

PROMPTS = [
    "The history of the printing press begins",
    "Explain how a compiler works, step by step.",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite fruit is",
]
MAX_NEW_TOKENS = 40
FLOAT32 = ["--dtype", "float32"]
RESTART_TIMEOUT_S = 300.0


def shard_pids(launcher_pid: int) -> list[int]:
    """The live `ferrite-server serve` processes under the launcher."""
    pids = []
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:  # gone, or a zombie not reaped yet
            continue
        if "serve" in command and any("ferrite" in part for part in command[:3]):
            pids.append(child.pid)
    return pids


def kill_shard(launcher_pid: int) -> int:
    (pid,) = shard_pids(launcher_pid)
    os.kill(pid, signal.SIGKILL)
    return pid


def metric(base_url: str, name: str) -> float:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")))


async def stream_text(client: AsyncClient, prompt: str, first_token: asyncio.Event | None = None) -> str:
    pieces = []
    async for response in client.generate_stream(prompt, max_new_tokens=MAX_NEW_TOKENS):
        if first_token is not None:
            first_token.set()
        if not response.token.special:
            pieces.append(response.token.text)
    return "".join(pieces)


def test_a_killed_shard_is_restarted_and_streams_continue_unchanged():
    with running_ferrite(FLOAT32) as server:
        client = Client(server.base_url, timeout=RESTART_TIMEOUT_S)
        expected = [client.generate(p, max_new_tokens=MAX_NEW_TOKENS).generated_text for p in PROMPTS]
        launcher_pid = server.process.pid

        async def run() -> tuple[list[str], str, int, int]:
            aclient = AsyncClient(server.base_url, timeout=RESTART_TIMEOUT_S)
            started = asyncio.Event()
            streams = [asyncio.create_task(stream_text(aclient, p, started)) for p in PROMPTS]
            await started.wait()
            await asyncio.sleep(0.5)  # a few tokens into every stream
            killed = kill_shard(launcher_pid)
            await asyncio.sleep(0.5)
            health = await asyncio.to_thread(requests.get, f"{server.base_url}/health", timeout=30)
            ninth = asyncio.create_task(aclient.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
            texts = await asyncio.gather(*streams)
            return texts, (await ninth).generated_text, health.status_code, killed

        texts, ninth_text, health_status, killed_pid = asyncio.run(run())
        assert texts == expected
        assert ninth_text == expected[0], "a request sent during the restart is served"
        assert health_status == 503, "unhealthy while the shard is down"
        assert server.process.poll() is None, "the launcher is still up"
        assert killed_pid not in shard_pids(launcher_pid)
        assert metric(server.base_url, "ferrite_shard_recoveries_total") == 1
        assert metric(server.base_url, "ferrite_replayed_requests_total") >= len(PROMPTS) - 1
        assert requests.get(f"{server.base_url}/health", timeout=60).status_code == 200


def test_a_shard_killed_during_a_prefill_is_replayed():
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 120)
    with running_ferrite(FLOAT32) as server:
        client = Client(server.base_url, timeout=RESTART_TIMEOUT_S)
        expected = client.generate(long_prompt, max_new_tokens=8).generated_text
        launcher_pid = server.process.pid

        async def run() -> str:
            aclient = AsyncClient(server.base_url, timeout=RESTART_TIMEOUT_S)
            # A prefix the server has not cached: the whole prompt is computed again.
            prompt = "Again: " + long_prompt
            task = asyncio.create_task(aclient.generate(prompt, max_new_tokens=8))
            await asyncio.sleep(0.3)  # the prefill is running
            kill_shard(launcher_pid)
            return (await task).generated_text

        interrupted = asyncio.run(run())
        # The reference comes after the restart (before, it would have cached the prompt).
        reference = client.generate("Again: " + long_prompt, max_new_tokens=8).generated_text
        assert interrupted == reference
        assert expected  # the server answered before the kill too
        assert metric(server.base_url, "ferrite_shard_recoveries_total") == 1


def test_after_the_restart_budget_the_launcher_exits_naming_the_shard():
    with running_ferrite([*FLOAT32, "--max-shard-restarts", "1"]) as server:
        launcher_pid = server.process.pid
        kill_shard(launcher_pid)
        # A request notices the dead shard, waits for the restart and is served.
        assert Client(server.base_url, timeout=RESTART_TIMEOUT_S).generate("Hello", max_new_tokens=2)
        assert metric(server.base_url, "ferrite_shard_recoveries_total") == 1
        kill_shard(launcher_pid)
        returncode = server.process.wait(timeout=RESTART_TIMEOUT_S)
        log = server.log()
    assert returncode != 0
    assert "shard-0" in log and "SIGKILL" in log and "restart budget" in log, log[-3000:]
