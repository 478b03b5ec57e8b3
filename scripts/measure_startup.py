"""Time from `ferrite-launcher` start to the first served token, cold and warm.

    python scripts/measure_startup.py [--model-cache-dir DIR] [-- extra launcher flags]

Cold: the model cache directory is new, so the default model is converted from its GGUF first.
Warm: the same launch again, reusing the converted model. Each run polls `/generate` with
`max_new_tokens=1` until it answers, then stops the launcher with SIGTERM. Prints one JSON line
per run with the total and the launcher's own phase timings read from its log.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

POLL_INTERVAL_S = 0.2
TIMEOUT_S = 1800.0
# Phase markers the launcher logs, in order, with the elapsed seconds it reports.
PHASES = {
    "model_ready_s": re.compile(r"model ready in .* \((\d+\.\d+) s\)"),
    "shards_ready_s": re.compile(r"shard-0 is ready \((\d+\.\d+) s\)"),
    "router_ready_s": re.compile(r"ferrite is ready on .* \((\d+\.\d+) s after"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_token_s(base_url: str, process: subprocess.Popen, started: float) -> float:
    payload = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 1}}
    while time.monotonic() - started < TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"launcher exited with {process.returncode}")
        try:
            answer = requests.post(f"{base_url}/generate", json=payload, timeout=60)
            if answer.status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"no token after {TIMEOUT_S} s")


def measure(label: str, model_cache_dir: Path, extra_flags: list[str], log_path: Path) -> dict:
    port = free_port()
    command = [
        "ferrite-launcher", "--hostname", "127.0.0.1", "--port", str(port),
        "--model-cache-dir", str(model_cache_dir), *extra_flags,
    ]
    with open(log_path, "wb") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            total_s = first_token_s(f"http://127.0.0.1:{port}", process, started)
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=120)
    log = log_path.read_text(errors="replace")
    phases = {
        name: float(match.group(1))
        for name, pattern in PHASES.items()
        if (match := pattern.search(log)) is not None
    }
    return {"run": label, "launch_to_first_token_s": round(total_s, 2), **phases,
            "exit_code": exit_code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-cache-dir", type=Path, default=None,
                        help="default: a new temporary directory (so the first run is cold)")
    parser.add_argument("launcher_flags", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferrite-startup-") as tmp:
        cache_dir = args.model_cache_dir or Path(tmp) / "models"
        for label in ("cold", "warm"):
            result = measure(label, cache_dir, args.launcher_flags, Path(tmp) / f"{label}.log")
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
