"""Running a server peer as a child process for the length of a `with` block.

The child gets its own session (process group) so that stopping it also stops what it spawned
(ferrite's launcher has shards and a router); its output goes to a log file that is shown when
it fails to come up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

STOP_TIMEOUT_S = 60.0


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time."""


@dataclass(frozen=True)
class ServerCommand:
    argv: Sequence[str]
    ready_url: str  # answers 200 once the server can take requests
    log_path: Path
    ready_timeout_s: float = 900.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, num_chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-num_chars:] if path.exists() else ""


def _wait_ready(process: subprocess.Popen, command: ServerCommand) -> None:
    deadline = time.monotonic() + command.ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"{command.argv[0]} exited with {process.returncode}:\n{_log_tail(command.log_path)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(command.ready_url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise ServerStartError(f"{command.argv[0]} not ready after {command.ready_timeout_s:.0f} s:\n"
                           f"{_log_tail(command.log_path)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_server(command: ServerCommand) -> Iterator[subprocess.Popen]:
    """Start the server, wait until `ready_url` answers, stop it (and its children) at the end."""
    command.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(command.log_path, "wb") as log_file:
        process = subprocess.Popen(list(command.argv), stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_ready(process, command)
        yield process
    finally:
        _stop(process)
