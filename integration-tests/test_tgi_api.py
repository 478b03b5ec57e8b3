"""The router's TGI API through the real launcher, shard and router, driven by Hugging Face's
`text-generation` client (issue 3, "Must show")."""

from __future__ import annotations

import asyncio
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from text_generation import AsyncClient, Client

from support.launcher import running_ferrite

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite fruit is",
    "Translate to French: Good morning ->",
    "1, 2, 3, 4,",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def fp32_server():
    with running_ferrite(["--dtype", "float32"]) as server:
        yield server


@pytest.fixture(scope="module")
def client(fp32_server) -> Client:
    return Client(fp32_server.base_url, timeout=300)


@pytest.fixture(scope="module")
def solo_answers(client) -> dict[str, str]:
    """Each prompt's greedy answer when it runs alone: the reference for batched runs."""
    return {p: client.generate(p, max_new_tokens=MAX_NEW_TOKENS).generated_text for p in PROMPTS}


def kv_gauges(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ferrite_kv_blocks") and family.samples
    }


def test_generate_equals_concatenated_stream_and_details_are_consistent(client):
    response = client.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
    streamed = list(client.generate_stream(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
    assert "Paris" in response.generated_text
    assert "".join(r.token.text for r in streamed) == response.generated_text
    assert streamed[-1].generated_text == response.generated_text
    assert all(r.generated_text is None for r in streamed[:-1])
    details = response.details
    assert details.generated_tokens == len(details.tokens) == len(streamed)
    assert [t.id for t in details.tokens] == [r.token.id for r in streamed]
    assert "".join(t.text for t in details.tokens) == response.generated_text
    assert all(t.logprob <= 0.0 for t in details.tokens)
    assert details.finish_reason in ("length", "eos_token")


def test_stop_sequence_ends_generated_text(client, solo_answers):
    full = solo_answers[PROMPTS[2]]
    words = full.split()
    assert len(words) >= 3, full
    stop = words[1]
    response = client.generate(PROMPTS[2], max_new_tokens=MAX_NEW_TOKENS, stop_sequences=[stop])
    cut = full.index(stop) + len(stop)
    assert response.generated_text == full[:cut]
    assert response.details.finish_reason == "stop_sequence"


def test_seeded_sampling_is_reproducible_even_with_other_requests_in_the_batch(fp32_server):
    async def run() -> tuple[str, str, list[str]]:
        aclient = AsyncClient(fp32_server.base_url, timeout=300)
        kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.0, seed=1234)
        alone = (await aclient.generate(PROMPTS[3], **kwargs)).generated_text
        noise = [aclient.generate(p, max_new_tokens=16, do_sample=True) for p in PROMPTS]
        batched, *others = await asyncio.gather(aclient.generate(PROMPTS[3], **kwargs), *noise)
        return alone, batched.generated_text, [o.generated_text for o in others]

    alone, batched, _ = asyncio.run(run())
    assert alone == batched


def test_64_concurrent_requests_all_correct(fp32_server, solo_answers):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]

    async def run() -> list[str]:
        aclient = AsyncClient(fp32_server.base_url, timeout=600)
        responses = await asyncio.gather(*(aclient.generate(p, max_new_tokens=MAX_NEW_TOKENS) for p in prompts))
        return [r.generated_text for r in responses]

    answers = asyncio.run(run())
    assert answers == [solo_answers[p] for p in prompts]


def test_client_disconnect_mid_stream_frees_its_blocks(fp32_server, client):
    idle = kv_gauges(fp32_server.base_url)
    assert idle["ferrite_kv_blocks_used"] == 0
    with requests.post(
        f"{fp32_server.base_url}/generate_stream",
        json={"inputs": PROMPTS[7], "parameters": {"max_new_tokens": 400}},
        stream=True,
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        events = [line for line in (next(lines) for _ in range(6)) if line.startswith(b"data:")]
        assert events
    # the next request is served, and the abandoned one's blocks come back
    assert client.generate(PROMPTS[0], max_new_tokens=4).generated_text
    deadline = time.monotonic() + 30
    while kv_gauges(fp32_server.base_url)["ferrite_kv_blocks_used"] != 0:
        assert time.monotonic() < deadline, kv_gauges(fp32_server.base_url)
        time.sleep(0.2)


def test_tiny_kv_capacity_still_completes_32_concurrent_requests(solo_answers):
    # about a dozen 16-token blocks of float32 KV: far less than 32 requests need at once
    tiny_kv = ["--kv-cache-memory", "9000000", "--max-input-tokens", "64",
               "--max-total-tokens", "128", "--max-batch-prefill-tokens", "128"]
    with running_ferrite(["--dtype", "float32", *tiny_kv]) as server:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]

        async def run() -> list[str]:
            aclient = AsyncClient(server.base_url, timeout=600)
            responses = await asyncio.gather(*(aclient.generate(p, max_new_tokens=MAX_NEW_TOKENS) for p in prompts))
            return [r.generated_text for r in responses]

        answers = asyncio.run(run())
        gauges = kv_gauges(server.base_url)
        metrics_text = requests.get(f"{server.base_url}/metrics", timeout=10).text
    assert answers == [solo_answers[p] for p in prompts]
    assert gauges["ferrite_kv_blocks_total"] < 32
    assert gauges["ferrite_kv_blocks_used"] == 0
    preemptions = [
        s.value for f in text_string_to_metric_families(metrics_text)
        for s in f.samples if s.name == "ferrite_preemptions_total"
    ]
    assert preemptions and preemptions[0] > 0
