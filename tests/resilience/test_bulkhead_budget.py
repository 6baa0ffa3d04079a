from __future__ import annotations

import threading
import time

import pytest

from app.resilience import Bulkhead, BulkheadRejectedError, RetryBudget

from .conftest import FakeClock


def test_bulkhead_admits_up_to_max_concurrency_then_rejects_when_the_queue_is_full() -> None:
    bulkhead = Bulkhead(max_concurrency=2, max_queue=0, name="payment")
    assert bulkhead.acquire() and bulkhead.acquire()
    started = time.monotonic()
    with pytest.raises(BulkheadRejectedError, match="payment"):
        bulkhead.acquire(deadline=time.monotonic() + 5)
    assert time.monotonic() - started < 0.5  # immediate, not after waiting
    bulkhead.release()
    assert bulkhead.acquire()


def test_a_queued_waiter_gets_the_slot_when_it_is_released() -> None:
    queued = threading.Event()

    def wait(freed: threading.Condition, seconds: float) -> bool:
        queued.set()  # the waiter is in the queue, about to wait for a freed slot
        return freed.wait(seconds)

    bulkhead = Bulkhead(max_concurrency=1, max_queue=1, wait=wait)
    bulkhead.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(bulkhead.acquire(deadline=time.monotonic() + 5)))
    waiter.start()
    assert queued.wait(5)
    assert bulkhead.waiting == 1
    with pytest.raises(BulkheadRejectedError):  # the queue (1) is full now
        bulkhead.acquire()
    bulkhead.release()
    waiter.join(timeout=5)
    assert got == [True]
    assert (bulkhead.active, bulkhead.waiting) == (1, 0)


def test_a_queued_waiter_gives_up_at_its_deadline() -> None:
    clock = FakeClock()
    waits: list[float] = []

    def wait(freed: threading.Condition, seconds: float) -> bool:
        waits.append(seconds)
        clock.advance(seconds)  # nobody frees a slot meanwhile
        return False

    bulkhead = Bulkhead(max_concurrency=1, max_queue=5, clock=clock, wait=wait)
    bulkhead.acquire()
    assert bulkhead.acquire(deadline=clock() + 0.05) is False
    assert waits == [pytest.approx(0.05)]  # it waited exactly until its deadline, then gave up
    assert bulkhead.waiting == 0


def test_a_deadline_already_past_does_not_wait() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(max_concurrency=1, max_queue=5, clock=clock)
    bulkhead.acquire()
    assert bulkhead.acquire(deadline=clock.now - 1) is False


def test_budget_allows_the_floor_then_a_share_of_calls(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0, clock=clock)
    spent = sum(budget.try_spend() for _ in range(20))
    assert spent == 10  # floor: 1/s over 10 s
    for _ in range(10):
        budget.record_call()
    assert budget.try_spend() and budget.try_spend()  # 0.2 * 10 more
    assert not budget.try_spend()


def test_budget_refills_as_the_window_slides(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.5, window=10.0, clock=clock)
    assert sum(budget.try_spend() for _ in range(10)) == 5
    assert not budget.try_spend()
    clock.advance(10.5)
    assert sum(budget.try_spend() for _ in range(10)) == 5


def test_budget_without_a_floor_needs_calls(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, clock=clock)
    assert not budget.try_spend()
    budget.record_call()
    budget.record_call()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=0)
