"""Retry: how many times and how long to wait. The loop itself runs in the pipeline (`pipeline.py`).

What is retried is the pipeline's `is_failure` predicate (the same one the circuit counts with, as the
contract wants: connection errors, timeouts, 408, 429, 5xx; never another 4xx). A `Retry-After` the
dependency sends replaces the computed backoff, capped at `max_delay`. The pipeline never sleeps past the
deadline: when the delay would cross it, the last outcome is the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .backoff import BackoffKind, compute_delay

RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """HTTP statuses worth another attempt: 408, 429 and every 5xx."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


class Outcome:
    """What one attempt (or the whole call) ended with: a result or an exception, and the verdict on it."""

    __slots__ = ("result", "exception", "failed")

    def __init__(
        self, result: Any = None, exception: BaseException | None = None, failed: bool = False
    ) -> None:
        self.result = result
        self.exception = exception
        self.failed = failed  # set by the pipeline from its predicate

    def __repr__(self) -> str:
        shown = f"exception={self.exception!r}" if self.exception is not None else f"result={self.result!r}"
        return f"Outcome({shown}, failed={self.failed})"


def exceptions_are_failures(outcome: Outcome) -> bool:
    """The default predicate: every exception is a failure worth retrying, every result a success."""
    return outcome.exception is not None


class RetryPolicy:
    def __init__(
        self,
        *,
        max_retries: int = 1,
        base_delay: float = 0.2,
        max_delay: float = 2.0,
        backoff: BackoffKind = "exponential",
        jitter: bool = True,
    ) -> None:
        if max_retries < 0 or base_delay < 0 or max_delay < 0:
            raise ValueError("max_retries, base_delay and max_delay must be >= 0")
        if backoff not in ("exponential", "constant"):
            raise ValueError(f"unknown backoff {backoff!r}")
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.backoff: BackoffKind = backoff
        self.jitter = jitter

    def delay(
        self, retries: int, *, retry_after: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before the next attempt, `retries` being how many retries already ran."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return compute_delay(retries, base=self.base_delay, cap=self.max_delay, kind=self.backoff,
                             jitter=self.jitter, rng=rng)
