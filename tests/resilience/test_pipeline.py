from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from app.policies import DEFAULTS
from app.resilience import (
    Attempt,
    AttemptTimeoutError,
    BreakerConfig,
    BrokenCircuitError,
    Bulkhead,
    BulkheadRejectedError,
    CircuitBreaker,
    Fallback,
    Outcome,
    RecordingHook,
    ResiliencePipeline,
    RetryBudget,
    RetryPolicy,
    TotalTimeoutError,
    build_pipeline,
    is_retryable_status,
)
from app.resilience.events import (
    AttemptFinished,
    BreakerTransition,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    FallbackExecuted,
    RetryScheduled,
    TimeoutOccurred,
)

from .conftest import FakeClock


@dataclass
class Response:
    status: int
    retry_after: float | None = None


def http_failure(outcome: Outcome) -> bool:
    if outcome.exception is not None:
        return isinstance(outcome.exception, ConnectionError | TimeoutError)
    return is_retryable_status(outcome.result.status)


def header_retry_after(outcome: Outcome) -> float | None:
    return outcome.result.retry_after if outcome.exception is None else None


def script(*answers: Any, clock: FakeClock | None = None, takes: float = 0.0) -> Callable[[Attempt], Any]:
    """A call answering from a list: Responses are returned, exceptions raised; `takes` advances the clock."""
    queue: Iterator[Any] = iter(answers)
    seen: list[Attempt] = []

    def call(attempt: Attempt) -> Any:
        seen.append(attempt)
        if clock is not None:
            clock.advance(takes)
        answer = next(queue)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    call.attempts = seen  # type: ignore[attr-defined]
    return call


def make(clock: FakeClock, hook: RecordingHook, **options: Any) -> ResiliencePipeline[Any]:
    options.setdefault("retry", RetryPolicy(max_retries=2, base_delay=0.2, max_delay=2.0, jitter=False))
    options.setdefault("is_failure", http_failure)
    options.setdefault("retry_after", header_retry_after)
    return ResiliencePipeline("payment", hooks=[hook], clock=clock, sleep=clock.sleep,
                              rng=lambda: 0.5, **options)


def test_a_success_returns_the_result_with_one_attempt(clock: FakeClock) -> None:
    hook = RecordingHook()
    call = script(Response(201))
    assert make(clock, hook).execute(call).status == 201
    assert len(call.attempts) == 1  # type: ignore[attr-defined]
    assert hook.of_type(CallFinished) == [CallFinished("payment", "success", 0.0)]
    assert hook.of_type(AttemptFinished) == [AttemptFinished("payment", True, 0.0)]


def test_failing_results_are_retried_with_backoff_and_the_last_result_returned(clock: FakeClock) -> None:
    hook = RecordingHook()
    call = script(Response(503), Response(502), Response(500))
    result = make(clock, hook).execute(call)
    assert result.status == 500
    assert [a.number for a in call.attempts] == [0, 1, 2]  # type: ignore[attr-defined]
    assert clock.sleeps == [0.2, 0.4]
    assert hook.of_type(RetryScheduled) == [
        RetryScheduled("payment", 1, 0.2, "result"), RetryScheduled("payment", 2, 0.4, "result")]
    assert hook.of_type(CallFinished)[-1].outcome == "failure"


def test_failing_exceptions_are_retried_and_the_last_one_reraised(clock: FakeClock) -> None:
    call = script(ConnectionError("refused"), ConnectionError("reset"), ConnectionError("last"))
    with pytest.raises(ConnectionError, match="last"):
        make(clock, RecordingHook()).execute(call)


def test_a_retry_that_succeeds_returns_its_result(clock: FakeClock) -> None:
    call = script(ConnectionError(), Response(201))
    assert make(clock, RecordingHook()).execute(call).status == 201


@pytest.mark.parametrize("status", [400, 401, 402, 404, 409, 422])
def test_other_4xx_are_never_retried(clock: FakeClock, status: int) -> None:
    call = script(Response(status), Response(201))
    assert make(clock, RecordingHook()).execute(call).status == status
    assert len(call.attempts) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(clock: FakeClock, status: int) -> None:
    call = script(Response(status), Response(201))
    assert make(clock, RecordingHook()).execute(call).status == 201


