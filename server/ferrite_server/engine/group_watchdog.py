"""Notices a rank leaving the tensor-parallel group while no request runs.

A failed step already breaks the group (CollectiveError, the shard exits), but an idle group
runs no collectives: without a heartbeat, shards on one node would wait forever for a node that
went away, and their launcher would never report it. So while serving, every rank joins a tiny
all-reduce every few seconds on a gloo group used for nothing else (never interleaved with the
engine's collectives). When a rank's process ends, the others' heartbeat fails at once
(connection closed) or at the collective timeout (a stuck rank), and they exit with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0


class GroupWatchdog:
    def __init__(
        self,
        heartbeat_group: Any,
        on_lost: Callable[[str], None],
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self._group = heartbeat_group
        self._on_lost = on_lost  # called once, from the watchdog thread, with the reason
        self._interval_s = interval_s
        self._stopping = threading.Event()
        # A daemon: a heartbeat blocked on a peer must never keep the process alive at exit.
        self._thread = threading.Thread(target=self._run, name="group-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the shard is leaving on purpose); failures after this are expected."""
        self._stopping.set()

    def _run(self) -> None:
        beat = torch.zeros(1)
        while not self._stopping.wait(self._interval_s):
            try:
                dist.all_reduce(beat, group=self._group)
            except RuntimeError as error:  # a peer's connection closed, or the timeout passed
                if not self._stopping.is_set():
                    logger.error("lost a rank of the tensor-parallel group: %s", error)
                    self._on_lost(str(error))
                return
