"""StepOrder's memory of numbered steps stays bounded over a long run, and still lets the
follower of a recent step go (and fails the follower of a recent abandoned one)."""

from __future__ import annotations

import asyncio

import pytest

from ferrite_server import step_order
from ferrite_server.step_order import StepOrder, StepOrderError


def test_a_long_run_remembers_a_bounded_number_of_steps() -> None:
    async def run() -> int:
        order = StepOrder(max_wait_s=1.0)
        for step_id in range(1, 5 * step_order._MAX_REMEMBERED_STEPS):
            await order.wait_turn(step_id, step_id - 1)
            order.handed_over(step_id)
        last = 5 * step_order._MAX_REMEMBERED_STEPS - 1
        order.abandoned(last + 1)
        with pytest.raises(StepOrderError, match="failed before it started"):
            await order.wait_turn(last + 2, last + 1)
        await order.wait_turn(last + 3, last)  # handed over long ago in this run: goes at once
        return len(order._outcomes)

    assert asyncio.run(run()) <= step_order._MAX_REMEMBERED_STEPS
