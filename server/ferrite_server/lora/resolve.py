"""`--lora-adapters name=SOURCE,...` -> adapter directories: a local directory in place, else a
hub id through the Hugging Face cache (like --model-id, model_prep/hub.py), fetching only
the adapter's own files."""

from __future__ import annotations

import logging
from pathlib import Path

from ferrite_server.lora.peft_adapter import CONFIG_NAME, WEIGHTS_NAME, LoraAdapterError

logger = logging.getLogger(__name__)


def adapter_directory(name: str, source: str, hub_cache_dir: Path | None) -> Path:
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise LoraAdapterError(name, f"{source} is a file, not an adapter directory")
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise LoraAdapterError(name, f"{source}: no such directory")
    return _download(name, source, hub_cache_dir)


def _download(name: str, hub_id: str, hub_cache_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download

    logger.info("LoRA adapter %r: resolving %s through the Hugging Face hub cache", name, hub_id)
    try:
        return Path(
            snapshot_download(
                hub_id, cache_dir=hub_cache_dir, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]
            )
        )
    except Exception as error:  # noqa: BLE001 - any hub failure: one line naming the adapter
        raise LoraAdapterError(
            name, f"{hub_id} is neither a directory nor a hub adapter that can be fetched "
            f"({type(error).__name__}: {error})"
        ) from error
