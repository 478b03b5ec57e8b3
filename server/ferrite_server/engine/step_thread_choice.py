"""Which of two torch thread counts runs a small CPU step faster right now, by measurement.

A batch-1 decode step on a 2-core machine with spinning OpenMP threads is ~15% faster on both
cores than on one while the cores are free, and ~5x slower while another busy process holds one
of them (each parallel region waits for the thread that is not running: bench/RESULTS.md). No
fixed count is right for a shared laptop, so the shard times its small steps' forwards under
each count and uses the faster one:

- the count in use keeps a moving average of its steps' times, so a busy neighbour that starts
  shows within a step or two (one 5x-slow step lifts the average past the other count's, by
  more than SWITCH_MARGIN);
- every `explore_every_steps` steps one step runs on the other count, whose estimate that one
  fresh time replaces (it is stale otherwise). When the other count loses, the wait before the
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

    def __post_init__(self) -> None:
        self._wait_steps = self.explore_every_steps

    @property
    def in_use(self) -> int | None:
        """The count steps run on between tries (None until both were timed once)."""
        return self._in_use

    def choose(self, now_s: float) -> int:
        """The thread count for the next small step (`now_s`: a monotonic clock's seconds)."""
        for count in self.counts:  # first, one step on each
            if count not in self._estimate_s:
                return count
        assert self._in_use is not None
        waited_s = now_s - self._last_try_s
        if self._steps_since_try >= self._wait_steps or waited_s >= self.max_explore_every_s:
            return self._other(self._in_use)
        return self._in_use

    def record(self, count: int, seconds: float, now_s: float) -> None:
        """The time of a small step that ran on `count` threads, recorded at `now_s`."""
        if count not in self.counts:
            return
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
        else:  # a try of the other count: its one fresh time
            self._estimate_s[count] = seconds
            self._steps_since_try = 0
            self._last_try_s = now_s
            if seconds < self._estimate_s[self._in_use]:
                self._in_use = count
                self._wait_steps = self.explore_every_steps
            else:
                self._wait_steps = min(2 * self._wait_steps, self.max_explore_every_steps)
            return
        other = self._other(count)
        if self._estimate_s[count] > SWITCH_MARGIN * self._estimate_s[other]:  # it got slower
            self._in_use = other
            self._steps_since_try = 0
            self._wait_steps = self.explore_every_steps

    def _other(self, count: int) -> int:
        first, second = self.counts
        return second if count == first else first
