"""`ferrite-server prepare-model --model-id X`: any model reference -> a local directory the
shard can load (config.json + safetensors + tokenizer files). The launcher runs it once before
starting the shards and reads the directory from the last line of stdout.

- an existing local directory is used in place (its `.bin` weights, if that is all it has,
  are converted once into the cache directory, never next to the source);
- a GGUF file, or a directory / hub repo holding GGUF files and no checkpoint (`--gguf-file`
  picks one), is converted once into the cache directory (gguf.py);
- a string written like a path that does not exist fails at once, naming it, before any
  heavy import;
- anything else is a hub id, resolved through the Hugging Face cache (hub.py).

Without `--model-id` the CLI serves the bundled default model (default_model.py) instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ferrite_server.model_prep.errors import InvalidModelError, ModelNotFoundError, ModelPrepError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
GGUF_SUFFIX = ".gguf"


def main(args: argparse.Namespace) -> int:
    """Entry point of the `prepare-model` subcommand (args: model_id, revision, cache_dir,
    hub_cache_dir, gguf_file).
    Prints the prepared directory as the last stdout line; returns the exit code."""
    cache_dir = Path(args.cache_dir).expanduser()
    try:
        model_dir = prepare_model(
            args.model_id, args.revision, cache_dir, args.hub_cache_dir, args.gguf_file
        )
    except ModelPrepError as error:
        logger.error("%s", error)
        return 1
    except Exception as error:  # noqa: BLE001 - one line naming the model, not a traceback
        logger.error("cannot prepare --model-id %s: %s: %s", args.model_id,
                     type(error).__name__, error)
        return 1
    print(model_dir, flush=True)
    return 0


def prepare_model(
    model_id: str,
    revision: str | None,
    cache_dir: Path,
    hub_cache_dir: Path | None = None,
    gguf_file: str | None = None,
) -> Path:
    """A local directory with config.json and safetensors weights for `model_id`.
    `hub_cache_dir`: where hub downloads go (None: huggingface_hub's own choice);
    `gguf_file`: which GGUF file of a directory or hub repo to serve."""
    local = Path(model_id).expanduser()
    if local.is_file() and local.suffix == GGUF_SUFFIX:
        return _from_gguf(local, gguf_file, cache_dir)
    if local.is_dir():
        if revision is not None:
            logger.warning("--revision %s ignored: %s is a local directory", revision, model_id)
        source_dir = local.resolve()
        logger.info("using local directory %s", source_dir)
    elif local.exists():
        raise InvalidModelError(
            f"--model-id {model_id}: is a file, but neither a model directory nor a .gguf file"
        )
    elif looks_like_path(model_id):
        raise ModelNotFoundError(f"--model-id {model_id}: no such file or directory")
    else:
        from ferrite_server.model_prep import hub

        source_dir = hub.download(model_id, revision, hub_cache_dir, gguf_file)
    if gguf_file is not None or _only_gguf(source_dir):
        return _from_gguf(source_dir, gguf_file, cache_dir)
    return _with_safetensors(_checked(source_dir, model_id), cache_dir)


def _only_gguf(model_dir: Path) -> bool:
    """A directory of GGUF files without a transformers checkpoint."""
    from ferrite_server.model_prep.gguf import gguf_files

    return not (model_dir / CONFIG_NAME).is_file() and bool(gguf_files(model_dir))


def _from_gguf(location: Path, gguf_file: str | None, cache_dir: Path) -> Path:
    from ferrite_server.model_prep.gguf import prepare_gguf, select_gguf

    gguf_path = select_gguf(location, gguf_file)
    logger.info("serving GGUF file %s", gguf_path)
    return prepare_gguf(gguf_path, cache_dir)


def looks_like_path(model_id: str) -> bool:
    """Written the way only paths are: absolute, ./, ../, ~, or more than one slash (hub ids
    are "name" or "org/name")."""
    return (
        model_id.startswith(("/", "./", "../", "~"))
        or model_id in (".", "..")
        or model_id.count("/") > 1
    )


def _checked(model_dir: Path, model_id: str) -> Path:
    if not (model_dir / CONFIG_NAME).is_file():
        raise InvalidModelError(
            f"--model-id {model_id}: {model_dir} has no {CONFIG_NAME} "
            "(not a Hugging Face transformers checkpoint)"
        )
    return model_dir


def _with_safetensors(model_dir: Path, cache_dir: Path) -> Path:
    from ferrite_server.model_prep.bin_conversion import bin_weight_files, convert_bin_checkpoint

    if any(model_dir.glob("*.safetensors")):
        return model_dir
    if bin_weight_files(model_dir):
        return convert_bin_checkpoint(model_dir, cache_dir)
    raise InvalidModelError(
        f"{model_dir} has neither *.safetensors nor pytorch_model*.bin weights"
    )
