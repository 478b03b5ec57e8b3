"""Publishing a directory into a cache that several processes may fill at once: a file lock
serializes the work, the result is built in a temporary sibling and renamed into place, and a
marker written last says the directory is complete (an interrupted run leaves no half result
that looks finished)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

COMPLETE_MARKER_NAME = ".ferrite-complete"


def is_complete(target_dir: Path) -> bool:
    return (target_dir / COMPLETE_MARKER_NAME).is_file()


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def build_once(target_dir: Path, build: Callable[[Path], None]) -> Path:
    """Return `target_dir`, running `build(staging_dir)` first unless a complete one exists."""
    if is_complete(target_dir):
        return target_dir
    parent = target_dir.parent
    with exclusive_lock(parent / f".{target_dir.name}.lock"):
        if is_complete(target_dir):  # another process finished while we waited
            return target_dir
        staging_dir = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}-", dir=parent))
        try:
            build(staging_dir)
            (staging_dir / COMPLETE_MARKER_NAME).write_text("")
            staging_dir.chmod(0o755)  # mkdtemp made it private
            if target_dir.exists():  # an incomplete leftover of an interrupted run
                shutil.rmtree(target_dir)
            os.rename(staging_dir, target_dir)
        finally:
            if staging_dir.exists():
                shutil.rmtree(staging_dir, ignore_errors=True)
    return target_dir
