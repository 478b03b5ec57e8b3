"""Which of two torch thread counts runs a small CPU step faster right now, by measurement.

A batch-1 decode step on a 2-core machine with spinning OpenMP threads is ~15% faster on both
cores than on one while the cores are free, and ~5x slower while another busy process holds one
of them (each parallel region waits for the thread that is not running: bench/RESULTS.md). No
fixed count is right for a shared laptop, so the shard times its small steps' forwards under
each count and uses the faster one:

- the count in use keeps a moving average of its steps' times, so a busy neighbour that starts
  shows within two steps (5x-slow steps lift the average past the other count's by more than
  SWITCH_MARGIN, and SLOW_STEPS_TO_SWITCH of them in a row tell it from a one-off delay);
- every `explore_every_steps` steps a try runs TRY_STEPS steps on the other count, whose
  estimate the try's last time replaces (it is stale otherwise; the first step after a change
  of count is never timed). When the other count loses, the wait before the
  next try doubles, up to `max_explore_every_steps`, so a lasting neighbour costs few slow
  steps; when it wins, it becomes the count in use and the wait starts over. A try is also due
  `max_explore_every_s` after the last one, so that the faster count is back within seconds
  of a neighbour leaving (a try beside one costs a step ~5x slower: ~4% at this rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Weight of a new step time in the moving average of the count in use.
MOVING_AVERAGE_WEIGHT = 0.3
# The count in use gives way once its average is this much slower than the other count's
# estimate: a busy neighbour makes two threads ~5x slower, which passes it at once, while a
# single step delayed by the router or the client sharing the cores (~2x) does not. Without
# the margin such a spike moved steps to one thread, where they stayed until the next try
# (through the server, native decode: 9.3 ms per token against 7.7 with two threads always).
SWITCH_MARGIN = 1.1
# ... and only after this many of its steps in a row were that slow: through the server a step
# now and then took 2-4x the others on either count (once per request; not garbage collection,
# which an in-process run shows to be ~0.2 ms), and a single such step moved the steps to the
# slower count until its next try. A busy neighbour's slowdown lasts: it costs one more step.
SLOW_STEPS_TO_SWITCH = 2
# A try of the other count runs this many steps, and the first step after any change of the
# count is not timed: through the server, the first step on two threads after a stretch on one
# took ~10.5 ms where steady steps on two took ~7.5 (and one thread ~9.3), so single-step tries
# kept the slower count in use.
TRY_STEPS = 2
# ... except that a first step this many times slower than the count in use ends the try at
# once: beside a busy process two threads are ~5x slower, and a second such step per try cost
# a third of the speed in bench/contention.py (0.62 of quiet instead of ~0.9).
HOPELESS_TRY_FACTOR = 2.5
EXPLORE_EVERY_STEPS = 32
MAX_EXPLORE_EVERY_STEPS = 1024
MAX_EXPLORE_EVERY_S = 2.0


@dataclass
class MeasuredThreadChoice:
    counts: tuple[int, int]  # the two candidate thread counts, e.g. (1, all threads)
    explore_every_steps: int = EXPLORE_EVERY_STEPS
    max_explore_every_steps: int = MAX_EXPLORE_EVERY_STEPS
    max_explore_every_s: float = MAX_EXPLORE_EVERY_S
    _estimate_s: dict[int, float] = field(default_factory=dict, init=False)
    _in_use: int | None = field(default=None, init=False)
    _steps_since_try: int = field(default=0, init=False)
    _last_try_s: float = field(default=0.0, init=False)
    _wait_steps: int = field(default=0, init=False)
    _slow_steps_in_a_row: int = field(default=0, init=False)
    # The count of the latest steps, and how many steps in a row ran on it.
    _run_count: int | None = field(default=None, init=False)
    _run_length: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._wait_steps = self.explore_every_steps

    @property
    def in_use(self) -> int | None:
        """The count steps run on between tries (None until both were timed once)."""
        return self._in_use

    def choose(self, now_s: float) -> int:
        """The thread count for the next small step (`now_s`: a monotonic clock's seconds)."""
        for count in self.counts:  # first, steps on each until one of them is timed
            if count not in self._estimate_s:
                return count
        assert self._in_use is not None
        other = self._other(self._in_use)
        if self._run_count == other and self._run_length < TRY_STEPS:
            return other  # a try under way
        waited_s = now_s - self._last_try_s
        if self._steps_since_try >= self._wait_steps or waited_s >= self.max_explore_every_s:
            return other
        return self._in_use

    def record(self, count: int, seconds: float, now_s: float) -> None:
        """The time of a small step that ran on `count` threads, recorded at `now_s`."""
        if count not in self.counts:
            return
        if count == self._run_count:
            self._run_length += 1
        else:
            self._run_count, self._run_length = count, 1
            if self._in_use is not None and count != self._in_use:
                self._end_hopeless_try(count, seconds, now_s)
            return  # the first step after a change of count: not timed
        if self._in_use is None:
            self._estimate_s[count] = seconds
            if len(self._estimate_s) == len(self.counts):
                self._in_use = min(self.counts, key=self._estimate_s.__getitem__)
                self._last_try_s = now_s
            return
        if count == self._in_use:
            previous = self._estimate_s[count]
            self._estimate_s[count] = previous + MOVING_AVERAGE_WEIGHT * (seconds - previous)
            self._steps_since_try += 1
            slow = seconds > SWITCH_MARGIN * self._estimate_s[self._other(count)]
            self._slow_steps_in_a_row = self._slow_steps_in_a_row + 1 if slow else 0
        else:  # a try of the other count: its one fresh time
            self._end_try(count, seconds, now_s)
            return
        other = self._other(count)
        slower = self._estimate_s[count] > SWITCH_MARGIN * self._estimate_s[other]
        if slower and self._slow_steps_in_a_row >= SLOW_STEPS_TO_SWITCH:  # it got slower
            self._in_use = other
            self._steps_since_try = 0
            self._slow_steps_in_a_row = 0
            self._wait_steps = self.explore_every_steps

    def _end_try(self, count: int, seconds: float, now_s: float) -> None:
        self._estimate_s[count] = seconds
        self._steps_since_try = 0
        self._last_try_s = now_s
        if seconds < self._estimate_s[self._other(count)]:
            self._in_use = count
            self._wait_steps = self.explore_every_steps
        else:
            self._wait_steps = min(2 * self._wait_steps, self.max_explore_every_steps)

    def _end_hopeless_try(self, count: int, seconds: float, now_s: float) -> None:
        """A try's first (untimed) step that took HOPELESS_TRY_FACTOR times the count in use
        (a busy neighbour) loses the try at once instead of running its second step."""
        assert self._in_use is not None
        if seconds > HOPELESS_TRY_FACTOR * self._estimate_s[self._in_use]:
            self._end_try(count, seconds, now_s)
            self._run_length = TRY_STEPS  # the try is over

    def _other(self, count: int) -> int:
        first, second = self.counts
        return second if count == first else first
