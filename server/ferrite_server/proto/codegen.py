"""Compile the router<->shard .proto into Python modules at run time (nothing generated is
committed).

The generated package lives in a directory keyed by a hash of the .proto text and the
grpcio-tools version, so an edited contract or a new protoc never reuses stale code. It goes
into `ferrite_server/proto/_generated/` (git-ignored) when the installed package is writable,
else into `~/.cache/ferrite/proto/`. It is loaded under a private module name, so the
generated `ferrite.shard.v1` package path never lands on sys.path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PROTO_RELATIVE_PATH = Path("ferrite/shard/v1/shard.proto")
GENERATED_MODULE_STEM = "shard_pb2"
PACKAGE_DIR = Path(__file__).resolve().parent
USER_CACHE_DIR = Path("~/.cache/ferrite/proto")
HASH_PREFIX_CHARS = 16


class ProtoCodegenError(RuntimeError):
    """The .proto cannot be found or compiled."""


@dataclass(frozen=True)
class ShardProtoModules:
    shard_pb2: ModuleType
    shard_pb2_grpc: ModuleType


def find_proto_root() -> Path:
    """The directory that holds `ferrite/shard/v1/shard.proto` (the protoc include root).

    A repository checkout has it at `<repo>/proto/` (two levels above this package's parent);
    maturin's `include = ["proto/**/*.proto"]` puts it at the wheel root, i.e.
    `site-packages/proto/` beside the installed `ferrite_server` package.
    """
    candidates = [
        PACKAGE_DIR.parents[2] / "proto",  # <repo>/server/ferrite_server/proto -> <repo>/proto
        PACKAGE_DIR.parents[1] / "proto",  # site-packages/ferrite_server/proto -> site-packages/proto
        *(Path(sysconfig.get_path(key)) / "proto" for key in ("purelib", "platlib")),
    ]
    for root in candidates:
        if (root / PROTO_RELATIVE_PATH).is_file():
            return root
    searched = ", ".join(str(root / PROTO_RELATIVE_PATH) for root in candidates)
    raise ProtoCodegenError(f"shard.proto not found; looked at: {searched}")


def load_shard_proto() -> ShardProtoModules:
    """Generate (once per proto hash) and import the shard_pb2 / shard_pb2_grpc modules."""
    proto_root = find_proto_root()
    digest = codegen_digest(proto_root / PROTO_RELATIVE_PATH)
    package_name = f"{__package__}._gen_{digest}"
    if package_name not in sys.modules:
        base_dirs = (PACKAGE_DIR / "_generated", USER_CACHE_DIR.expanduser())
        generated_dir = ensure_generated(proto_root, digest, base_dirs)
        _register_package(package_name, generated_dir)
    return ShardProtoModules(
        shard_pb2=importlib.import_module(f"{package_name}.{GENERATED_MODULE_STEM}"),
        shard_pb2_grpc=importlib.import_module(f"{package_name}.{GENERATED_MODULE_STEM}_grpc"),
    )


def codegen_digest(proto_path: Path) -> str:
    from importlib.metadata import version

    hasher = hashlib.sha256(proto_path.read_bytes())
    hasher.update(version("grpcio-tools").encode())
    return hasher.hexdigest()[:HASH_PREFIX_CHARS]


def ensure_generated(proto_root: Path, digest: str, base_dirs: Sequence[Path]) -> Path:
    """The generated package directory `<base>/<digest>` under the first usable base dir,
    compiling into a staging directory and renaming it into place when missing."""
    for base_dir in base_dirs:
        target_dir = base_dir / digest
        if (target_dir / "__init__.py").is_file():
            return target_dir
        try:
            base_dir.mkdir(parents=True, exist_ok=True)
            staging_dir = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=base_dir))
        except OSError:
            continue  # read-only install: fall back to the user cache
        try:
            _compile_into(proto_root, staging_dir)
            try:
                os.rename(staging_dir, target_dir)
            except OSError:
                if not (target_dir / "__init__.py").is_file():  # lost a race only if it exists
                    raise
            return target_dir
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)
    raise ProtoCodegenError("no writable directory for the generated proto code")


def _compile_into(proto_root: Path, output_dir: Path) -> None:
    from grpc_tools import protoc

    protoc_dir = output_dir / "protoc"
    protoc_dir.mkdir()
    exit_code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--python_out={protoc_dir}",
            f"--grpc_python_out={protoc_dir}",
            str(proto_root / PROTO_RELATIVE_PATH),
        ]
    )
    if exit_code != 0:
        raise ProtoCodegenError(f"protoc failed with exit code {exit_code}")
    generated = protoc_dir / PROTO_RELATIVE_PATH.parent
    stem = GENERATED_MODULE_STEM
    shutil.move(generated / f"{stem}.py", output_dir / f"{stem}.py")
    grpc_source = (generated / f"{stem}_grpc.py").read_text()
    # The gRPC stub imports its messages by their proto package path; make it package-relative.
    absolute_import = f"from {'.'.join(PROTO_RELATIVE_PATH.parent.parts)} import {stem}"
    if absolute_import not in grpc_source:
        raise ProtoCodegenError(f"unexpected import in generated {stem}_grpc.py")
    grpc_source = grpc_source.replace(absolute_import, f"from . import {stem}")
    (output_dir / f"{stem}_grpc.py").write_text(grpc_source)
    shutil.rmtree(protoc_dir)
    output_dir.chmod(0o755)  # mkdtemp made it 0700
    # Written last: its presence marks a complete directory.
    (output_dir / "__init__.py").write_text('"""Generated from shard.proto; do not edit."""\n')


def _register_package(package_name: str, generated_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        package_name,
        generated_dir / "__init__.py",
        submodule_search_locations=[str(generated_dir)],
    )
    if spec is None or spec.loader is None:
        raise ProtoCodegenError(f"cannot load generated package at {generated_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package_name] = module
    spec.loader.exec_module(module)
