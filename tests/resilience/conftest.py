"""Fakes for the policies' injected side effects: a clock that only moves when told to."""

from __future__ import annotations

import queue
import random
from typing import Any

import pytest


class FakeClock:
    """Monotonic and wall time in one; `sleep` advances it, so nothing in a unit test really waits."""

    def __init__(self, start: float = 1000.0, epoch: float = 1_700_000_000.0) -> None:
        self.now = start
        self._epoch_offset = epoch - start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._epoch_offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


class ScriptedHedging:
    """Hedged attempts with no thread and no real wait: the first attempt launched is held back (slow) until
    `release_primary`, every later one runs at once; waiting for an answer that has not come moves the fake
    clock by the wait instead. Pass `launch` and `receive` to a HedgingPolicy."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.launched = 0
        self._held: list[tuple[Any, Any]] = []

    def launch(self, thunk: Any, answers: Any) -> None:
        self.launched += 1
        if self.launched == 1:
            self._held.append((thunk, answers))
        else:
            answers.put(thunk())

    def receive(self, answers: Any, timeout: float) -> Any:
        try:
            return answers.get_nowait()
        except queue.Empty:
            self.clock.advance(timeout)
            return None

    def release_primary(self) -> None:
        for thunk, answers in self._held:
            answers.put(thunk())
        self._held.clear()
