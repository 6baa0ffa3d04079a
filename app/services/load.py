"""How busy a worker process is with payment jobs: the signal that lets best-effort work give way.

A pool process that runs payment jobs back to back is draining a backlog; its cores are the backlog's. Back
to back means the next job starts within `gap` of the last one's end: between two jobs of a backlog a
process waits only for Celery to hand it the next message (a few milliseconds on a busy machine, measured
at 3 to 6 ms median on 2 cores), while a process fed at a steady pace waits for the orders themselves. The
busy fraction below is the share of the last second or so spent in a job or in such a gap, decayed
exponentially: two floats, updated when a job starts and ends, read from any thread, no timer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# The busy fraction's time constant: a second of back-to-back jobs weighs 63%, a quiet 0.2 s undoes 18%.
LOAD_WINDOW = 1.0
# A pause between two jobs shorter than this still counts as busy: the next job was already waiting.
LOAD_GAP = 0.025
# Busy for at least this share of the window: the process has a backlog of payment jobs.
SATURATED = 0.8


@dataclass
class ProcessLoad:
    """The decayed share of recent time this process spent running payment jobs back to back."""

    window: float = LOAD_WINDOW
    gap: float = LOAD_GAP
    threshold: float = SATURATED
    monotonic: Callable[[], float] = time.monotonic
    # (since, busy fraction then, busy until): one tuple, so a reader on another thread sees a consistent
    # state without a lock; `busy until` is infinite while a job runs, its end plus `gap` after.
    _state: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), init=False)

    def busy_fraction(self) -> float:
        return self._fraction(self.monotonic())

    def _fraction(self, now: float) -> float:
        since, fraction, busy_until = self._state
        if now <= since:
            return fraction
        busy_end = min(now, busy_until)
        faded = math.exp((since - now) / self.window)
        busy = math.exp((busy_end - now) / self.window) - faded if busy_end > since else 0.0
        return fraction * faded + busy

    def saturated(self) -> bool:
        return self.busy_fraction() >= self.threshold

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around one payment job."""
        now = self.monotonic()
        self._state = (now, self._fraction(now), math.inf)
        try:
            yield
        finally:
            now = self.monotonic()
            self._state = (now, self._fraction(now), now + self.gap)


__all__ = ["LOAD_GAP", "LOAD_WINDOW", "SATURATED", "ProcessLoad"]
