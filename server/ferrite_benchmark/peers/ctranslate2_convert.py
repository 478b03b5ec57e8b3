"""Converting a Hugging Face checkpoint to ctranslate2's format, once, into a cache directory.

ctranslate2 runs only its own model format; `TransformersConverter` reads the same safetensors
checkpoint ferrite serves and writes `model.bin` + vocabulary at the chosen quantization. The
result is cached by source name and quantization; a conversion goes to a temporary sibling
and is renamed into place, so an interrupted one is never mistaken for a finished one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MARKER_FILE = ".ferrite-complete"


def converted_dir(model_dir: Path, cache_dir: Path, quantization: str) -> Path:
    return cache_dir.expanduser() / f"{model_dir.name}-ct2-{quantization}"


def ensure_ctranslate2_model(model_dir: Path, cache_dir: Path, quantization: str) -> Path:
    """The converted model directory, converting on first use."""
    target = converted_dir(model_dir, cache_dir, quantization)
    if (target / MARKER_FILE).is_file():
        return target
    from ctranslate2.converters import TransformersConverter

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        TransformersConverter(str(model_dir)).convert(str(staging / "model"), quantization=quantization)
        (staging / "model" / MARKER_FILE).touch()
        shutil.rmtree(target, ignore_errors=True)
        (staging / "model").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
