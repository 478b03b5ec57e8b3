"""Reading a running server's /metrics in integration tests."""

from __future__ import annotations

import time

import requests

SETTLE_TIMEOUT_S = 120.0


def metrics(base_url: str) -> dict[str, float]:
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("ferrite_") and " " in line and "{" not in line:
            name, value = line.split()[:2]
            values[name] = float(value)
    return values


def wait_until_idle(base_url: str) -> dict[str, float]:
    """Polls until nothing runs or waits and every KV block is free again."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        values = metrics(base_url)
        if (
            values["ferrite_requests_running"] == 0
            and values["ferrite_requests_waiting"] == 0
            and values["ferrite_kv_blocks_used"] == 0
        ):
            return values
        assert time.monotonic() < deadline, f"never idle again: {values}"
        time.sleep(0.2)
