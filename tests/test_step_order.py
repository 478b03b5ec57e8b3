"""StepOrder's memory of numbered steps stays bounded over a long run, and still lets the
follower of a recent step go (and fails the follower of a recent abandoned one); a waiting
step goes when its predecessor is handed over on another thread, and stops waiting when its
call ends."""

from __future__ import annotations

import threading
import time

import pytest

from ferrite_server import step_order
from ferrite_server.step_order import StepOrder, StepOrderError


def test_a_long_run_remembers_a_bounded_number_of_steps() -> None:
    order = StepOrder(max_wait_s=1.0)
    for step_id in range(1, 5 * step_order._MAX_REMEMBERED_STEPS):
        order.wait_turn(step_id, step_id - 1)
        order.handed_over(step_id)
    last = 5 * step_order._MAX_REMEMBERED_STEPS - 1
    order.abandoned(last + 1)
    with pytest.raises(StepOrderError, match="failed before it started"):
        order.wait_turn(last + 2, last + 1)
    order.wait_turn(last + 3, last)  # handed over long ago in this run: goes at once
    assert len(order._outcomes) <= step_order._MAX_REMEMBERED_STEPS


def test_the_first_outcome_of_a_repeated_step_id_stands() -> None:
    order = StepOrder(max_wait_s=1.0)
    order.abandoned(4)
    order.handed_over(4)
    with pytest.raises(StepOrderError, match="failed before it started"):
        order.wait_turn(5, 4)


def test_a_waiting_step_goes_once_its_predecessor_is_handed_over_on_another_thread() -> None:
    order = StepOrder(max_wait_s=5.0)
    went: list[float] = []

    def follower() -> None:
        order.wait_turn(2, 1)
        went.append(time.monotonic())

    thread = threading.Thread(target=follower)
    thread.start()
    time.sleep(0.2)
    assert went == []  # still waiting for step 1
    handed_over_at = time.monotonic()
    order.handed_over(1)
    thread.join(timeout=5.0)
    assert len(went) == 1 and went[0] >= handed_over_at


def test_a_cancelled_step_stops_waiting_and_its_follower_fails() -> None:
    order = StepOrder(max_wait_s=30.0)
    call_active = threading.Event()
    call_active.set()
    errors: list[StepOrderError] = []

    def waiter() -> None:
        try:
            order.wait_turn(8, 7, still_wanted=call_active.is_set)
        except StepOrderError as error:
            errors.append(error)
            order.abandoned(8)  # as the service does

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    call_active.clear()  # the router cancelled the call ...
    order.wake_waiters()  # ... and gRPC ran the call's termination callback
    thread.join(timeout=5.0)
    assert time.monotonic() - started < 5.0  # not the 30 s bound
    assert len(errors) == 1 and "cancelled" in str(errors[0])
    with pytest.raises(StepOrderError, match="step 8, which failed"):
        order.wait_turn(9, 8)


def test_a_predecessor_that_never_comes_fails_the_wait_within_the_bound() -> None:
    order = StepOrder(max_wait_s=0.2)
    started = time.monotonic()
    with pytest.raises(StepOrderError, match="did not reach this shard within 0.2 s"):
        order.wait_turn(3, 2)
    assert time.monotonic() - started >= 0.2
