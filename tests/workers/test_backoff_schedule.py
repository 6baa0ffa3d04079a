"""The payment job's retry schedule: full jitter over [0, min(backoff_max, backoff_base * 2**n)]."""

from __future__ import annotations

from typing import Any

import pytest

from app.policies import JobsPaymentConfig
from app.services.payment_jobs import PaymentJobRunner


def runner(rng: Any, *, base: float = 1.0, cap: float = 60.0) -> PaymentJobRunner:
    config = JobsPaymentConfig(attempt_timeout=10.0, max_retries=6, backoff_base=base, backoff_max=cap)
    return PaymentJobRunner(uow=None, gateway=None, config=config, rng=rng)  # type: ignore[arg-type]


@pytest.mark.parametrize("retries, ceiling", [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)])
def test_delay_spans_zero_to_base_times_two_to_the_retries(retries: int, ceiling: float) -> None:
    assert runner(lambda: 0.0).retry_delay(retries) == 0.0
    assert runner(lambda: 0.999999).retry_delay(retries) == pytest.approx(ceiling * 0.999999)
    assert runner(lambda: 0.5).retry_delay(retries) == pytest.approx(ceiling / 2)


@pytest.mark.parametrize("retries", [6, 7, 20, 500])
def test_delay_is_capped_at_backoff_max(retries: int) -> None:
    assert runner(lambda: 0.999999).retry_delay(retries) == pytest.approx(60.0 * 0.999999)
    assert runner(lambda: 0.25).retry_delay(retries) == pytest.approx(15.0)


def test_delay_keeps_sub_second_precision() -> None:
    delay = runner(lambda: 0.123456, base=0.1, cap=1.0).retry_delay(1)
    assert delay == pytest.approx(0.0246912)
    assert 0 < delay < 1 and delay != round(delay)


def test_retry_after_raises_the_delay_but_never_past_backoff_max() -> None:
    assert runner(lambda: 0.1).retry_delay(0, retry_after=5.0) == pytest.approx(5.0)
    assert runner(lambda: 0.1).retry_delay(0, retry_after=500.0) == pytest.approx(60.0)
    # A jittered delay already longer than Retry-After is kept.
    assert runner(lambda: 0.9).retry_delay(5, retry_after=1.0) == pytest.approx(28.8)


def test_each_delay_is_drawn_from_the_random_source() -> None:
    draws = iter([0.1, 0.9])
    scheduler = runner(lambda: next(draws))
    assert [scheduler.retry_delay(3), scheduler.retry_delay(3)] == pytest.approx([0.8, 7.2])
