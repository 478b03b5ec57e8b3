"""The newer families through the real launcher (issue 17, "Must show"): tiny random-weight
Qwen3, Gemma 2, Gemma 3, Phi-3 and Mixtral (4 experts, top-2) checkpoints with sliding windows
shorter than the prompts,
requests sent at once so the scheduler batches them; greedy float32 tokens equal transformers'
token for token and their logprobs are within 1e-4. Gemma 3 and Mixtral also under tensor
parallelism (2 shards, gloo), and Gemma 2 (window + soft-caps) with the Triton kernels (interpreter).

References tokenize with the checkpoint's tokenizer.json, as the router does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from text_generation import Client
from tokenizers import Tokenizer

from conftest import write_byte_level_tokenizer
from support.launcher import RunningFerrite, free_port, running_ferrite
from tests.support.hf_reference import greedy_reference, load_reference_model
from tests.support.tiny_models import TINY_SLIDING_WINDOW, TinyModelSpec, write_tiny_model

PROMPTS = (
    "Sliding windows",
    "Gemma alternates local and global attention layers.",
    "1 2 3 4 5 6 7 8 9",
    "A prompt much longer than the eight-token window of the tiny models' local layers.",
)
MAX_NEW_TOKENS = 10
LOGPROB_TOLERANCE = 1e-4
SMALL_LIMITS = (
    "--dtype", "float32",
    "--max-input-tokens", "112",
    "--max-total-tokens", "128",
    "--max-batch-prefill-tokens", "64",  # the longest prompt is prefilled in two chunks
    "--max-batch-total-tokens", "2048",
)
FAMILY_SEEDS = {"qwen3": 31, "gemma2": 32, "gemma3": 33, "phi3": 34, "mixtral": 35}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    dirs = {}
    for family, seed in FAMILY_SEEDS.items():
        spec = TinyModelSpec(family=family, seed=seed, tie_word_embeddings=family == "gemma3")
        dirs[family] = write_tiny_model(root / family, spec)  # type: ignore[arg-type]
        write_byte_level_tokenizer(dirs[family])
    return dirs


def served_batched(
    server: RunningFerrite, prompts: tuple[str, ...] = PROMPTS, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[tuple[list[int], list[float]]]:
    """Greedy token ids and logprobs of `prompts`, all sent at once (so they batch)."""
    client = Client(server.base_url, timeout=600)

    def generate(prompt: str) -> tuple[list[int], list[float]]:
        details = client.generate(prompt, max_new_tokens=max_new_tokens).details
        assert details is not None
        return [t.id for t in details.tokens], [t.logprob for t in details.tokens]

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(generate, prompts))


def serve(model_dir: Path, *flags: str, env: dict[str, str] | None = None) -> list[
    tuple[list[int], list[float]]
]:
    with running_ferrite(["--model-id", str(model_dir), *SMALL_LIMITS, *flags], env=env) as server:
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
        assert info["model_id"] == str(model_dir)
        return served_batched(server)


def assert_matches_transformers(
    model_dir: Path, served: list[tuple[list[int], list[float]]]
) -> None:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = load_reference_model(model_dir)
    longest_prompt = 0
    for prompt, (ids, logprobs) in zip(PROMPTS, served, strict=True):
        prompt_ids = tokenizer.encode(prompt).ids
        longest_prompt = max(longest_prompt, len(prompt_ids))
        reference = greedy_reference(model, prompt_ids, MAX_NEW_TOKENS, top_n=1)
        assert ids == reference.token_ids, prompt
        for got, want in zip(logprobs, reference.logprobs, strict=True):
            assert abs(got - want) <= LOGPROB_TOLERANCE, (prompt, got, want)
    assert longest_prompt > 4 * TINY_SLIDING_WINDOW  # windowed layers really drop keys


@pytest.mark.parametrize("family", list(FAMILY_SEEDS))
def test_family_matches_transformers_batched(family: str, family_dirs: dict[str, Path]) -> None:
    assert_matches_transformers(family_dirs[family], serve(family_dirs[family]))


@pytest.mark.parametrize("family", ["gemma3", "mixtral"])
def test_two_shards_match_transformers(family: str, family_dirs: dict[str, Path]) -> None:
    flags = ("--num-shard", "2", "--master-port", str(free_port()))
    assert_matches_transformers(family_dirs[family], serve(family_dirs[family], *flags))


def test_gemma2_with_triton_kernels_matches_transformers(family_dirs: dict[str, Path]) -> None:
    # Triton launches kernels on CPU tensors only through its interpreter.
    served = serve(
        family_dirs["gemma2"], "--attention-backend", "triton", env={"TRITON_INTERPRET": "1"}
    )
    assert_matches_transformers(family_dirs["gemma2"], served)
