"""Any GGUF file -> a servable directory: float32 safetensors + tokenizer + chat template, once.

`--model-id file.gguf`, or a directory / hub repo holding GGUF files (`--gguf-file NAME` picks
one; a lone one is taken), becomes `<cache_dir>/gguf/<stem>-<digest>`, where the digest covers
the file's resolved path, size and mtime, so a changed file is converted anew. transformers
(with `gguf`) reads the file: it builds the model of the GGUF's architecture with dequantized
weights, and the tokenizer and chat template from its metadata (`tokenizer.json` is written for
the router). The bundled model (default_model.py) and the GGUF packages take the same path.

Beside the weights, `ferrite_gguf.json` (gguf_source.py) records the GGUF's weight types, from
which the shard picks its default quantization (e.g. Q8_0 -> int8; the rule is there).

Why the details below:
- `save_pretrained` refuses while transformers' GGUF quantizer is attached, although the
  weights are already dense; detaching it first is safe (DESIGN.md "Facts found").
- Several processes may ask at once: `staging.build_once` locks, converts into a temporary
  sibling, marks it complete and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ferrite_server.model_prep.errors import InvalidModelError, ModelPrepError
from ferrite_server.model_prep.gguf_source import write_gguf_source
from ferrite_server.model_prep.staging import build_once

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
GGUF_SUBDIR = "gguf"
DIGEST_CHARS = 16


class GgufConversionError(ModelPrepError):
    """The GGUF file cannot be read or turned into a checkpoint (e.g. an architecture
    transformers cannot load from GGUF)."""


def gguf_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob(f"*{GGUF_SUFFIX}") if path.is_file())


def select_gguf(location: Path, gguf_file: str | None) -> Path:
    """The GGUF file `location` names: the file itself, or in a directory the one called
    `gguf_file` (or the only one)."""
    if location.is_file():
        if gguf_file is not None and location.name != gguf_file:
            raise InvalidModelError(f"--gguf-file {gguf_file} does not name {location}")
        return location
    if gguf_file is not None:
        chosen = location / gguf_file
        if not chosen.is_file():
            raise InvalidModelError(f"--gguf-file {gguf_file}: no such file in {location}")
        return chosen
    found = gguf_files(location)
    if len(found) != 1:
        names = ", ".join(path.name for path in found)
        raise InvalidModelError(
            f"{location} holds {len(found)} GGUF files ({names}); pick one with --gguf-file"
        )
    return found[0]


def converted_dir_for(gguf_path: Path, cache_dir: Path) -> Path:
    resolved = gguf_path.resolve()
    stat = resolved.stat()  # follows hub-cache symlinks to the blob
    key = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:DIGEST_CHARS]
    return cache_dir / GGUF_SUBDIR / f"{gguf_path.stem}-{digest}"


def prepare_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """The converted directory of `gguf_path` in the cache, converting it on first use."""
    target_dir = converted_dir_for(gguf_path, cache_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)

    def build(staging_dir: Path) -> None:
        logger.info("converting %s to safetensors in %s (once)", gguf_path, target_dir)
        convert_gguf(gguf_path, staging_dir)

    return build_once(target_dir, build)


def convert_gguf(gguf_path: Path, output_dir: Path, needs_chat_template: bool = False) -> None:
    """Dequantize the GGUF with transformers and save float32 safetensors + tokenizer + the
    GGUF's weight types (`needs_chat_template`: refuse a GGUF without one)."""
    # Heavy imports stay here: the CLI's other paths must not pay for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            source_dir, gguf_file=gguf_name, dtype=torch.float32
        )
    except (ValueError, KeyError, OSError, NotImplementedError) as error:
        raise GgufConversionError(f"transformers cannot load {gguf_path}: {error}") from error
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    if not (output_dir / "generation_config.json").is_file():
        model.generation_config.save_pretrained(output_dir)
    if needs_chat_template and not tokenizer.chat_template:
        raise GgufConversionError(f"{gguf_path} carries no chat template")
    if tokenizer.chat_template:
        _embed_chat_template(output_dir, tokenizer.chat_template)
    write_gguf_source(output_dir, gguf_path)
    _make_world_readable(output_dir)


def _embed_chat_template(output_dir: Path, chat_template: str) -> None:
    """Also put the chat template into tokenizer_config.json.

    transformers 5 writes it to chat_template.jinja only; readers that follow the older
    convention (TGI-style routers, older transformers) look for the `chat_template` key.
    """
    config_path = output_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = chat_template
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def _make_world_readable(output_dir: Path) -> None:
    # safetensors writes its file 0600; the model is shared by every process and user.
    for path in output_dir.iterdir():
        path.chmod(0o644)
