from __future__ import annotations

import random

import pytest

from app.resilience.backoff import compute_delay, constant_delay, exponential_delay, full_jitter_delay
from app.resilience.retry import RetryPolicy


def test_exponential_doubles_until_the_cap() -> None:
    assert [exponential_delay(n, 0.2, 2.0) for n in range(6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_exponential_stays_finite_for_huge_retry_counts() -> None:
    assert exponential_delay(10_000, 1.0, 60.0) == 60.0


def test_constant_is_the_base_capped() -> None:
    assert [constant_delay(n, 0.2, 0.2) for n in range(4)] == [0.2] * 4
    assert constant_delay(3, 5.0, 1.0) == 1.0


def test_full_jitter_stays_within_zero_and_the_cap_with_subsecond_values(rng: random.Random) -> None:
    draws = [full_jitter_delay(n % 8, 1.0, 60.0, rng.random) for n in range(5000)]
    caps = [min(60.0, 2.0 ** (n % 8)) for n in range(5000)]
    assert all(0.0 <= d <= c for d, c in zip(draws, caps, strict=True))
    assert any(0.0 < d < 1.0 and d != round(d) for d in draws)
    assert max(d for d, c in zip(draws, caps, strict=True) if c == 60.0) > 50.0  # the range is used


def test_full_jitter_uses_the_injected_random() -> None:
    assert full_jitter_delay(3, 1.0, 60.0, lambda: 0.5) == 4.0
    assert full_jitter_delay(10, 1.0, 60.0, lambda: 0.999) == pytest.approx(59.94)


def test_compute_delay_without_jitter_ignores_the_random() -> None:
    assert compute_delay(2, base=0.1, cap=1.0, kind="exponential", jitter=False, rng=lambda: 0.0) == 0.4
    assert compute_delay(2, base=0.2, cap=0.2, kind="constant", jitter=False) == 0.2


def test_retry_after_replaces_the_backoff_but_is_capped() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=0.2, max_delay=2.0)
    assert policy.delay(0, retry_after=1.5, rng=lambda: 0.0) == 1.5
    assert policy.delay(0, retry_after=120.0, rng=lambda: 0.0) == 2.0
    assert policy.delay(0, retry_after=-3.0) == 0.0
    assert policy.delay(1, rng=lambda: 0.5) == pytest.approx(0.2)
