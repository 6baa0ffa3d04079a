"""The payment service (critical): real-time capture under `[dependencies.payment]`, and the ledger.

The workers use the same client with a pipeline of their own: it shares the API's `payment` circuit, with
their own attempt timeout and no in-call retries (the outbox schedules theirs).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from app.adapters.http import HttpResponse, HttpTimeoutError, HttpTransport, HttpTransportError
from app.adapters.http.outcomes import error_text
from app.domain import AttemptRecord, payment_key
from app.resilience import (
    BrokenCircuitError,
    BulkheadRejectedError,
    CircuitBreaker,
    ResiliencePipeline,
    ResilienceTimeoutError,
    is_retryable_status,
)
from app.services.ports import CaptureResult

__all__ = ["PAYMENT_RETRYABLE_LATER", "PaymentClient"]

# A 409 says the same key is still being processed (a worker's call while the API's is in flight): the job
# tries again later. It is not an in-call retry nor a circuit failure (CONTRACT sections 4-6).
PAYMENT_RETRYABLE_LATER = frozenset({409})


def _captured_payment_id(response: HttpResponse, order_id: str) -> str | None:
    """The payment id of a 2xx answer that shows a capture of `order_id`, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("id") is None:
        return None
    if body.get("status", "captured") != "captured" or body.get("order_id", order_id) != order_id:
        return None
    return str(body["id"])


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class PaymentClient:
    """Captures payments; implements both the API's PaymentGateway and the workers' JobPaymentGateway."""

    def __init__(self, base_url: str, transport: HttpTransport, pipeline: ResiliencePipeline[Any],
                 breaker: CircuitBreaker | None, *, lookup_timeout: float = 2.0) -> None:
        self._url = base_url
        self._transport = transport
        self._pipeline = pipeline
        self._breaker = breaker
        self._lookup_timeout = lookup_timeout

    def circuit_allows_calls(self) -> bool:
        if self._breaker is None:
            return True
        try:
            return self._breaker.state not in ("open", "isolated")
        except Exception:  # state unknown: let the pipeline decide on the call itself
            return True

    def circuit_break_until(self) -> float | None:
        if self._breaker is None:
            return None
        try:
            snapshot = self._breaker.snapshot()
        except Exception:  # state unknown: let the pipeline decide on the call itself
            return None
        if snapshot.state == "open":
            return snapshot.break_until or time.time() + 1.0
        if snapshot.state == "isolated":
            return time.time() + 5.0  # until someone resets it; look again shortly
        return None

    def capture(self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float,
                source: str) -> CaptureResult:
        attempts: list[AttemptRecord] = []
        body = {"order_id": order_id, "customer_id": customer_id, "amount": amount, "currency": currency}
        headers = {"Idempotency-Key": payment_key(order_id)}
        url = f"{self._url}/payments"

        def attempt(call: Any) -> HttpResponse:
            started_at, started = datetime.now(UTC), time.monotonic()
            try:
                response = self._transport.request("POST", url, deadline=call.deadline, json=body, headers=headers)
            except HttpTimeoutError as exc:
                attempts.append(AttemptRecord(source, started_at, _ms(started), "timeout", None, str(exc)[:500]))
                raise
            except HttpTransportError as exc:
                attempts.append(AttemptRecord(source, started_at, _ms(started), "connection_error", None,
                                              str(exc)[:500]))
                raise
            success = 200 <= response.status < 300
            outcome = "captured" if success else "declined" if response.status == 402 else "error"
            error = None if success or response.status == 402 else response.body[:300].decode("utf-8", "replace")
            attempts.append(AttemptRecord(source, started_at, _ms(started), outcome, response.status, error))
            return response

        try:
            response = self._pipeline.execute(attempt, deadline=deadline, operation="capture",
                                              context={"order_id": order_id})
        except (BrokenCircuitError, BulkheadRejectedError) as exc:
            return CaptureResult("not_attempted" if not attempts else "failed", attempts=tuple(attempts),
                                 error=error_text(exc))
        except (ResilienceTimeoutError, HttpTransportError) as exc:
            return CaptureResult("failed", attempts=tuple(attempts), error=error_text(exc))
        status = response.status
        if 200 <= status < 300:
            payment_id = _captured_payment_id(response, order_id)
            if payment_id is None:
                # A success that does not show a capture of this order: not a "no". The job tries again under
                # the same key, and the ledger decides before anything is given up.
                return CaptureResult("failed", attempts=tuple(attempts), http_status=status,
                                     error=f"HTTP {status} without a capture of the order")
            return CaptureResult("captured", payment_id=payment_id, attempts=tuple(attempts), http_status=status)
        if status == 402:
            return CaptureResult("declined", attempts=tuple(attempts), http_status=status, error="declined")
        error = f"HTTP {status}: {response.body[:200].decode('utf-8', 'replace')}"
        if is_retryable_status(status) or status in PAYMENT_RETRYABLE_LATER:
            return CaptureResult("failed", attempts=tuple(attempts), http_status=status, error=error,
                                 retry_after=response.retry_after())
        return CaptureResult("rejected", attempts=tuple(attempts), http_status=status, error=error)

    def lookup_captures(self, order_id: str, *, deadline: float) -> list[dict[str, object]] | None:
        """The payment service's ledger for the order. A read, not a payment attempt: it is not counted."""
        try:
            response = self._transport.request(
                "GET", f"{self._url}/payments", params={"order_id": order_id},
                deadline=min(deadline, time.monotonic() + self._lookup_timeout),
            )
            if response.status != 200:
                return None
            items = response.json().get("items")
        except (HttpTransportError, ValueError, AttributeError):
            return None
        if not isinstance(items, list):
            return None
        return [item for item in items if isinstance(item, dict) and item.get("order_id") == order_id
                and item.get("status", "captured") == "captured"]
