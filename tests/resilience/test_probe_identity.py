"""A half-open probe is decided by whoever runs it, on whichever thread: the probe's identity travels with its
admission. Hedged reads run every attempt, the primary too, on a thread of their own, so the thread that was
admitted is never the one that reports; both stores must still close (or reopen, or free) the circuit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from app.adapters.redis_breaker_store import RedisBreakerStore
from app.resilience import Attempt, CircuitBreaker, HedgingPolicy, ResiliencePipeline
from app.resilience.circuit_breaker import PROBE, BreakerStore, BrokenCircuitError, LocalBreakerStore
from app.resilience.retry import Outcome

BREAK = 0.2
HEDGE_DELAY = 0.05


class NotCounted(Exception):
    """An outcome the circuit counts as neither success nor failure (like a 4xx other than 408/429)."""


def failures(outcome: Outcome) -> bool:
    if isinstance(outcome.exception, NotCounted):
        return False
    return outcome.exception is not None or outcome.result == "failed"


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[BreakerStore]:
    if request.param == "local":
        yield LocalBreakerStore()
        return
    shared = RedisBreakerStore(request.getfixturevalue("redis_client"),
                               key_prefix=request.getfixturevalue("key_prefix"))
    yield shared
    shared.close()


def make_breaker(store: BreakerStore, *, probe_timeout: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("inventory", store=store, minimum_throughput=2, break_duration=BREAK,
                          probe_timeout=probe_timeout)


def hedged(breaker: CircuitBreaker) -> ResiliencePipeline[str]:
    return ResiliencePipeline("inventory", attempt_timeout=2.0, total_timeout=3.0, breaker=breaker,
                              hedging=HedgingPolicy(max_hedged_attempts=1, delay=HEDGE_DELAY), is_failure=failures)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def open_until_break_ends(breaker: CircuitBreaker) -> None:
    breaker.record(False)
    breaker.record(False)
    if isinstance(breaker.store, RedisBreakerStore):
        breaker.store.flush()
    assert breaker.state == "open"
    assert wait_for(lambda: breaker.state == "half_open"), "the break did not end"


def test_a_hedged_probe_that_succeeds_closes_the_circuit(store: BreakerStore) -> None:
    breaker = make_breaker(store)
    open_until_break_ends(breaker)
    threads: list[str] = []

    def slow_success(attempt: Attempt) -> str:
        threads.append(threading.current_thread().name)
        time.sleep(HEDGE_DELAY * 3)  # slower than the hedging delay: a hedge is asked for while the probe runs
        return "ok"

    assert hedged(breaker).execute(slow_success) == "ok"
    assert threads == ["hedged-attempt"], "the probe ran on the calling thread, or was hedged beside itself"
    assert breaker.state == "closed"


def test_a_hedged_probe_that_fails_opens_the_circuit_again(store: BreakerStore) -> None:
    breaker = make_breaker(store)
    open_until_break_ends(breaker)
    assert hedged(breaker).execute(lambda attempt: "failed") == "failed"
    snapshot = breaker.snapshot()
    assert snapshot.state == "open"
    assert snapshot.break_until is not None and snapshot.break_until > time.time()


def test_a_hedged_probe_that_counts_as_neither_frees_the_probe(store: BreakerStore) -> None:
    breaker = make_breaker(store)
    open_until_break_ends(breaker)

    def not_counted(attempt: Attempt) -> str:
        raise NotCounted("a 404, say")

    with pytest.raises(NotCounted):
        hedged(breaker).execute(not_counted)
    assert breaker.state == "half_open"
    # Freed at once, not after the probe timeout: the very next call is the probe, and its success closes.
    assert hedged(breaker).execute(lambda attempt: "ok") == "ok"
    assert breaker.state == "closed"


def test_a_probe_reported_from_another_thread_decides(store: BreakerStore) -> None:
    breaker = make_breaker(store)
    open_until_break_ends(breaker)
    admission = breaker.acquire()
    assert admission.code == PROBE and admission.probe is not None
    reporter = threading.Thread(target=breaker.record, args=(True,), kwargs={"probe": admission.probe})
    reporter.start()
    reporter.join(timeout=5)
    assert breaker.state == "closed"


def test_a_lost_probe_reporting_late_does_not_decide_for_its_successor(store: BreakerStore) -> None:
    breaker = make_breaker(store, probe_timeout=0.5)  # long enough for the checks below, on a busy machine
    open_until_break_ends(breaker)
    lost = breaker.acquire().probe
    assert lost is not None

    successors: list[str] = []

    def claim() -> bool:
        try:
            token = breaker.acquire().probe
        except BrokenCircuitError:
            return False
        assert token is not None, "admitted half-open, but not as the probe"
        successors.append(token)
        return True

    # Same thread, next probe once the first is presumed lost: only the admission tells the two apart.
    assert wait_for(claim)
    successor = successors[0]
    assert successor != lost
    breaker.record(False, probe=lost)
    assert breaker.state == "half_open"
    breaker.release(probe=lost)
    with pytest.raises(BrokenCircuitError):
        breaker.acquire()  # the successor still holds the probe
    breaker.record(True, probe=successor)
    assert breaker.state == "closed"
