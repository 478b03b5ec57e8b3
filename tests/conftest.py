"""Shared pytest fixtures for the fast test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrite_server.model_prep import ensure_default_model

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors + tokenizer (converted once, then cached)."""
    return ensure_default_model(MODEL_CACHE_DIR)
