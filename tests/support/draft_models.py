"""Draft models for speculative decoding tests and benchmarks: a checkpoint cut down to its
first decoder layers. It keeps the embedding, final norm, head and tokenizer, so it shares the
vocabulary exactly and its guesses are a cheap, rough version of the full model's.

    from tests.support.draft_models import write_truncated_model
    draft_dir = write_truncated_model(model_dir, tmp_path / "draft", num_layers=2)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

_LAYER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Everything a model directory carries besides config.json and its weights.
_COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt",
)


def write_truncated_model(source_dir: Path, draft_dir: Path, num_layers: int) -> Path:
    """Copy `source_dir` (config.json + safetensors) into `draft_dir` keeping only decoder
    layers 0 .. num_layers-1; returns draft_dir."""
    source_dir, draft_dir = Path(source_dir), Path(draft_dir)
    draft_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((source_dir / "config.json").read_text())
    if not 0 < num_layers <= config["num_hidden_layers"]:
        raise ValueError(f"num_layers {num_layers} of {config['num_hidden_layers']}")
    config["num_hidden_layers"] = num_layers
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"][:num_layers]
    (draft_dir / "config.json").write_text(json.dumps(config, indent=2))
    kept = {}
    for weights_file in sorted(source_dir.glob("*.safetensors")):
        for name, tensor in load_file(weights_file).items():
            match = _LAYER_NAME.search(name)
            if match is None or int(match.group(1)) < num_layers:
                kept[name] = tensor.contiguous()
    save_file(kept, draft_dir / "model.safetensors", metadata={"format": "pt"})
    for name in _COPIED_FILES:
        if (source_dir / name).is_file():
            shutil.copy(source_dir / name, draft_dir / name)
    return draft_dir
