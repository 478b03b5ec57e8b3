"""Start the real `ferrite-launcher` on a free port and stop it: the one way integration
tests run ferrite, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import requests

READY_TIMEOUT_S = 600.0
# How much of the launcher log a failing test shows.
LOG_TAIL_CHARS = 8000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningFerrite:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    # The metrics-only listener (--prometheus-port); None when the test chose its own port.
    prometheus_url: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(server: RunningFerrite, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"launcher exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"ferrite not ready after {timeout_s}s:\n{server.log()[-4000:]}")


def stop(server: RunningFerrite, timeout_s: float = 60.0) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    return server.process.returncode


@contextlib.contextmanager
def running_ferrite(
    args: Sequence[str] = (), env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[RunningFerrite]:
    """Run `ferrite-launcher --port <free> --prometheus-port <free> *args` until the block ends
    (free ports, so that runs side by side never collide on the default metrics port 9000)."""
    port = free_port()
    metrics_args: list[str] = []
    prometheus_url = None
    if "--prometheus-port" not in args:
        prometheus_port = free_port()
        metrics_args = ["--prometheus-port", str(prometheus_port)]
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    with tempfile.TemporaryDirectory(prefix="ferrite-it-") as tmp:
        log_path = Path(tmp) / "launcher.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                ["ferrite-launcher", "--hostname", "127.0.0.1", "--port", str(port),
                 "--shard-uds-path", f"{tmp}/shard", *metrics_args, *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
            server = RunningFerrite(f"http://127.0.0.1:{port}", process, log_path, prometheus_url)
            try:
                if wait:
                    wait_until_ready(server)
                yield server
            except BaseException:
                # The launcher's log is the only record of what the server did: show it with
                # the failure (pytest prints a failing test's captured stderr).
                sys.stderr.write(f"--- launcher log, last {LOG_TAIL_CHARS} characters ---\n")
                sys.stderr.write(server.log()[-LOG_TAIL_CHARS:] + "\n")
                raise
            finally:
                stop(server)
