"""The measured thread count of small CPU steps (engine/step_thread_choice.py), on made-up
step times: first two steps on each count (the first after a change is never timed), then
the faster; a slower count in use gives way
after two slow steps in a row (not one); the other count is tried again now and then (less often while it loses,
but at least every few seconds)."""

from __future__ import annotations

from ferrite_server.engine.step_thread_choice import MeasuredThreadChoice

QUIET_S = {1: 0.016, 2: 0.013}  # two threads faster on free cores
BUSY_S = {1: 0.018, 2: 0.080}  # a busy neighbour: two threads wait for each other


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0


def run_steps(
    choice: MeasuredThreadChoice, times_s: dict[int, float], steps: int, clock: FakeClock | None = None
) -> list[int]:
    clock = clock or FakeClock()
    counts = []
    for _ in range(steps):
        count = choice.choose(clock.now_s)
        clock.now_s += times_s[count]
        choice.record(count, times_s[count], clock.now_s)
        counts.append(count)
    return counts


def test_each_count_is_timed_once_then_the_faster_runs() -> None:
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=8)
    assert choice.in_use is None
    assert run_steps(choice, QUIET_S, 4) == [1, 1, 2, 2]
    assert choice.in_use == 2
    assert run_steps(choice, QUIET_S, 8) == [2] * 8
    # After 8 timed steps in use, a try of two steps on the other count, which loses.
    assert run_steps(choice, QUIET_S, 3) == [1, 1, 2]
    assert choice.in_use == 2


def test_the_first_step_after_a_change_of_count_is_not_timed() -> None:
    """Waking the threads that slept through one-thread steps made the first two-thread step
    ~40% slower than the next ones: a try times its second step."""
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=8)
    clock = FakeClock()
    run_steps(choice, {1: 0.009, 2: 0.0075}, 4, clock)
    assert choice.in_use == 2
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=8)
    counts = []
    for _ in range(20):
        count = choice.choose(clock.now_s)
        first_after_change = not counts or counts[-1] != count
        seconds = 0.0105 if count == 2 and first_after_change else {1: 0.009, 2: 0.0075}[count]
        clock.now_s += seconds
        choice.record(count, seconds, clock.now_s)
        counts.append(count)
    assert choice.in_use == 2 and counts[-5:] == [2] * 5


def test_a_busy_neighbour_moves_steps_to_one_thread_within_two_steps_and_back_after() -> None:
    choice = MeasuredThreadChoice(
        counts=(1, 2), explore_every_steps=8, max_explore_every_steps=64, max_explore_every_s=60.0
    )
    run_steps(choice, QUIET_S, 20)
    assert choice.in_use == 2
    busy = run_steps(choice, BUSY_S, 200)
    assert busy[:2] == [2, 2] and busy[2] == 1  # two slow steps in a row, then one thread
    assert choice.in_use == 1
    # Tries of two threads get rarer while they lose: 8, 16, 32, 64, 64 timed steps apart
    # (plus the untimed step back), and each ends after its first step, 5x slower than one
    # thread's (HOPELESS_TRY_FACTOR).
    tries = [index for index, count in enumerate(busy[2:]) if count == 2]
    assert len(tries) <= 6, tries
    gaps = [later - earlier for earlier, later in zip(tries, tries[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] == 64 + 2, gaps
    # The neighbour leaves: the next try of two threads wins and stays.
    quiet = run_steps(choice, QUIET_S, 70)
    assert choice.in_use == 2
    assert quiet[-5:] == [2] * 5


def test_two_slow_steps_of_the_faster_count_cost_only_until_its_next_try() -> None:
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=4)
    clock = FakeClock()
    counts = run_steps(choice, QUIET_S, 6, clock)
    assert counts[-2:] == [2, 2]  # steady on two threads, between tries
    choice.record(2, 0.050, clock.now_s)  # one disturbed step: no move
    assert choice.in_use == 2
    choice.record(2, 0.050, clock.now_s)  # a second one in a row: one thread
    assert choice.in_use == 1
    assert run_steps(choice, QUIET_S, 9, clock)[-2:] == [2, 2]
    assert choice.in_use == 2


def test_a_step_delayed_twofold_does_not_move_steps_to_the_slower_count() -> None:
    """A neighbour process's brief burst (the router, the client) delays one step; only a
    lasting slowdown by more than the margin moves the steps."""
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=1000)
    clock = FakeClock()
    run_steps(choice, QUIET_S, 10, clock)
    for _ in range(3):
        choice.record(2, 2 * QUIET_S[2], clock.now_s)
        choice.record(2, QUIET_S[2], clock.now_s)
    assert choice.in_use == 2
    choice.record(2, 5 * QUIET_S[2], clock.now_s)  # a busy neighbour: within two steps
    choice.record(2, 5 * QUIET_S[2], clock.now_s)
    assert choice.in_use == 1


def test_a_losing_count_is_still_tried_every_few_seconds() -> None:
    """Step counts alone would wait up to 1024 steps (~20 s on one thread) after a long busy
    spell; the time limit brings two threads back within seconds of the neighbour leaving."""
    choice = MeasuredThreadChoice(
        counts=(1, 2), explore_every_steps=8, max_explore_every_steps=1024, max_explore_every_s=2.0
    )
    clock = FakeClock()
    run_steps(choice, QUIET_S, 10, clock)
    busy = run_steps(choice, BUSY_S, 1000, clock)  # ~18 s
    tries = [index for index, count in enumerate(busy) if count == 2]
    # About one try per 2 s once the step count waits long (one step each beside the busy
    # neighbour; the first two: the slow steps that showed it).
    assert 8 <= len(tries[2:]) <= 12, tries
    start_s = clock.now_s
    quiet = run_steps(choice, QUIET_S, 200, clock)
    back = quiet.index(2) if choice.in_use == 2 else None
    assert back is not None and sum(QUIET_S[c] for c in quiet[:back]) <= 2.0 + 0.02
    assert clock.now_s > start_s


def test_an_idle_pause_makes_the_next_step_a_try() -> None:
    choice = MeasuredThreadChoice(counts=(1, 2), explore_every_steps=1000)
    clock = FakeClock()
    run_steps(choice, QUIET_S, 5, clock)
    assert choice.choose(clock.now_s) == 2
    assert choice.choose(clock.now_s + 60.0) == 1


def test_times_of_other_counts_are_ignored() -> None:
    choice = MeasuredThreadChoice(counts=(1, 4))
    choice.record(2, 0.001, 0.0)
    assert choice.choose(0.0) == 1 and choice.in_use is None