def test_unhandled_exceptions_propagate_at_once_and_count_as_neither(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payment", clock=clock, minimum_throughput=1)
    call = script(KeyError("bug"), Response(201))
    with pytest.raises(KeyError):
        make(clock, RecordingHook(), breaker=breaker).execute(call)
    assert len(call.attempts) == 1  # type: ignore[attr-defined]
    assert breaker.snapshot().throughput == 0


def test_retry_after_is_honoured_up_to_max_delay(clock: FakeClock) -> None:
    call = script(Response(429, retry_after=1.25), Response(503, retry_after=30.0), Response(201))
    make(clock, RecordingHook()).execute(call)
    assert clock.sleeps == [1.25, 2.0]


def test_jitter_draws_from_the_injected_random(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), retry=RetryPolicy(max_retries=2, base_delay=0.2, max_delay=2.0))
    pipeline.execute(script(Response(503), Response(503), Response(201)))
    assert clock.sleeps == pytest.approx([0.1, 0.2])  # rng() = 0.5 of 0.2 and 0.4


def test_no_retry_when_its_delay_would_cross_the_total_deadline(clock: FakeClock) -> None:
    hook = RecordingHook()
    pipeline = make(clock, hook, total_timeout=1.0,
                    retry=RetryPolicy(max_retries=5, base_delay=0.4, max_delay=2.0, jitter=False))
    call = script(*[Response(503)] * 6, clock=clock, takes=0.1)
    assert pipeline.execute(call).status == 503
    # 0.1 + 0.4 + 0.1 = 0.6; a 0.8 s delay would end at 1.4 > 1.0
    assert len(call.attempts) == 2  # type: ignore[attr-defined]
    assert clock.now <= 1000.0 + 1.0


def test_the_callers_deadline_bounds_retries_too(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), total_timeout=8.0)
    call = script(Response(503), Response(503), Response(201))
    assert pipeline.execute(call, deadline=clock.now + 0.1).status == 503
    assert clock.sleeps == []


def test_each_attempt_gets_the_earliest_deadline(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), attempt_timeout=5.0, total_timeout=8.0)
    call = script(ConnectionError(), Response(201), clock=clock, takes=5.0)
    pipeline.execute(call)
    first, second = call.attempts  # type: ignore[attr-defined]
    assert first.deadline == 1005.0  # attempt timeout is the earliest
    assert second.deadline == 1008.0  # then the total deadline
    assert second.remaining() == 0.0  # read after the clock passed it: never negative


def test_a_timeout_bound_by_the_attempt_is_an_attempt_timeout(clock: FakeClock) -> None:
    hook = RecordingHook()
    pipeline = make(clock, hook, attempt_timeout=1.0, total_timeout=8.0,
                    retry=RetryPolicy(max_retries=0))
    with pytest.raises(AttemptTimeoutError) as caught:
        pipeline.execute(script(TimeoutError("read timed out")))
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert hook.of_type(TimeoutOccurred) == [TimeoutOccurred("payment", "attempt")]


def test_a_timeout_bound_by_the_total_or_caller_deadline_is_a_total_timeout(clock: FakeClock) -> None:
    hook = RecordingHook()
    pipeline = make(clock, hook, attempt_timeout=5.0, total_timeout=8.0, retry=RetryPolicy(max_retries=0))
    with pytest.raises(TotalTimeoutError):
        pipeline.execute(script(TimeoutError()), deadline=clock.now + 2.0)
    assert hook.of_type(TimeoutOccurred) == [TimeoutOccurred("payment", "total")]


def test_timeouts_are_failures_even_for_a_predicate_that_ignores_them(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), attempt_timeout=1.0, is_failure=lambda outcome: False)
    assert pipeline.execute(script(TimeoutError(), Response(201))).status == 201


def test_a_custom_timeout_classifier_maps_transport_errors(clock: FakeClock) -> None:
    class ReadTimeout(Exception):
        pass

    hook = RecordingHook()
    pipeline = make(clock, hook, attempt_timeout=1.0, is_timeout=lambda exc: isinstance(exc, ReadTimeout),
                    retry=RetryPolicy(max_retries=0))
    with pytest.raises(AttemptTimeoutError):
        pipeline.execute(script(ReadTimeout()))
    assert hook.of_type(TimeoutOccurred)[0].kind == "attempt"


