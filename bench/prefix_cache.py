"""Prefix caching on the bundled model, side by side in one run (issue 15 "Measure").

    python bench/prefix_cache.py [--output bench/results-prefix-cache-cpu.json]

Two servers run at once on the same model, one with `--prefix-caching on`, one `off`; the
workloads go to one after the other, so both see the same machine state:
1. TTFT of a request whose ~2,000-token prefix is cached against the same-length request cold
   (caching on; each trial uses a fresh prefix: cold = its first use, warm = the second).
2. The cost at a 0% hit rate: unique prompts (nothing shared), output tokens/s on vs off.
3. ShareGPT multi-turn: conversations run concurrently, each conversation's turns in order
   (the history carries the dataset's own answers); output tokens/s and TTFT p50 on vs off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import requests
from openai import AsyncOpenAI
from text_generation import AsyncClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))
from support.launcher import running_ferrite  # noqa: E402

from machine import cpu_model  # noqa: E402

from ferrite_benchmark.sharegpt import bundled_dataset_path, parse_entries  # noqa: E402

LIMITS = ["--dtype", "float32", "--max-input-tokens", "2400", "--max-total-tokens", "2500",
          "--max-batch-prefill-tokens", "2500"]
WORDS = ("river stone lantern orchard copper meadow harbor violet thunder pepper glacier "
         "saddle marble cedar falcon ember quilt walnut canyon").split()


def random_text(num_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def time_to_first_token_s(base_url: str, prompt: str) -> float:
    """A one-token /generate: its latency is the prefill (TTFT) plus one HTTP round trip."""
    started = time.perf_counter()
    answer = requests.post(f"{base_url}/generate", timeout=600,
                           json={"inputs": prompt, "parameters": {"max_new_tokens": 1}})
    answer.raise_for_status()
    return time.perf_counter() - started


def cached_against_cold(base_url: str, num_trials: int) -> dict[str, object]:
    cold, warm = [], []
    for trial in range(num_trials):
        prefix = random_text(1900, seed=1000 + trial)  # ~2,000 tokens with the bundled tokenizer
        cold.append(time_to_first_token_s(base_url, prefix + " Question one?"))
        warm.append(time_to_first_token_s(base_url, prefix + " Question two?"))
    return {"cold_ttft_s": cold, "cached_ttft_s": warm,
            "speedup_median": statistics.median(c / w for c, w in zip(cold, warm))}


async def run_chat(client: AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, int]:
    """(TTFT s, output tokens) of one streamed chat request."""
    started = time.perf_counter()
    ttft_s, num_tokens = None, 0
    stream = await client.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens,
                                                  temperature=0, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft_s = ttft_s if ttft_s is not None else time.perf_counter() - started
            num_tokens += 1  # one SSE event per token
    return (ttft_s if ttft_s is not None else time.perf_counter() - started), num_tokens


async def unique_prompts(base_url: str, num_requests: int, concurrency: int, run: int) -> dict[str, float]:
    """TGI's /generate (no chat template, whose default system prompt every chat shares);
    `run` makes every run's prompts new, so a repeat finds nothing cached either."""
    client = AsyncClient(base_url, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> int:
        async with gate:  # distinct first words: no two prompts share a block
            text = f"{run} {index} {WORDS[index % len(WORDS)]} " + random_text(150, seed=index + 1000 * run)
            answer = await client.generate(text, max_new_tokens=32, decoder_input_details=False)
            return answer.details.generated_tokens

    hits_before = hit_tokens(base_url)
    started = time.perf_counter()
    num_tokens = await asyncio.gather(*(one(index) for index in range(num_requests)))
    return {"output_tokens_per_s": sum(num_tokens) / (time.perf_counter() - started),
            "hit_tokens": hit_tokens(base_url) - hits_before}


def multi_turn_conversations(num_conversations: int, num_turns: int) -> list[list[tuple[str, str]]]:
    entries, _ = parse_entries(bundled_dataset_path().read_text(encoding="utf-8"))
    chosen = []
    for entry in entries:
        turns = entry.get("conversations", [])
        pairs = [(turns[i]["value"][:600], turns[i + 1]["value"][:600]) for i in range(0, len(turns) - 1, 2)
                 if turns[i].get("from") == "human" and turns[i + 1].get("from") == "gpt"]
        if len(pairs) >= num_turns and all(human and answer for human, answer in pairs[:num_turns]):
            chosen.append(pairs[:num_turns])
        if len(chosen) == num_conversations:
            return chosen
    raise RuntimeError("not enough multi-turn conversations")


async def multi_turn(base_url: str, conversations: list[list[tuple[str, str]]]) -> dict[str, float]:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-")

    async def conversation(pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        messages: list[dict[str, str]] = []
        results = []
        for human, reference_answer in pairs:
            messages.append({"role": "user", "content": human})
            results.append(await run_chat(client, list(messages), 32))
            messages.append({"role": "assistant", "content": reference_answer})
        return results

    started = time.perf_counter()
    per_conversation = await asyncio.gather(*(conversation(pairs) for pairs in conversations))
    wall_s = time.perf_counter() - started
    results = [result for results in per_conversation for result in results]
    return {"output_tokens_per_s": sum(n for _, n in results) / wall_s,
            "ttft_p50_s": statistics.median(t for t, _ in results)}


def hit_tokens(base_url: str) -> float:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    line = next(line for line in text.splitlines() if line.startswith("ferrite_prefix_cache_hits_tokens_total "))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("bench/results-prefix-cache-cpu.json"))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="on/off alternations per workload")
    args = parser.parse_args()
    # Each repeat gets its own conversations (a second pass over the same ones would hit the
    # cache of the first).
    conversations = multi_turn_conversations(num_conversations=8 * args.repeats, num_turns=3)
    report: dict[str, object] = {"cpu": cpu_model(), "python": platform.python_version(),
                                 "command": "python bench/prefix_cache.py"}
    with running_ferrite([*LIMITS, "--prefix-caching", "on"]) as on, \
            running_ferrite([*LIMITS, "--prefix-caching", "off"]) as off:
        servers = {"on": on.base_url, "off": off.base_url}
        time_to_first_token_s(on.base_url, "warm up")
        time_to_first_token_s(off.base_url, "warm up")
        report["cached_vs_cold"] = cached_against_cold(on.base_url, args.trials)
        for name, workload in (("zero_hit_rate", lambda url, run: unique_prompts(url, 32, 8, run)),
                               ("sharegpt_multi_turn", lambda url, run: multi_turn(url, conversations[8 * run:8 * (run + 1)]))):
            runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            for repeat in range(args.repeats):
                for label in ("on", "off"):
                    runs[label].append(asyncio.run(workload(servers[label], repeat)))
            report[name] = {label: {key: statistics.mean(run[key] for run in label_runs) for key in label_runs[0]}
                            for label, label_runs in runs.items()}
            report[name]["throughput_on_over_off"] = (report[name]["on"]["output_tokens_per_s"]
                                                      / report[name]["off"]["output_tokens_per_s"])
        report["hit_tokens_on_server"] = hit_tokens(on.base_url)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
