"""Print the runtime dependencies declared in pyproject.toml, one requirement a line.

The image installs them in a layer of their own, before the ferrite wheel, so that editing
ferrite's code rebuilds only the small wheel layer and not the multi-gigabyte torch layer.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject_path: Path) -> list[str]:
    with pyproject_path.open("rb") as pyproject_file:
        pyproject = tomllib.load(pyproject_file)
    return list(pyproject["project"]["dependencies"])


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: requirements_from_pyproject.py PYPROJECT_TOML")
    for requirement in runtime_requirements(Path(sys.argv[1])):
        print(requirement)


if __name__ == "__main__":
    main()
