"""Hugging Face hub ids -> a local snapshot directory, through `huggingface_hub`.

`snapshot_download` itself honours HF_HOME / HF_HUB_CACHE (where), HF_TOKEN (gated and private
repos) and HF_HUB_OFFLINE (cache only): nothing here reads them. Only what the shard can load
is fetched: config, tokenizer and safetensors files, and the `.bin` weights only for a repo
that has no safetensors (they are converted afterwards); of a repo of GGUF files (no
config.json), the one `--gguf-file` names, or its only one (GGUF repos often hold a dozen
quantizations of several GB each: never all of them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm.std import tqdm

from ferrite_server.model_prep.errors import InvalidModelError, ModelNotFoundError

logger = logging.getLogger(__name__)

# Top-level files only ("*/*" ignored): repos often carry other formats in sub-folders.
CONFIG_AND_TOKENIZER_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
SAFETENSORS_PATTERNS = ["*.safetensors"]
BIN_PATTERNS = ["pytorch_model*.bin"]
IGNORE_PATTERNS = ["*/*"]
PROGRESS_INTERVAL_S = 5.0


class LineProgress(tqdm):
    """A progress bar printed as whole lines, at most every few seconds: the launcher forwards
    its children's output line by line, where '\\r' redraws would be noise."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("mininterval", PROGRESS_INTERVAL_S)
        kwargs["file"] = sys.stderr
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        text = (msg if msg is not None else str(self)).strip()
        if text:
            self.fp.write(f"{text}\n")
            self.fp.flush()
        return True


def download(
    model_id: str, revision: str | None, cache_dir: Path | None = None, gguf_file: str | None = None
) -> Path:
    """The local snapshot of `model_id` at `revision` (default: main), fetched if needed, in
    the hub cache `cache_dir` (None: HF_HUB_CACHE / HF_HOME, as huggingface_hub decides)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at_revision = f"{model_id} (revision {revision or 'main'})"
    logger.info("resolving %s through the Hugging Face hub cache", at_revision)

    def fetch(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                model_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=patterns,
                ignore_patterns=IGNORE_PATTERNS,
                tqdm_class=LineProgress,
            )
        )

    try:
        snapshot_dir = _fetch_weights(fetch, model_id, revision, gguf_file)
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"--model-id {model_id}: gated repository; accept its terms on the hub and set "
            f"HF_TOKEN ({error})"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"--model-id {model_id}: no such model on the hub (or private: set HF_TOKEN)"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(f"--model-id {model_id}: no revision {revision!r}") from error
    except LocalEntryNotFoundError as error:
        raise ModelNotFoundError(
            f"--model-id {model_id}: not in the local hub cache and the hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE=1): {error}"
        ) from error
    except ValueError as error:  # HFValidationError: not a valid repo id at all
        raise ModelNotFoundError(
            f"--model-id {model_id}: neither an existing directory nor a valid hub id ({error})"
        ) from error
    logger.info("%s is at %s", at_revision, snapshot_dir)
    return snapshot_dir


def _fetch_weights(
    fetch: Callable[[list[str]], Path], model_id: str, revision: str | None, gguf_file: str | None
) -> Path:
    """Config and tokenizer files plus the weights the shard can load (see the docstring)."""
    at_revision = f"{model_id} (revision {revision or 'main'})"
    if gguf_file is not None:
        return fetch(CONFIG_AND_TOKENIZER_PATTERNS + [gguf_file])
    snapshot_dir = fetch(CONFIG_AND_TOKENIZER_PATTERNS + SAFETENSORS_PATTERNS)
    if any(snapshot_dir.glob("*.safetensors")):
        return snapshot_dir
    if not (snapshot_dir / "config.json").is_file():
        names = _repo_gguf_files(model_id, revision)
        if len(names) > 1:
            raise InvalidModelError(
                f"--model-id {model_id} holds {len(names)} GGUF files ({', '.join(names)}); "
                "pick one with --gguf-file"
            )
        if names:
            logger.info("%s is a GGUF repository; fetching %s", at_revision, names[0])
            return fetch(names)
    logger.info("%s has no safetensors weights; fetching its .bin weights", at_revision)
    return fetch(BIN_PATTERNS)


def _repo_gguf_files(model_id: str, revision: str | None) -> list[str]:
    """The repo's top-level .gguf files; [] when the hub cannot be asked (offline: a GGUF
    already in the cached snapshot is found there)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        files = HfApi().list_repo_files(model_id, revision=revision)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError):
        return []
    return sorted(name for name in files if name.endswith(".gguf") and "/" not in name)
