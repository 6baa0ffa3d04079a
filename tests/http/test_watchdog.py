from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from app.adapters.http.watchdog import Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def watchdog(clock: FakeClock) -> Iterator[Watchdog]:
    dog = Watchdog(clock=clock)
    yield dog
    dog.stop()


def _advance(watchdog: Watchdog, clock: FakeClock, to: float) -> None:
    clock.now = to
    watchdog.wake()


def _wait_for(condition: threading.Event, timeout: float = 2.0) -> None:
    assert condition.wait(timeout), "the watchdog thread did not get there in time"


def test_callbacks_run_in_deadline_order_once_the_clock_reaches_them(
    watchdog: Watchdog, clock: FakeClock
) -> None:
    fired: list[str] = []
    second = threading.Event()
    watchdog.watch(103.0, lambda: fired.append("third"))
    watchdog.watch(101.0, lambda: fired.append("first"))

    def fire_second() -> None:
        fired.append("second")
        second.set()

    watchdog.watch(102.0, fire_second)

    _advance(watchdog, clock, 102.5)
    _wait_for(second)
    time.sleep(0.05)
    assert fired == ["first", "second"]

    done = threading.Event()
    watchdog.watch(103.0, done.set)
    _advance(watchdog, clock, 110.0)
    _wait_for(done)
    assert fired == ["first", "second", "third"]


def test_nothing_fires_before_its_deadline(watchdog: Watchdog, clock: FakeClock) -> None:
    fired = threading.Event()
    watchdog.watch(100.5, fired.set)
    _advance(watchdog, clock, 100.4999)
    assert not fired.wait(0.1)
    _advance(watchdog, clock, 100.5)
    _wait_for(fired)


def test_a_cancelled_callback_never_runs(watchdog: Watchdog, clock: FakeClock) -> None:
    cancelled_ran = threading.Event()
    later = threading.Event()
    handle = watchdog.watch(101.0, cancelled_ran.set)
    watchdog.watch(101.0, later.set)

    assert handle.cancel() is True
    assert handle.cancel() is False  # a second cancel changes nothing
    _advance(watchdog, clock, 105.0)
    _wait_for(later)
    assert not cancelled_ran.is_set()


def test_cancel_after_the_callback_ran_reports_false(watchdog: Watchdog, clock: FakeClock) -> None:
    fired = threading.Event()
    handle = watchdog.watch(101.0, fired.set)
    _advance(watchdog, clock, 101.0)
    _wait_for(fired)
    assert handle.cancel() is False


def test_an_exception_in_a_callback_is_logged_and_the_thread_keeps_working(
    watchdog: Watchdog, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    after = threading.Event()
    watchdog.watch(101.0, explode)
    watchdog.watch(101.0, after.set)  # same wake-up, after the failing one
    later = threading.Event()
    watchdog.watch(102.0, later.set)  # a later wake-up of the same thread

    with caplog.at_level(logging.ERROR, logger="app.adapters.http.watchdog"):
        _advance(watchdog, clock, 101.0)
        _wait_for(after)
        _advance(watchdog, clock, 102.0)
        _wait_for(later)

    assert watchdog.thread is not None and watchdog.thread.is_alive()
    assert any("boom" in (record.exc_text or "") or record.exc_info for record in caplog.records)


def test_cancelled_entries_do_not_pile_up(watchdog: Watchdog, clock: FakeClock) -> None:
    for i in range(5000):
        watchdog.watch(1000.0 + i, lambda: None).cancel()
    assert watchdog.pending() <= 1024


def test_the_thread_starts_lazily_and_only_once(clock: FakeClock) -> None:
    dog = Watchdog(clock=clock)
    try:
        assert dog.thread is None
        dog.watch(200.0, lambda: None)
        first = dog.thread
        dog.watch(300.0, lambda: None)
        assert first is not None and dog.thread is first
    finally:
        dog.stop()


def test_an_earlier_deadline_wakes_a_thread_sleeping_towards_a_later_one() -> None:
    dog = Watchdog()
    try:
        dog.watch(time.monotonic() + 30.0, lambda: None)
        time.sleep(0.02)  # the thread is now asleep until the far deadline
        fired = threading.Event()
        fired_at: list[float] = []
        deadline = time.monotonic() + 0.1

        def fire() -> None:
            fired_at.append(time.monotonic())
            fired.set()

        dog.watch(deadline, fire)
        _wait_for(fired)
        assert deadline <= fired_at[0] <= deadline + 0.05
    finally:
        dog.stop()


def test_watch_and_cancel_cost_microseconds() -> None:
    dog = Watchdog()
    try:
        far = time.monotonic() + 60.0
        rounds = 20000
        started = time.perf_counter()
        for _ in range(rounds):
            dog.watch(far, _noop).cancel()
        per_call = (time.perf_counter() - started) / rounds
        # A few µs on a quiet machine; the bound leaves room for a loaded CI runner.
        assert per_call < 50e-6
    finally:
        dog.stop()


def _noop() -> None:
    pass
