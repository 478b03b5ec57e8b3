"""Multi-LoRA through the real launcher, router and shard (issue 19, "Must show"), float32 on
the bundled model: two PEFT adapters written by `peft` with non-zero random weights, and the
base model, asked for the same prompts all at once (so they share steps), twice (the second
round starts from the prefix cache, which must keep each adapter's KV apart). Every answer
equals its own greedy reference: transformers + PEFT for an adapter, transformers for the base
model. Clients: `huggingface_hub.InferenceClient` (TGI's adapter_id) and `openai` (model).
Adapters ferrite cannot serve stop the launcher with a message naming the adapter."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from huggingface_hub import InferenceClient
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from ferrite_server.model_prep import ensure_default_model
from support.launcher import running_ferrite
from tests.support.hf_reference import greedy_reference, load_reference_model
from tests.support.lora_adapters import AdapterSpec, load_peft_reference, write_peft_adapter
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()
ADAPTERS = {
    "math": AdapterSpec(seed=31, rank=8),
    "code": AdapterSpec(seed=32, rank=16, alpha=8.0, use_rslora=True,
                        targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")),
}
# Longer than one KV block (16 tokens), so the prefix cache holds whole blocks of each.
PROMPTS = (
    "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz",
    "Write a short poem about the sea, the wind and the small boats that leave the harbour at dawn:",
    "Question: what are the three states of water, and at what temperatures does it change? Answer:",
)
MAX_NEW_TOKENS = 12
LIMITS = ("--dtype", "float32", "--max-input-tokens", "256", "--max-total-tokens", "512")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model(MODEL_CACHE_DIR)


@pytest.fixture(scope="module")
def adapter_dirs(model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: write_peft_adapter(model_dir, root / name, spec) for name, spec in ADAPTERS.items()}


@pytest.fixture(scope="module")
def references(model_dir, adapter_dirs) -> dict[tuple[str, str], list[int]]:
    """(adapter, prompt) -> greedy token ids; adapter "" is the base model."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    models = {"": load_reference_model(model_dir)}
    models.update({name: load_peft_reference(model_dir, path) for name, path in adapter_dirs.items()})
    return {
        (adapter, prompt): greedy_reference(model, tokenizer.encode(prompt).ids, MAX_NEW_TOKENS, 1).token_ids
        for adapter, model in models.items()
        for prompt in PROMPTS
    }


@pytest.fixture(scope="module")
def server(model_dir, adapter_dirs):
    adapters = ",".join(f"{name}={path}" for name, path in adapter_dirs.items())
    with running_ferrite(["--model-id", str(model_dir), *LIMITS, "--lora-adapters", adapters]) as running:
        yield running


def all_at_once(server, cases: list[tuple[str, str]]) -> list[list[int]]:
    """Greedy token ids of every (adapter, prompt), all sent at once through TGI's API."""
    client = InferenceClient(server.base_url, timeout=600)

    def generate(case: tuple[str, str]) -> list[int]:
        adapter, prompt = case
        output = client.text_generation(
            prompt, max_new_tokens=MAX_NEW_TOKENS, details=True, adapter_id=adapter or None
        )
        return [token.id for token in output.details.tokens]

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        return list(pool.map(generate, cases))


def counter(server, name: str) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


def test_adapters_and_the_base_model_share_batches_and_match_their_references(server, references) -> None:
    cases = [(adapter, prompt) for prompt in PROMPTS for adapter in ("", "math", "code")]
    for round_index in range(2):  # the second round reuses the cached prefixes
        steps_before = counter(server, "ferrite_scheduler_steps_total")
        served = all_at_once(server, cases)
        for case, token_ids in zip(cases, served, strict=True):
            assert token_ids == references[case], f"round {round_index}: {case}"
        # Nine requests of 12 tokens in far fewer steps than 9 x 12: they ran together.
        assert counter(server, "ferrite_scheduler_steps_total") - steps_before < 4 * MAX_NEW_TOKENS
    assert counter(server, "ferrite_prefix_cache_hits_tokens_total") > 0
    # The adapters change the answers (else the test would show nothing).
    assert len({tuple(references[(adapter, PROMPTS[0])]) for adapter in ("", "math", "code")}) == 3


def test_openai_model_names_an_adapter(server, references, model_dir) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=300, max_retries=0)
    assert [model.id for model in client.models.list().data][1:] == ["math", "code"]
    for adapter in ("math", "code"):
        completion = client.completions.create(
            model=adapter, prompt=PROMPTS[1], max_tokens=MAX_NEW_TOKENS, temperature=0
        )
        assert completion.model == adapter
        assert completion.choices[0].text == tokenizer.decode(references[(adapter, PROMPTS[1])])
    with pytest.raises(openai.UnprocessableEntityError, match="`math`, `code`"):
        client.completions.create(model="maths", prompt="Hi", max_tokens=2)


def test_an_unknown_adapter_id_is_a_422_naming_the_loaded_ones(server) -> None:
    response = requests.post(f"{server.base_url}/generate", timeout=60, json={
        "inputs": "Hi", "parameters": {"max_new_tokens": 2, "adapter_id": "physics"}})
    assert response.status_code == 422
    assert "`physics`" in response.json()["error"] and "`math`, `code`" in response.json()["error"]
    info = requests.get(f"{server.base_url}/info", timeout=30).json()
    assert info["lora_adapters"] == ["math", "code"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TinyModelSpec(seed=5))


def start_up_failure(flags: list[str]) -> str:
    """The launcher's log after it refused to start; fails unless it exited non-zero."""
    with running_ferrite(flags, wait=False) as launcher:
        returncode = launcher.process.wait(timeout=300)
        log = launcher.log()
    assert returncode != 0, log[-3000:]
    return log


def test_adapters_that_cannot_be_served_stop_the_start_naming_them(tiny_model, tmp_path) -> None:
    base = ["--model-id", str(tiny_model), "--dtype", "float32"]
    missing = start_up_failure([*base, "--lora-adapters", f"gone={tmp_path}/no/such/adapter"])
    assert 'adapter "gone"' in missing and "no such file or directory" in missing
    (tmp_path / "empty").mkdir()
    empty = start_up_failure([*base, "--lora-adapters", f"hollow={tmp_path / 'empty'}"])
    assert "LoRA adapter 'hollow'" in empty and "adapter_config.json" in empty
    big = write_peft_adapter(tiny_model, tmp_path / "big", AdapterSpec(seed=1, rank=32))
    too_big = start_up_failure([*base, "--lora-adapters", f"big={big}", "--max-lora-rank", "16"])
    assert "LoRA adapter 'big'" in too_big and "rank 32" in too_big and "--max-lora-rank 16" in too_big
    head = write_peft_adapter(tiny_model, tmp_path / "head", AdapterSpec(seed=2, targets=("q_proj", "lm_head")))
    unsupported = start_up_failure([*base, "--lora-adapters", f"head={head}"])
    assert "LoRA adapter 'head'" in unsupported and "'lm_head', which ferrite cannot apply" in unsupported
