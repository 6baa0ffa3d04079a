"""Attempt and total timeouts as absolute monotonic deadlines.

The pipeline never interrupts a call: it hands each attempt the earliest of (its own limit, the total
deadline, the caller's deadline) and the transport enforces it. Knowing which of them was the earliest is
what lets a timeout be reported as kind "attempt" or "total" (the caller's deadline counts as "total").
"""

from __future__ import annotations

from .events import TimeoutKind


class ResilienceTimeoutError(TimeoutError):
    """A deadline of the pipeline passed. Always a failure for retry and circuit breaker."""

    kind: TimeoutKind = "total"

    def __init__(self, message: str = "", *, service: str = "", deadline: float | None = None) -> None:
        super().__init__(message or f"{service or 'call'}: {self.kind} timeout")
        self.service = service
        self.deadline = deadline


class AttemptTimeoutError(ResilienceTimeoutError):
    kind: TimeoutKind = "attempt"


class TotalTimeoutError(ResilienceTimeoutError):
    kind: TimeoutKind = "total"


def earliest(first: float | None, second: float | None) -> float | None:
    """The earlier of two optional deadlines (None = unbounded)."""
    if first is None:
        return second
    if second is None:
        return first
    return first if first < second else second


def attempt_deadline(
    now: float, attempt_timeout: float | None, bound: float | None
) -> tuple[float, TimeoutKind]:
    """The deadline of one attempt and the kind of timeout it would be if it passed.

    `bound` is the total deadline already merged with the caller's. With neither an attempt timeout nor a
    bound the attempt is unbounded (infinity), which the transport must then treat as "no deadline".
    """
    if attempt_timeout is None:
        return (bound, "total") if bound is not None else (float("inf"), "total")
    own = now + attempt_timeout
    if bound is not None and bound <= own:
        return bound, "total"
    return own, "attempt"


def timeout_error(kind: TimeoutKind, *, service: str, deadline: float | None) -> ResilienceTimeoutError:
    cls = AttemptTimeoutError if kind == "attempt" else TotalTimeoutError
    return cls(service=service, deadline=deadline)
