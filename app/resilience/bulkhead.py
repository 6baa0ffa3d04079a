"""Bulkhead: at most `max_concurrency` calls of one dependency in this process, `max_queue` waiting.

A waiter waits at most until its deadline; when the queue is full the rejection is immediate, so a slow
dependency can hold at most `max_concurrency` threads instead of the whole server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BulkheadRejectedError(Exception):
    """The bulkhead and its queue are full. Not a failure of the dependency: the circuit ignores it."""

    def __init__(self, service: str = "") -> None:
        super().__init__(f"{service or 'call'}: bulkhead full")
        self.service = service


class Bulkhead:
    def __init__(
        self,
        *,
        max_concurrency: int = 10,
        max_queue: int = 0,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Condition, float], bool] = threading.Condition.wait,
    ) -> None:
        """`clock` tells the time deadlines are on, `wait(freed, seconds)` waits for a freed slot: a real
        wait unless told otherwise (a test moves a fake clock instead)."""
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._active = 0
        self._waiting = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

    def acquire(self, deadline: float | None = None) -> bool:
        """Take a slot. False when the deadline passed while queued; raises when the queue is full."""
        with self._lock:
            # Queued waiters go first; a newcomer only jumps in when nobody is waiting.
            if self._active < self.max_concurrency and not self._waiting:
                self._active += 1
                return True
            if self._waiting >= self.max_queue:
                raise BulkheadRejectedError(self.name)
            self._waiting += 1
            try:
                while self._active >= self.max_concurrency:
                    if deadline is None:
                        self._freed.wait()
                        continue
                    remaining = deadline - self._clock()
                    if remaining <= 0 or not self._wait(self._freed, remaining):
                        if self._active < self.max_concurrency:
                            break
                        return False
            finally:
                self._waiting -= 1
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active -= 1
            if self._waiting:
                self._freed.notify()
