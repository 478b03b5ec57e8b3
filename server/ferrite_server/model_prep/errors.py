"""Typed failures of model preparation; the CLI turns each into one log line naming the model."""

from __future__ import annotations


class ModelPrepError(RuntimeError):
    """A model reference could not be turned into a servable local directory."""


class ModelNotFoundError(ModelPrepError):
    """The path does not exist, or the hub id is unknown / not cached while offline."""


class InvalidModelError(ModelPrepError):
    """The directory exists but is not a Hugging Face checkpoint (no config.json, no weights)."""


class ConversionError(ModelPrepError):
    """A `.bin` checkpoint could not be converted to safetensors."""