def test_an_open_circuit_raises_fast_without_calling(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = CircuitBreaker("payment", minimum_throughput=2, clock=clock, wall_clock=clock.wall)
    pipeline = make(clock, hook, breaker=breaker, retry=RetryPolicy(max_retries=0))
    pipeline.execute(script(Response(503)))
    pipeline.execute(script(Response(503)))
    call = script(Response(201))
    with pytest.raises(BrokenCircuitError) as caught:
        pipeline.execute(call)
    assert call.attempts == []  # type: ignore[attr-defined]
    assert caught.value.break_until == pytest.approx(clock.wall() + 30.0)
    assert hook.of_type(CallFinished)[-1].outcome == "broken"


def test_every_attempt_counts_in_the_circuit(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payment", clock=clock)
    make(clock, RecordingHook(), breaker=breaker).execute(script(Response(503), ConnectionError(), Response(201)))
    snapshot = breaker.snapshot()
    assert (snapshot.throughput, snapshot.failure_ratio) == (3, pytest.approx(2 / 3))


def test_a_circuit_opening_between_attempts_stops_the_retries(clock: FakeClock) -> None:
    hook = RecordingHook()
    breaker = CircuitBreaker("payment", minimum_throughput=1, clock=clock, hooks=[hook])
    call = script(Response(503), Response(201))
    with pytest.raises(BrokenCircuitError):
        make(clock, hook, breaker=breaker).execute(call)
    assert len(call.attempts) == 1  # type: ignore[attr-defined]
    assert clock.sleeps == []  # no sleep just to find the circuit open


def test_budget_exhaustion_stops_retrying_and_emits_an_event(clock: FakeClock) -> None:
    hook = RecordingHook()
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, clock=clock)
    pipeline = make(clock, hook, budget=budget, retry=RetryPolicy(max_retries=3, jitter=False))
    # 1 call earns 0.5 retries: not even one fits
    assert pipeline.execute(script(Response(503), Response(201))).status == 503
    assert hook.of_type(BudgetExhausted) == [BudgetExhausted("payment")]
    # 2 calls earn 1 retry
    assert pipeline.execute(script(Response(503), Response(201))).status == 201


def test_budget_in_the_breakers_store_is_charged_by_the_same_admission(clock: FakeClock) -> None:
    hook = RecordingHook()
    lenient = BreakerConfig(failure_ratio=1.0)  # keep the circuit out of this test
    config = replace(DEFAULTS.dependencies["payment"], circuit_breaker=lenient)
    pipeline = build_pipeline("payment", config, hooks=[hook], clock=clock,
                              wall_clock=clock.wall, sleep=clock.sleep, rng=lambda: 0.5,
                              is_failure=http_failure)
    assert pipeline.budget is not None and pipeline.breaker is not None
    assert pipeline.budget.store is pipeline.breaker.store
    # min_per_second 5 over a 10 s window: 50 free retries, then 20 % of calls
    results = [pipeline.execute(script(Response(503), Response(201))).status for _ in range(100)]
    assert results[:60] == [201] * 60
    assert 62 <= results.count(201) <= 70  # r + 1 <= 0.2 * c + 50
    assert len(hook.of_type(BudgetExhausted)) == results.count(503)


def test_bulkhead_rejection_is_immediate_and_uncounted(clock: FakeClock) -> None:
    hook = RecordingHook()
    bulkhead = Bulkhead(max_concurrency=1, max_queue=0)
    breaker = CircuitBreaker("payment", clock=clock)
    pipeline = make(clock, hook, bulkhead=bulkhead, breaker=breaker)
    bulkhead.acquire()
    with pytest.raises(BulkheadRejectedError):
        pipeline.execute(script(Response(201)))
    assert hook.of_type(BulkheadRejected) == [BulkheadRejected("payment")]
    assert hook.of_type(CallFinished)[-1].outcome == "rejected"
    assert breaker.snapshot().throughput == 0


def test_the_bulkhead_slot_is_held_across_retries_and_released(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrency=1, max_queue=0)
    actives: list[int] = []

    def call(attempt: Attempt) -> Response:
        actives.append(bulkhead.active)
        return Response(503 if attempt.number == 0 else 201)

    make(clock, RecordingHook(), bulkhead=bulkhead).execute(call)
    assert actives == [1, 1]
    assert bulkhead.active == 0


@pytest.mark.parametrize(
    "failure",
    ["broken", "bulkhead", "timeout", "exhausted_exception", "exhausted_result"],
)
def test_fallback_runs_on_every_kind_of_failure(clock: FakeClock, failure: str) -> None:
    hook = RecordingHook()
    seen: list[Outcome] = []

    def fallback(outcome: Outcome) -> str:
        seen.append(outcome)
        return "queued"

    options: dict[str, Any] = {"fallback": fallback, "retry": RetryPolicy(max_retries=0)}
    call = script(Response(503))
    if failure == "broken":
        options["breaker"] = CircuitBreaker("payment", clock=clock)
        options["breaker"].isolate()
    elif failure == "bulkhead":
        options["bulkhead"] = Bulkhead(max_concurrency=1)
        options["bulkhead"].acquire()
    elif failure == "timeout":
        options["attempt_timeout"] = 1.0
        call = script(TimeoutError())
    elif failure == "exhausted_exception":
        call = script(ConnectionError())
    assert make(clock, hook, **options).execute(call) == "queued"
    assert len(seen) == 1 and seen[0].failed
    assert hook.of_type(FallbackExecuted) == [FallbackExecuted("payment")]
    assert hook.of_type(CallFinished)[-1].outcome == "fallback"


def test_fallback_is_not_used_for_successes_or_unhandled_exceptions(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), fallback=lambda outcome: "fallback")
    assert pipeline.execute(script(Response(402))).status == 402
    with pytest.raises(ValueError):
        pipeline.execute(script(ValueError()))


