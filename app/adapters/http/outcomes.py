"""How the resilience pipelines read the outcome of an HTTP attempt (CONTRACT section 6)."""

from __future__ import annotations

from app.resilience import Outcome, ResilienceTimeoutError, is_retryable_status

from .transport import HttpResponse, HttpTimeoutError, HttpTransportError

__all__ = ["error_text", "http_failure", "http_retry_after", "http_timeout"]


def http_failure(outcome: Outcome) -> bool:
    """What the contract retries and the circuit counts as a failure: transport errors, timeouts, 408/429/5xx."""
    if outcome.exception is not None:
        return isinstance(outcome.exception, HttpTransportError | ResilienceTimeoutError)
    result = outcome.result
    return isinstance(result, HttpResponse) and is_retryable_status(result.status)


def http_timeout(exc: BaseException) -> bool:
    return isinstance(exc, HttpTimeoutError)


def http_retry_after(outcome: Outcome) -> float | None:
    result = outcome.result
    return result.retry_after() if isinstance(result, HttpResponse) else None


def error_text(exc: BaseException) -> str:
    """An error and its cause in one line, short enough for a log field or an attempt record."""
    cause = exc.__cause__
    text = f"{type(exc).__name__}: {exc}"
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text[:500]
