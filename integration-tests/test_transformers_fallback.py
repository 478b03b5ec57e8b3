"""Architectures with no ferrite model file, served through the real launcher by the
transformers fallback (issue 17, "Must show"): tiny random-weight GPT-NeoX and StableLM, all
prompts sent at once so they batch; greedy float32 tokens equal transformers', logprobs within
1e-4, and /info says the model runs on the "transformers" path (a native family: "native").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from conftest import write_byte_level_tokenizer
from support.launcher import running_ferrite
from test_model_families import SMALL_LIMITS, assert_matches_transformers, served_batched
from tests.support.tiny_models import TinyModelSpec, write_tiny_model


@pytest.mark.parametrize("family", ["gpt_neox", "stablelm"])
def test_fallback_serves_batched_and_matches_transformers(
    family: str, tmp_path: Path
) -> None:
    model_dir = write_tiny_model(tmp_path / family, TinyModelSpec(family=family, seed=51))  # type: ignore[arg-type]
    write_byte_level_tokenizer(model_dir)
    with running_ferrite(["--model-id", str(model_dir), *SMALL_LIMITS]) as server:
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
        assert info["model_implementation"] == "transformers"
        served = served_batched(server)
    assert_matches_transformers(model_dir, served)


def test_native_family_reports_native(tiny_model_dir: Path) -> None:
    with running_ferrite(["--model-id", str(tiny_model_dir), *SMALL_LIMITS]) as server:
        info = requests.get(f"{server.base_url}/info", timeout=30).json()
    assert info["model_implementation"] == "native"
