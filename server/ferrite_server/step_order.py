"""Overlapped steps start in the router's order (Step.step_id / Step.after_step_id).

With asynchronous scheduling the router sends step n+1 while step n still runs, so two
Prefill / Decode calls are in flight at once and gRPC may hand them to the servicer in either
order. A step that names the step it must follow waits here, on the event loop (never blocking
it), until that step was handed to the engine worker. The worker is one thread that runs its
queue first in, first out, so "handed over in order" is "run in order".

A step whose predecessor failed before it was handed over (a conversion error, its own wait
failing, the call cancelled) fails too, at once: running it would append tokens the shard never
generated in the step the router believes ran in between.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

# Longest a step waits for the step it must follow. The router sends that step first, so it
# is normally there within microseconds; past this the router has lost it (or restarted).
STEP_ORDER_MAX_WAIT_S = 30.0
# Outcomes kept for steps that may still be named: the router names only the step it sent
# just before, so the most recent few suffice; older ones are dropped first.
_MAX_REMEMBERED_STEPS = 1024


class StepOrderError(Exception):
    """A step cannot start: the step it must follow did not arrive in time or failed."""


class StepOrder:
    """Outcomes of numbered steps (handed over or abandoned), for the steps that follow them.
    Used on the event loop thread only."""

    def __init__(self, max_wait_s: float = STEP_ORDER_MAX_WAIT_S) -> None:
        self._max_wait_s = max_wait_s
        # step id -> resolved True when it was handed over, False when it was abandoned;
        # pending while only a follower knows the id.
        self._outcomes: OrderedDict[int, asyncio.Future[bool]] = OrderedDict()

    async def wait_turn(self, step_id: int, after_step_id: int) -> None:
        """Return once step `after_step_id` was handed over (at once when it is 0); raise
        StepOrderError when it failed or does not come within the bound."""
        if after_step_id == 0:
            return
        outcome = self._outcome(after_step_id)
        try:
            # shield: a timeout must not cancel the shared future another caller resolves.
            handed_over = await asyncio.wait_for(asyncio.shield(outcome), self._max_wait_s)
        except TimeoutError:
            if not outcome.done():  # not worth keeping: nobody resolves or awaits it now
                self._outcomes.pop(after_step_id, None)
            raise StepOrderError(
                f"step {step_id} must start after step {after_step_id}, which did not reach "
                f"this shard within {self._max_wait_s:g} s"
            ) from None
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

    def forget(self) -> None:
        """Drop the recorded outcomes (a Clear: a restarted router numbers steps anew).
        Steps still waiting keep waiting for their predecessor."""
        for step_id, outcome in list(self._outcomes.items()):
            if outcome.done():
                del self._outcomes[step_id]

    def _outcome(self, step_id: int) -> asyncio.Future[bool]:
        outcome = self._outcomes.get(step_id)
        if outcome is None:
            outcome = asyncio.get_running_loop().create_future()
            self._outcomes[step_id] = outcome
            self._drop_oldest_resolved()
        return outcome

    def _resolve(self, step_id: int, handed_over: bool) -> None:
        if step_id == 0:  # unnumbered: nothing can name it
            return
        outcome = self._outcome(step_id)
        if not outcome.done():  # the first outcome of a repeated id stands
            outcome.set_result(handed_over)

    def _drop_oldest_resolved(self) -> None:
        if len(self._outcomes) <= _MAX_REMEMBERED_STEPS:
            return
        # Down to half at once, so that the scan below runs once per many steps.
        excess = len(self._outcomes) - _MAX_REMEMBERED_STEPS // 2
        for step_id in [s for s, o in self._outcomes.items() if o.done()][:excess]:
            del self._outcomes[step_id]
