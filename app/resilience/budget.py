"""Retry budget: retries in the window <= ratio * calls in the window + min_per_second * window seconds.

The spirit of gRPC retry throttling and Finagle's RetryBudget: retries may add at most a fixed share of
load on top of a small floor, so a struggling dependency is not buried under a retry storm. The fleet-wide
variant lives in the Redis store (`app/adapters/redis_breaker_store.py`), charged by the same script that
admits the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Finagle's default TTL; the contract gives no window, and 10 s matches the circuits' sampling duration.
DEFAULT_WINDOW = 10.0
_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    ratio: float = 0.2
    min_per_second: float = 5.0
    window: float = DEFAULT_WINDOW

    def allows(self, calls: float, retries: float) -> bool:
        """Whether one more retry fits, given the calls and retries already in the window."""
        return retries + 1 <= self.ratio * calls + self.min_per_second * self.window


class BudgetStore(Protocol):
    def charge_budget(self, name: str, spec: BudgetSpec, *, retry: bool) -> bool: ...


class BudgetWindow:
    """Calls and retries over a sliding window of ten buckets; thread-safe."""

    def __init__(self, spec: BudgetSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._width = spec.window / _BUCKETS
        self._lock = threading.Lock()
        self._index = [-1] * _BUCKETS
        self._calls = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS

    def _slot(self, bucket: int) -> int:
        slot = bucket % _BUCKETS
        if self._index[slot] != bucket:
            self._index[slot] = bucket
            self._calls[slot] = 0
            self._retries[slot] = 0
        return slot

    def totals(self) -> tuple[int, int]:
        with self._lock:
            oldest = int(self._clock() / self._width) - _BUCKETS
            live = [i for i in range(_BUCKETS) if self._index[i] > oldest]
            return sum(self._calls[i] for i in live), sum(self._retries[i] for i in live)

    def charge(self, *, retry: bool) -> bool:
        """Count a call, or spend one retry if the budget allows it (False = exhausted, nothing spent)."""
        bucket = int(self._clock() / self._width)
        with self._lock:
            slot = self._slot(bucket)
            if not retry:
                self._calls[slot] += 1
                return True
            oldest = bucket - _BUCKETS
            calls = retries = 0
            for i in range(_BUCKETS):
                if self._index[i] > oldest:
                    calls += self._calls[i]
                    retries += self._retries[i]
            if not self.spec.allows(calls, retries):
                return False
            self._retries[slot] += 1
            return True


class RetryBudget:
    """A retry budget for one dependency: in-process by default, fleet-wide when given a shared store."""

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 5.0,
        window: float = DEFAULT_WINDOW,
        name: str = "",
        store: BudgetStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < ratio <= 1.0 or min_per_second < 0 or window <= 0:
            raise ValueError("ratio must be in (0, 1], min_per_second >= 0, window > 0")
        self.name = name
        self.spec = BudgetSpec(ratio=ratio, min_per_second=min_per_second, window=window)
        self.store = store
        self._window = BudgetWindow(self.spec, clock=clock) if store is None else None

    def record_call(self) -> None:
        """Count one protected call (its first attempt): what earns the budget."""
        if self._window is not None:
            self._window.charge(retry=False)
        else:
            assert self.store is not None
            self.store.charge_budget(self.name, self.spec, retry=False)

    def try_spend(self) -> bool:
        """Ask for one retry; False means the budget is exhausted and the retry must not happen."""
        if self._window is not None:
            return self._window.charge(retry=True)
        assert self.store is not None
        return self.store.charge_budget(self.name, self.spec, retry=True)
