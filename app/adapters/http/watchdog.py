"""One timer thread per process that fires callbacks at absolute deadlines.

A per-operation socket timeout restarts with every byte, so a peer that trickles one byte at a time never
times out. The HTTP transport (``transport.py``, the only user) therefore asks this watchdog to shut its
socket down at the attempt's deadline. That happens on every dependency call, so ``watch`` + ``cancel`` must
cost a few microseconds: one heap push, one flag flip under an uncontended lock, and a wake-up of the timer
thread only when the new deadline is earlier than the one it is already sleeping towards.

Cancelled entries stay in the heap (removing from the middle of a heap is O(n)) but drop their callback at
once, so they pin nothing; the heap is rebuilt when they outnumber the live ones.

Fork-safe: gunicorn and Celery prefork children inherit the parent's object but not its thread, and maybe a
lock that some thread held at fork time. A child starts over with a fresh lock, an empty heap and, on its
first ``watch``, a thread of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable

from app.forks import on_fork

__all__ = ["WatchHandle", "Watchdog", "default_watchdog"]

logger = logging.getLogger(__name__)

# Rebuilding the heap is O(n); below this many dead entries it is not worth it.
_COMPACT_MIN_CANCELLED = 512


class WatchHandle:
    """A scheduled callback; ``cancel()`` it when the guarded operation ends in time."""

    __slots__ = ("deadline", "_callback", "_watchdog")

    def __init__(self, deadline: float, callback: Callable[[], object], watchdog: Watchdog) -> None:
        self.deadline = deadline
        self._callback: Callable[[], object] | None = callback
        self._watchdog = watchdog

    def cancel(self) -> bool:
        """Stop the callback; True if it had not started yet and now never will.

        False means it already ran, is running right now, or was cancelled before.
        """
        return self._watchdog._cancel(self)


class Watchdog:
    """Runs ``on_expire`` callbacks at their deadlines on one lazily started daemon thread.

    ``clock`` is the time base of the deadlines (``time.monotonic`` by default). With a fake clock a test
    advances it and calls ``wake()`` so the thread looks at the clock again. Callbacks run on the watchdog
    thread one after the other, so they must be quick (closing a socket, setting a flag); an exception in one
    is logged and never stops the thread.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, name: str = "orderflow-watchdog"
    ) -> None:
        self._clock = clock
        self._name = name
        self._seq = itertools.count()
        self._reset()
        _track_for_fork(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, WatchHandle]] = []
        self._cancelled = 0
        # The deadline the thread sleeps towards: -inf while it is awake and will look at the heap anyway,
        # +inf while it waits for any entry. A new entry wakes it only when it comes earlier.
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, deadline: float, on_expire: Callable[[], object]) -> WatchHandle:
        """Call ``on_expire`` once the clock reaches ``deadline``, unless the handle is cancelled first."""
        if self._pid != os.getpid():
            # A fork that bypassed os.register_at_fork (a C extension calling fork()).
            self._reset()
        handle = WatchHandle(deadline, on_expire, self)
        with self._cond:
            if self._stopped:
                raise RuntimeError("watchdog is stopped")
            if self._thread is None:
                self._start_thread()
            heapq.heappush(self._heap, (deadline, next(self._seq), handle))
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._cond.notify()
        return handle

    def wake(self) -> None:
        """Make the thread read the clock now (after a fake clock moved)."""
        with self._cond:
            self._cond.notify()

    def stop(self, *, timeout: float = 1.0) -> None:
        """End the thread; pending callbacks never run. For tests and orderly shutdown."""
        with self._cond:
            self._stopped = True
            thread = self._thread
            self._heap.clear()
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def thread(self) -> threading.Thread | None:
        """The timer thread of this process, None until the first ``watch``."""
        return self._thread

    def pending(self) -> int:
        """Entries held in the heap, cancelled ones not yet dropped included."""
        with self._cond:
            return len(self._heap)

    def _cancel(self, handle: WatchHandle) -> bool:
        with self._cond:
            if handle._callback is None:
                return False
            handle._callback = None
            self._cancelled += 1
            heap = self._heap
            if self._cancelled >= _COMPACT_MIN_CANCELLED and self._cancelled * 2 > len(heap):
                # In place: the thread holds a reference to this very list.
                heap[:] = [entry for entry in heap if entry[2]._callback is not None]
                heapq.heapify(heap)
                self._cancelled = 0
            return True

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        cond, heap, clock = self._cond, self._heap, self._clock
        while True:
            due: list[Callable[[], object]] = []
            with cond:
                while True:
                    if self._stopped:
                        return
                    now = clock()
                    while heap and (heap[0][2]._callback is None or heap[0][0] <= now):
                        handle = heapq.heappop(heap)[2]
                        callback = handle._callback
                        if callback is None:
                            self._cancelled -= 1
                            continue
                        handle._callback = None
                        due.append(callback)
                    if due:
                        self._wake_at = -math.inf
                        break
                    if heap:
                        self._wake_at = heap[0][0]
                        cond.wait(heap[0][0] - now)
                    else:
                        self._wake_at = math.inf
                        cond.wait()
            for callback in due:
                try:
                    callback()
                except Exception:
                    logger.exception("watchdog callback %r failed", callback)


_instances: weakref.WeakSet[Watchdog] = weakref.WeakSet()
_fork_hook_registered = False
_default: Watchdog | None = None
_default_lock = threading.Lock()


def _track_for_fork(watchdog: Watchdog) -> None:
    global _fork_hook_registered
    _instances.add(watchdog)
    if not _fork_hook_registered:
        _fork_hook_registered = True
        on_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    # Runs in the child before any other thread exists there, so resetting is race-free.
    global _default_lock
    _default_lock = threading.Lock()
    for watchdog in list(_instances):
        watchdog._reset()


def default_watchdog() -> Watchdog:
    """The process-wide watchdog, created on first use; a forked child gets a working one of its own."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Watchdog()
    return _default
