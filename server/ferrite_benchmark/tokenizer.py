"""The model's tokenizer, used to count prompt and answer lengths the way the server will.

Prompts are sent as text; their token counts (for dataset filtering, total-token throughput and
outputs that a server reports no count for) come from the same tokenizer the model uses. The
bundled default model's tokenizer is found through ferrite's own model preparation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

DEFAULT_MODEL_CACHE_DIR = Path("~/.cache/ferrite/models")


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...


def default_model_dir(cache_dir: Path = DEFAULT_MODEL_CACHE_DIR) -> Path:
    """The bundled SmolLM2 as a local checkpoint (converted once by ferrite's model prep)."""
    from ferrite_server.model_prep import ensure_default_model

    return ensure_default_model(cache_dir)


def load_tokenizer(path: Path | None) -> Any:
    """A Hugging Face tokenizer from a model directory (default: the bundled model's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or default_model_dir()))


def token_counter(tokenizer: Any) -> TokenCounter:
    """Number of tokens of a text, special tokens included as the tokenizer adds them."""

    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    return count
