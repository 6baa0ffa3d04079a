from __future__ import annotations

import logging
import threading
import time

import pytest

from app.resilience import Attempt, CircuitBreaker, HedgingPolicy, LoggingHook, RecordingHook, ResiliencePipeline
from app.resilience.events import HedgeStarted, RetryScheduled, TimeoutOccurred
from app.resilience.retry import RetryPolicy
from tests.resilience.conftest import FakeClock, ScriptedHedging


def hedged_pipeline(hook: RecordingHook, **options: object) -> ResiliencePipeline[str]:
    return ResiliencePipeline("inventory", attempt_timeout=2.0, total_timeout=3.0,
                              hedging=HedgingPolicy(max_hedged_attempts=1, delay=0.05), hooks=[hook],
                              **options)  # type: ignore[arg-type]


def test_a_fast_first_attempt_is_not_hedged() -> None:
    hook = RecordingHook()
    assert hedged_pipeline(hook).execute(lambda attempt: "fast") == "fast"
    assert hook.of_type(HedgeStarted) == []


def test_a_slow_first_attempt_is_raced_and_the_hedge_wins() -> None:
    hook = RecordingHook()
    release = threading.Event()
    attempts: list[Attempt] = []

    def call(attempt: Attempt) -> str:
        attempts.append(attempt)
        if not attempt.hedged:
            release.wait(2.0)  # the slow primary
            return "primary"
        return "hedge"

    started = time.monotonic()
    assert hedged_pipeline(hook).execute(call) == "hedge"
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 1.0
    assert hook.of_type(HedgeStarted) == [HedgeStarted("inventory")]
    assert [a.hedged for a in attempts] == [False, True]


def test_hedges_are_capped_at_max_hedged_attempts() -> None:
    hook = RecordingHook()
    release = threading.Event()
    count = []

    def call(attempt: Attempt) -> str:
        count.append(attempt.hedged)
        # Long enough for both hedges to start on a loaded machine, and for a third to show if uncapped.
        release.wait(1.0)
        return "late"

    pipeline = ResiliencePipeline("inventory", attempt_timeout=2.0,
                                  hedging=HedgingPolicy(max_hedged_attempts=2, delay=0.02), hooks=[hook])
    assert pipeline.execute(call) == "late"
    release.set()
    assert len(hook.of_type(HedgeStarted)) == 2
    assert len(count) == 3


def scripted_pipeline(clock: FakeClock, hook: RecordingHook, script: ScriptedHedging,
                      **options: object) -> ResiliencePipeline[str]:
    hedging = HedgingPolicy(max_hedged_attempts=1, delay=0.05, launch=script.launch, receive=script.receive)
    return ResiliencePipeline("inventory", attempt_timeout=2.0, total_timeout=3.0, hedging=hedging, hooks=[hook],
                              clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


def test_when_every_attempt_fails_the_retry_policy_decides(clock: FakeClock) -> None:
    """The slow first attempt never answers within its deadline, its hedge fails: the retry policy decides,
    and the retry succeeds."""
    hook, script = RecordingHook(), ScriptedHedging(clock)

    def call(attempt: Attempt) -> str:
        if attempt.number == 0:
            raise ConnectionError("down")
        return "recovered"

    pipeline = scripted_pipeline(clock, hook, script, retry=RetryPolicy(max_retries=1, base_delay=0.0,
                                                                         jitter=False))
    assert pipeline.execute(call) == "recovered"
    assert len(hook.of_type(HedgeStarted)) == 1
    assert len(hook.of_type(RetryScheduled)) == 1


def test_hedges_are_counted_by_the_circuit(clock: FakeClock) -> None:
    breaker = CircuitBreaker("inventory", clock=clock, wall_clock=clock.wall)
    script = ScriptedHedging(clock)
    assert scripted_pipeline(clock, RecordingHook(), script, breaker=breaker).execute(lambda attempt: "ok") == "ok"
    assert breaker.snapshot().throughput == 1  # the hedge answered; the slow first attempt is still running
    script.release_primary()
    assert breaker.snapshot().throughput == 2


def test_nothing_back_by_the_deadline_is_a_timeout() -> None:
    hook = RecordingHook()
    release = threading.Event()
    pipeline = ResiliencePipeline("inventory", attempt_timeout=0.1,
                                  hedging=HedgingPolicy(max_hedged_attempts=1, delay=0.02), hooks=[hook])
    with pytest.raises(TimeoutError):
        pipeline.execute(lambda attempt: release.wait(1.0))
    release.set()
    assert hook.of_type(TimeoutOccurred)[0].kind == "attempt"


def test_logging_hook_writes_one_structured_record_per_event(caplog: pytest.LogCaptureFixture) -> None:
    hook = LoggingHook()
    pipeline = ResiliencePipeline("payment", retry=RetryPolicy(max_retries=1, base_delay=0.0), hooks=[hook],
                                  sleep=lambda s: None)
    outcomes = iter([ConnectionError(), "ok"])

    def call(attempt: Attempt) -> str:
        answer = next(outcomes)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level(logging.INFO, logger="orderflow.resilience"):
        pipeline.execute(call)
    events = [record.event for record in caplog.records]  # type: ignore[attr-defined]
    assert events == ["AttemptFinished", "RetryScheduled", "AttemptFinished", "CallFinished"]
    retry = caplog.records[1]
    assert (retry.service, retry.attempt, retry.reason) == (  # type: ignore[attr-defined]
        "payment", 1, "exception:ConnectionError")
