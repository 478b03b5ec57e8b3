"""Prefix caching through the real launcher, shard and router on the bundled model, greedy
float32: outputs equal those of a server with caching off, a follow-up chat turn reuses the
previous turn's blocks, `n` candidates compute their prompt once, and memory pressure with a
shared prefix completes every request (issue 15, "Must show")."""

from __future__ import annotations

import asyncio

import pytest
import requests
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from text_generation import AsyncClient, Client

from support.launcher import running_ferrite

# A shared "system prompt" of about 120 tokens, then one question each.
SHARED_PREFIX = (
    "You are a helpful assistant for a small museum of natural history. The museum has three "
    "halls: the hall of minerals, with quartz, feldspar and a large amethyst geode; the hall of "
    "fossils, with a cast of a Tyrannosaurus skull, ammonites and trilobites; and the hall of "
    "living things, with beetles, butterflies and a model of a blue whale. Opening hours are "
    "nine to five, Tuesday to Sunday. Tickets cost eight euros, children under twelve go free. "
    "Answer each visitor briefly.\n"
)
QUESTIONS = [
    "Visitor: Where can I see the amethyst?\nAssistant:",
    "Visitor: Is the museum open on Monday?\nAssistant:",
    "Visitor: How much is a ticket for a child?\nAssistant:",
    "Visitor: What fossils are there?\nAssistant:",
    "Visitor: Is there a whale?\nAssistant:",
    "Visitor: When does the museum close?\nAssistant:",
]
MAX_NEW_TOKENS = 16
FLOAT32 = ["--dtype", "float32"]


def counters(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("ferrite_prefix_cache", "ferrite_prompt_tokens", "ferrite_kv_blocks"))
    }


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after[name] - before.get(name, 0.0)


def generate_all(base_url: str, prompts: list[str], concurrently: bool) -> list[str]:
    if not concurrently:
        client = Client(base_url, timeout=600)
        return [client.generate(p, max_new_tokens=MAX_NEW_TOKENS).generated_text for p in prompts]

    async def run() -> list[str]:
        client = AsyncClient(base_url, timeout=600)
        answers = await asyncio.gather(*(client.generate(p, max_new_tokens=MAX_NEW_TOKENS) for p in prompts))
        return [answer.generated_text for answer in answers]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def cached_server():
    with running_ferrite(FLOAT32) as server:
        yield server


@pytest.fixture(scope="module")
def uncached_answers() -> dict[str, str]:
    """Each prompt's greedy answer from a server with prefix caching off."""
    prompts = [SHARED_PREFIX + question for question in QUESTIONS]
    with running_ferrite([*FLOAT32, "--prefix-caching", "off"]) as server:
        answers = dict(zip(prompts, generate_all(server.base_url, prompts, concurrently=False)))
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
        assert info["prefix_caching"] is False
        assert counters(server.base_url)["ferrite_prefix_cache_hits_tokens_total"] == 0
    return answers


@pytest.mark.parametrize("concurrently", [False, True], ids=["one-after-another", "concurrent"])
def test_outputs_with_prefix_caching_equal_outputs_without(cached_server, uncached_answers, concurrently):
    prompts = list(uncached_answers)
    before = counters(cached_server.base_url)
    answers = generate_all(cached_server.base_url, prompts, concurrently)
    after = counters(cached_server.base_url)
    assert answers == list(uncached_answers.values())
    # The shared prefix spans several whole blocks: every request after the first reuses them.
    assert delta(before, after, "ferrite_prefix_cache_hits_tokens_total") >= 5 * 64
    assert requests.get(f"{cached_server.base_url}/info", timeout=30).json()["prefix_caching"] is True


def test_a_second_chat_turn_reuses_the_first_turns_blocks(cached_server):
    client = OpenAI(base_url=f"{cached_server.base_url}/v1", api_key="-")
    block_size = requests.get(f"{cached_server.base_url}/info", timeout=30).json()["kv_block_size"]
    first_messages = [{"role": "user", "content": "Describe a walk through a forest in autumn."}]
    first = client.chat.completions.create(model="any", messages=first_messages, max_tokens=48,
                                           temperature=0)
    answer = first.choices[0].message.content
    assert first.usage.completion_tokens >= 2 * block_size, answer
    before = counters(cached_server.base_url)
    second_messages = [*first_messages, {"role": "assistant", "content": answer},
                       {"role": "user", "content": "Now make it shorter."}]
    client.chat.completions.create(model="any", messages=second_messages, max_tokens=4, temperature=0)
    hits = delta(before, counters(cached_server.base_url), "ferrite_prefix_cache_hits_tokens_total")
    # Beyond the first turn's prompt blocks: the blocks of the answer were reused too.
    first_prompt_blocks_tokens = first.usage.prompt_tokens // block_size * block_size
    assert hits >= first_prompt_blocks_tokens + block_size, (hits, first.usage)


def test_n_candidates_compute_their_prompt_once(cached_server):
    client = OpenAI(base_url=f"{cached_server.base_url}/v1", api_key="-")
    block_size = requests.get(f"{cached_server.base_url}/info", timeout=30).json()["kv_block_size"]
    prompt = SHARED_PREFIX.replace("museum", "gallery") + "Visitor: What is there to see?\nAssistant:"
    before = counters(cached_server.base_url)
    completion = client.completions.create(model="any", prompt=prompt, n=4, max_tokens=6,
                                           temperature=1.0, seed=5)
    after = counters(cached_server.base_url)
    assert len(completion.choices) == 4
    num_prompt_tokens = completion.usage.prompt_tokens
    computed = delta(before, after, "ferrite_prompt_tokens_computed_total")
    # Once in full, then under one block each for the three others (their last partial block).
    assert num_prompt_tokens <= computed < num_prompt_tokens + 3 * block_size, (computed, num_prompt_tokens)
    hits = delta(before, after, "ferrite_prefix_cache_hits_tokens_total")
    assert hits == 3 * ((num_prompt_tokens - 1) // block_size * block_size)


def test_under_memory_pressure_32_requests_sharing_a_prefix_all_complete(uncached_answers):
    # About a dozen 16-token blocks of float32 KV: one or two requests at a time.
    tiny_kv = ["--kv-cache-memory", "9000000", "--max-input-tokens", "160", "--max-total-tokens", "192",
               "--max-batch-prefill-tokens", "192"]
    prompts = [list(uncached_answers)[index % len(QUESTIONS)] for index in range(32)]
    with running_ferrite([*FLOAT32, *tiny_kv]) as server:
        answers = generate_all(server.base_url, prompts, concurrently=True)
        after = counters(server.base_url)
    assert answers == [uncached_answers[prompt] for prompt in prompts]
    assert after["ferrite_kv_blocks_total"] < 32
    assert after["ferrite_kv_blocks_free"] == after["ferrite_kv_blocks_total"]
    assert after["ferrite_kv_blocks_used"] == 0
    assert after["ferrite_prefix_cache_hits_tokens_total"] > 0
