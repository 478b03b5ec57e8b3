"""Overlapped steps start in the router's order (Step.step_id / Step.after_step_id).

With asynchronous scheduling the router sends step n+1 while step n still runs, so two
Prefill / Decode calls are in flight at once and gRPC may hand them to the servicer in either
order. A step that names the step it must follow waits here, on its call's own thread, until
that step was handed to the engine worker. The worker is one thread that runs its queue first
in, first out, so "handed over in order" is "run in order".

A step whose predecessor failed before it was handed over (a conversion error, its own wait
failing, the call cancelled) fails too, at once: running it would append tokens the shard never
generated in the step the router believes ran in between.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# Longest a step waits for the step it must follow. The router sends that step first, so it
# is normally there within microseconds; past this the router has lost it (or restarted).
STEP_ORDER_MAX_WAIT_S = 30.0
# Outcomes kept for steps that may still be named: the router names only the step it sent
# just before, so the most recent few suffice; older ones are dropped first.
_MAX_REMEMBERED_STEPS = 1024


class StepOrderError(Exception):
    """A step cannot start: the step it must follow did not arrive in time or failed, or its
    own call ended while it waited."""


def _always_wanted() -> bool:
    return True


class StepOrder:
    """Outcomes of numbered steps (handed over or abandoned), for the steps that follow them.
    Shared by the calls' threads; one lock guards it."""

    def __init__(self, max_wait_s: float = STEP_ORDER_MAX_WAIT_S) -> None:
        self._max_wait_s = max_wait_s
        self._changed = threading.Condition()
        # step id -> True when it was handed over, False when it was abandoned.
        self._outcomes: OrderedDict[int, bool] = OrderedDict()

    def wait_turn(
        self, step_id: int, after_step_id: int, still_wanted: Callable[[], bool] = _always_wanted
    ) -> None:
        """Return once step `after_step_id` was handed over (at once when it is 0); raise
        StepOrderError when it failed, does not come within the bound, or `still_wanted()`
        turns false (its call was cancelled: `wake_waiters` makes the wait look again)."""
        if after_step_id == 0:
            return
        deadline_s = time.monotonic() + self._max_wait_s
        with self._changed:
            while (handed_over := self._outcomes.get(after_step_id)) is None:
                if not still_wanted():
                    raise StepOrderError(
                        f"step {step_id} was cancelled while it waited for step {after_step_id}"
                    )
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    raise StepOrderError(
                        f"step {step_id} must start after step {after_step_id}, which did not "
                        f"reach this shard within {self._max_wait_s:g} s"
                    )
                self._changed.wait(remaining_s)
        if not handed_over:
            raise StepOrderError(
                f"step {step_id} must start after step {after_step_id}, which failed before "
                "it started"
            )

    def handed_over(self, step_id: int) -> None:
        """Step `step_id` is in the engine worker's queue: its follower may go."""
        self._resolve(step_id, True)

    def abandoned(self, step_id: int) -> None:
        """Step `step_id` failed before it was handed over: its follower fails too."""
        self._resolve(step_id, False)

    def wake_waiters(self) -> None:
        """Make every waiting step look at its condition again (a call ended)."""
        with self._changed:
            self._changed.notify_all()

    def forget(self) -> None:
        """Drop the recorded outcomes (a Clear: a restarted router numbers steps anew).
        Steps still waiting keep waiting for their predecessor."""
        with self._changed:
            self._outcomes.clear()

    def _resolve(self, step_id: int, handed_over: bool) -> None:
        if step_id == 0:  # unnumbered: nothing can name it
            return
        with self._changed:
            if step_id in self._outcomes:  # the first outcome of a repeated id stands
                return
            self._outcomes[step_id] = handed_over
            if len(self._outcomes) > _MAX_REMEMBERED_STEPS:
                self._outcomes.popitem(last=False)  # the oldest
            self._changed.notify_all()
