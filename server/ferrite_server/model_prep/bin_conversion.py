"""Converting a PyTorch `.bin` checkpoint to safetensors, once, into a cache directory.

The shard loads only safetensors (memory-mapped, no pickle). Older checkpoints ship
`pytorch_model.bin` or `pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json`.
The source directory is never written to (it may be a read-only mount or a hub snapshot); the
converted copy lives under `<cache_dir>/converted/<name>-<digest>`, where the digest covers the
source path and each weight file's size and mtime, so a changed checkpoint is converted anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ferrite_server.model_prep.errors import ConversionError
from ferrite_server.model_prep.staging import build_once

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BIN_GLOB = "pytorch_model*.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
CONVERTED_SUBDIR = "converted"
DIGEST_CHARS = 16
# Files that are weights in some other format: never copied next to the converted weights.
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".safetensors")


def bin_weight_files(model_dir: Path) -> list[Path]:
    """The `.bin` weight files to convert: none when the directory already has safetensors."""
    if any(model_dir.glob("*.safetensors")):
        return []
    index_path = model_dir / BIN_INDEX_NAME
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob(BIN_GLOB))


def converted_dir_for(model_dir: Path, bin_files: list[Path], cache_dir: Path) -> Path:
    hasher = hashlib.sha256(str(model_dir.resolve()).encode())
    for path in bin_files:
        stat = path.stat()  # follows hub-cache symlinks to the blob
        hasher.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest = hasher.hexdigest()[:DIGEST_CHARS]
    return cache_dir / CONVERTED_SUBDIR / f"{model_dir.resolve().name}-{digest}"


def convert_bin_checkpoint(model_dir: Path, cache_dir: Path) -> Path:
    """Return a directory with `model_dir`'s files and its `.bin` weights as safetensors."""
    bin_files = bin_weight_files(model_dir)
    if not bin_files:
        raise ConversionError(f"{model_dir} has no {BIN_GLOB} files to convert")
    target_dir = converted_dir_for(model_dir, bin_files, cache_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)

    def build(staging_dir: Path) -> None:
        logger.info(
            "converting %d .bin file(s) of %s to safetensors in %s (once)",
            len(bin_files), model_dir, target_dir,
        )
        _copy_side_files(model_dir, staging_dir)
        weight_map: dict[str, str] = {}
        total_size_bytes = 0
        for index, bin_path in enumerate(bin_files, start=1):
            output_name = safetensors_name(bin_path.name)
            logger.info("converting %s (%d of %d)", bin_path.name, index, len(bin_files))
            names, size_bytes = _convert_file(bin_path, staging_dir / output_name)
            weight_map.update(dict.fromkeys(names, output_name))
            total_size_bytes += size_bytes
        if len(bin_files) > 1:
            index = {"metadata": {"total_size": total_size_bytes}, "weight_map": weight_map}
            (staging_dir / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    return build_once(target_dir, build)


def safetensors_name(bin_name: str) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors"""
    stem = bin_name.removesuffix(".bin").replace("pytorch_model", "model", 1)
    return f"{stem}.safetensors"


def _copy_side_files(model_dir: Path, staging_dir: Path) -> None:
    """Config, tokenizer and generation files travel with the weights (top level only)."""
    for path in model_dir.iterdir():
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name == BIN_INDEX_NAME or path.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, staging_dir / path.name)


def _convert_file(bin_path: Path, output_path: Path) -> tuple[list[str], int]:
    """Save one `.bin` state dict as safetensors; returns its tensor names and total bytes."""
    import torch
    from safetensors.torch import load_file, save_file

    state = _load_state_dict(bin_path)
    tensors = _unshare(state)
    save_file(tensors, str(output_path), metadata={"format": "pt"})
    # Read back: a silent mismatch here would surface much later as wrong model output.
    reloaded = load_file(str(output_path))
    if reloaded.keys() != tensors.keys() or not all(
        torch.equal(reloaded[name], tensors[name]) for name in tensors
    ):
        raise ConversionError(f"{output_path.name} does not read back as {bin_path.name}")
    size_bytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    return sorted(tensors), size_bytes


def _load_state_dict(bin_path: Path) -> dict[str, object]:
    import torch

    try:
        # weights_only: never run pickled code from a downloaded file.
        state = torch.load(bin_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) torch.save files cannot be memory-mapped.
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ConversionError(f"cannot read {bin_path}: {error}") from error
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"cannot read {bin_path}: {error}") from error
    if not isinstance(state, dict):
        raise ConversionError(f"{bin_path} holds a {type(state).__name__}, not a state dict")
    return state


def _unshare(state: dict[str, object]) -> dict[str, "torch.Tensor"]:
    """Contiguous tensors with one storage each: safetensors refuses shared storage (e.g. tied
    embeddings), so later users of an already-seen storage get their own copy."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            logger.warning("skipping %s: not a tensor (%s)", name, type(value).__name__)
            continue
        tensor = value.detach().contiguous()
        storage_ptr = tensor.untyped_storage().data_ptr()
        if storage_ptr in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors
