"""Fakes for the policies' injected side effects: a clock that only moves when told to."""

from __future__ import annotations

import random

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
