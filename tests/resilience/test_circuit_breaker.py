from __future__ import annotations

import threading

import pytest

from app.resilience.circuit_breaker import (
    ADMIT,
    PROBE,
    BrokenCircuitError,
    CircuitBreaker,
    LocalBreakerStore,
)
from app.resilience.events import BreakerTransition
from app.resilience.telemetry import RecordingHook

from .conftest import FakeClock


def make_breaker(clock: FakeClock, hook: RecordingHook | None = None, **overrides: float) -> CircuitBreaker:
    options: dict[str, float] = dict(failure_ratio=0.5, sampling_duration=10.0, minimum_throughput=10,
                                     break_duration=30.0, probe_timeout=5.0)
    options.update(overrides)
    return CircuitBreaker("payment", hooks=[hook] if hook else [], clock=clock, wall_clock=clock.wall,
                          **options)  # type: ignore[arg-type]


def feed(breaker: CircuitBreaker, successes: int, failures: int) -> None:
    for _ in range(successes):
        breaker.acquire()
        breaker.record(True)
    for _ in range(failures):
        breaker.acquire()
        breaker.record(False)


def open_circuit(breaker: CircuitBreaker) -> None:
    feed(breaker, 0, 10)
    assert breaker.state == "open"


def test_ratio_exactly_at_the_threshold_opens(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = make_breaker(clock, hook)
    feed(breaker, 5, 4)
    assert breaker.state == "closed"
    feed(breaker, 0, 1)  # 5 of 10 failed: exactly 0.5
    assert breaker.state == "open"
    assert hook.of_type(BreakerTransition) == [BreakerTransition("payment", "closed", "open")]


def test_ratio_just_below_the_threshold_stays_closed(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    feed(breaker, 6, 5)  # 5/11 < 0.5
    assert breaker.state == "closed"
    assert breaker.snapshot().failure_ratio == pytest.approx(5 / 11)


def test_minimum_throughput_not_reached_keeps_it_closed(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    feed(breaker, 0, 9)
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.throughput, snapshot.failure_ratio) == ("closed", 9, 1.0)


def test_expired_buckets_slide_out_of_the_window(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    feed(breaker, 0, 9)
    clock.advance(10.5)  # every failure is now older than the sampling duration
    feed(breaker, 0, 1)
    snapshot = breaker.snapshot()
    assert snapshot.state == "closed"
    assert snapshot.throughput == 1


def test_window_keeps_recent_buckets_while_old_ones_expire(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    feed(breaker, 5, 0)
    clock.advance(5.0)
    feed(breaker, 0, 4)
    clock.advance(5.5)  # the successes expire, the failures stay
    feed(breaker, 0, 6)
    assert breaker.state == "open"


def test_open_circuit_rejects_fast_with_the_break_end_in_epoch_seconds(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    calls = []
    with pytest.raises(BrokenCircuitError) as caught:
        breaker.acquire()
        calls.append(1)
    assert not calls
    assert caught.value.state == "open"
    assert caught.value.break_until == pytest.approx(clock.wall() + 30.0)
    assert breaker.snapshot().break_until == pytest.approx(clock.wall() + 30.0)


def test_half_open_probe_success_closes_with_a_fresh_window(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = make_breaker(clock, hook)
    open_circuit(breaker)
    clock.advance(30.0)
    assert breaker.state == "half_open"
    admission = breaker.acquire()
    assert admission.code == PROBE
    breaker.record(True, probe=admission.probe)
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.throughput, snapshot.break_until) == ("closed", 0, None)
    assert [(e.from_state, e.to_state) for e in hook.of_type(BreakerTransition)] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_probe_failure_opens_again_for_a_full_break(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = make_breaker(clock, hook)
    open_circuit(breaker)
    clock.advance(31.0)
    admission = breaker.acquire()
    assert admission.code == PROBE
    breaker.record(False, probe=admission.probe)
    assert breaker.state == "open"
    assert breaker.snapshot().break_until == pytest.approx(clock.wall() + 30.0)
    assert hook.of_type(BreakerTransition)[-1] == BreakerTransition("payment", "half_open", "open")


def test_half_open_admits_exactly_one_probe(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    clock.advance(30.0)
    assert breaker.acquire().code == PROBE
    for _ in range(3):
        with pytest.raises(BrokenCircuitError) as caught:
            breaker.acquire()
        assert caught.value.state == "half_open"


def test_only_one_of_many_threads_gets_the_probe() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_circuit(breaker)
    clock.advance(30.0)
    admitted: list[int] = []
    start = threading.Barrier(16)

    def contend() -> None:
        start.wait()
        try:
            admitted.append(breaker.acquire().code)
        except BrokenCircuitError:
            pass

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert admitted == [PROBE]


def test_a_lost_probe_frees_itself_after_the_probe_timeout(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    clock.advance(30.0)
    assert breaker.acquire().code == PROBE  # never reported back
    clock.advance(4.9)
    with pytest.raises(BrokenCircuitError):
        breaker.acquire()
    clock.advance(0.2)
    assert breaker.acquire().code == PROBE


def test_a_released_probe_lets_the_next_call_probe(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    clock.advance(30.0)
    admission = breaker.acquire()
    assert admission.code == PROBE
    breaker.release(probe=admission.probe)
    assert breaker.acquire().code == PROBE


def test_isolate_rejects_until_reset_and_reset_clears_the_window(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = make_breaker(clock, hook)
    feed(breaker, 1, 5)
    snapshot = breaker.isolate()
    assert (snapshot.state, snapshot.break_until) == ("isolated", None)
    clock.advance(3600)
    with pytest.raises(BrokenCircuitError) as caught:
        breaker.acquire()
    assert caught.value.state == "isolated" and caught.value.break_until is None
    snapshot = breaker.reset()
    assert (snapshot.state, snapshot.throughput) == ("closed", 0)
    assert breaker.acquire().code == ADMIT
    assert [(e.from_state, e.to_state) for e in hook.of_type(BreakerTransition)] == [
        ("closed", "isolated"), ("isolated", "closed")]


def test_reset_of_an_open_circuit_closes_it(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    assert breaker.reset().state == "closed"
    assert breaker.acquire().code == ADMIT


def test_failures_recorded_while_open_do_not_extend_the_break(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    open_circuit(breaker)
    clock.advance(20.0)
    breaker.record(False)  # a straggler admitted before the circuit opened
    clock.advance(10.0)
    assert breaker.acquire().code == PROBE


def test_two_breakers_on_one_store_share_the_circuit(clock: FakeClock) -> None:
    store = LocalBreakerStore(clock=clock, wall_clock=clock.wall)
    first = CircuitBreaker("inventory", store=store, clock=clock, minimum_throughput=2)
    second = CircuitBreaker("inventory", store=store, clock=clock, minimum_throughput=2)
    first.record(False)
    first.record(False)
    assert second.state == "open"


def test_a_hook_that_raises_does_not_break_the_circuit(clock: FakeClock) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    breaker = CircuitBreaker("payment", hooks=[broken], clock=clock, minimum_throughput=1)
    breaker.acquire()
    breaker.record(False)
    assert breaker.state == "open"


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_ratio=0.0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", minimum_throughput=0)