def test_fallback_can_leave_failing_results_alone(clock: FakeClock) -> None:
    pipeline = make(clock, RecordingHook(), retry=RetryPolicy(max_retries=0),
                    fallback=Fallback(lambda outcome: "fallback", on_results=False))
    assert pipeline.execute(script(Response(503))).status == 503
    assert pipeline.execute(script(ConnectionError())) == "fallback"


def test_the_order_is_fallback_total_bulkhead_retry_breaker_attempt(clock: FakeClock) -> None:
    """Breaker inside retry: each attempt is counted; bulkhead outside retry: one slot per call."""
    hook = RecordingHook()
    bulkhead = Bulkhead(max_concurrency=1)
    breaker = CircuitBreaker("payment", clock=clock, hooks=[hook], minimum_throughput=2)
    pipeline = make(clock, hook, bulkhead=bulkhead, breaker=breaker, attempt_timeout=1.0, total_timeout=8.0,
                    fallback=lambda outcome: "fallback")
    assert pipeline.execute(script(ConnectionError(), ConnectionError(), Response(201))) == "fallback"
    kinds = [type(event).__name__ for event in hook.events]
    assert kinds == ["AttemptFinished", "RetryScheduled", "BreakerTransition", "AttemptFinished",
                     "FallbackExecuted", "CallFinished"]
    assert hook.of_type(BreakerTransition)[0].to_state == "open"
    assert bulkhead.active == 0


def test_hooks_that_raise_never_reach_the_caller(clock: FakeClock) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("metrics down")

    pipeline = ResiliencePipeline("payment", retry=RetryPolicy(max_retries=1, jitter=False), hooks=[broken],
                                  clock=clock, sleep=clock.sleep)
    assert pipeline.execute(script(ConnectionError(), "ok")) == "ok"


def test_attempt_carries_operation_and_context(clock: FakeClock) -> None:
    call = script(Response(201))
    make(clock, RecordingHook()).execute(call, operation="capture", context={"order_id": "o-1"})
    attempt = call.attempts[0]  # type: ignore[attr-defined]
    assert (attempt.operation, attempt.context["order_id"], attempt.hedged) == ("capture", "o-1", False)


def test_a_pipeline_with_no_policies_just_calls(clock: FakeClock) -> None:
    pipeline: ResiliencePipeline[str] = ResiliencePipeline("plain", clock=clock)
    assert pipeline.execute(lambda attempt: "ok") == "ok"
    with pytest.raises(ConnectionError):
        pipeline.execute(script(ConnectionError()))


def test_build_pipeline_follows_the_policy_file(clock: FakeClock) -> None:
    payment = build_pipeline("payment", DEFAULTS.dependencies["payment"], clock=clock)
    assert (payment.attempt_timeout, payment.total_timeout) == (5.0, 8.0)
    assert payment.retry is not None and payment.retry.max_retries == 1
    assert payment.breaker is not None and payment.breaker.spec.break_duration == 30.0
    assert payment.bulkhead is not None and payment.bulkhead.max_queue == 20
    assert payment.hedging is None
    inventory = build_pipeline("inventory", DEFAULTS.dependencies["inventory"], clock=clock)
    assert inventory.hedging is not None and inventory.hedging.delay == 0.5
    notification = build_pipeline("notification", DEFAULTS.dependencies["notification"], clock=clock)
    assert notification.breaker is None and notification.bulkhead is None and notification.budget is None
    worker = build_pipeline("payment", DEFAULTS.dependencies["payment"], clock=clock, attempt_timeout=10.0,
                            total_timeout=10.0, max_retries=0)
    assert worker.attempt_timeout == 10.0 and worker.retry is not None and worker.retry.max_retries == 0
