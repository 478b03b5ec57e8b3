"""Turning a model reference into a local directory the shard can load (config.json +
safetensors + tokenizer files). `default_model` converts the bundled SmolLM2 GGUF once."""

from ferrite_server.model_prep.default_model import (
    DEFAULT_MODEL_DIR_NAME,
    DefaultModelError,
    ensure_default_model,
)

__all__ = ["DEFAULT_MODEL_DIR_NAME", "DefaultModelError", "ensure_default_model"]
