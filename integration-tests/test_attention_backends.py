"""The Triton attention backend, end to end: served through the real launcher on the CPU (Triton's
interpreter), it must produce the same greedy tokens as the torch reference backend for requests
that run batched together (prefill chunks and decodes in the same steps)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from text_generation import Client

from support.launcher import RunningFerrite, running_ferrite

# Different lengths so the batch is ragged: prompts span several KV blocks and one request is
# still prefilling (chunked by the small prefill budget) while others decode.
PROMPTS = (
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps every sequence's keys and values in fixed-size blocks.",
    "1 2 3 4 5 6 7 8 9 10 11 12",
)
MAX_NEW_TOKENS = 6
# Small limits keep warm-up and every step cheap under the interpreter.
SMALL_LIMITS = (
    "--dtype", "float32",
    "--max-input-tokens", "96",
    "--max-total-tokens", "128",
    "--max-batch-prefill-tokens", "64",
    "--max-batch-total-tokens", "1024",
)


def greedy_ids_batched(server: RunningFerrite) -> list[list[int]]:
    """All prompts sent at once, so the scheduler batches them."""
    client = Client(server.base_url, timeout=600)

    def generate(prompt: str) -> list[int]:
        response = client.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, decoder_input_details=False)
        assert response.details is not None
        return [token.id for token in response.details.tokens]

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        return list(pool.map(generate, PROMPTS))


def served_with(backend: str, model_dir: Path) -> list[list[int]]:
    args = ["--model-id", str(model_dir), "--attention-backend", backend, *SMALL_LIMITS]
    # Triton launches its kernels on CPU tensors only through its interpreter.
    with running_ferrite(args, env={"TRITON_INTERPRET": "1"}) as server:
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
        assert info["attention_backend"] == backend
        return greedy_ids_batched(server)


def test_triton_backend_matches_torch_backend_on_a_batch(tiny_model_dir: Path) -> None:
    reference = served_with("torch", tiny_model_dir)
    triton = served_with("triton", tiny_model_dir)
    # Not vacuous: every request produced tokens and at least one ran to its length limit.
    assert all(reference) and max(len(ids) for ids in reference) == MAX_NEW_TOKENS
    assert triton == reference
