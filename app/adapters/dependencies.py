"""The three HTTP dependencies, each behind its resilience pipeline.

payment (critical): real-time capture under `[dependencies.payment]`; the workers share its circuit with
their own attempt timeout and no in-call retries (the outbox schedules theirs).
inventory (degradable): live levels, cached in Redis for `cache_ttl`; the cache is the fallback.
notification (best effort): one try plus a retry, then log and move on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from app.adapters.http import HttpResponse, HttpTimeoutError, HttpTransport, HttpTransportError
from app.adapters.redis_breaker_store import RedisBreakerStore
from app.config import Settings
from app.domain import AttemptRecord, InventorySource, payment_key
from app.metrics import PrometheusHook
from app.policies import Policies
from app.resilience import (
    AttemptFinished,
    BrokenCircuitError,
    BulkheadRejectedError,
    CallFinished,
    CircuitBreaker,
    LoggingHook,
    Outcome,
    ResiliencePipeline,
    ResilienceTimeoutError,
    build_pipeline,
    is_retryable_status,
)
from app.services.ports import CaptureResult, StockLevel

log = logging.getLogger("orderflow.dependencies")

# A level this process wrote to the cache less than this long ago is not written again while it is unchanged:
# under load every order would otherwise rewrite the same value (a Redis round trip each), and the cache,
# a fallback for when the service fails, loses at most this much of its `cache_ttl`.
REWRITE_SAME_LEVEL_AFTER = 1.0


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


class DecisionLog:
    """Logs the policies' decisions (retry, transition, timeout, rejection, fallback, hedge, budget), not the
    routine attempt and call records, which the metrics count: one log line per successful call would cost
    more than the call's own policies."""

    def __init__(self) -> None:
        self._routine = (AttemptFinished, CallFinished)
        self._log = LoggingHook()

    def __call__(self, event: object) -> None:
        if not isinstance(event, self._routine):
            self._log.on_event(event)  # type: ignore[arg-type]


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


def _error_text(exc: BaseException) -> str:
    cause = exc.__cause__
    text = f"{type(exc).__name__}: {exc}"
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text[:500]


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
                                 error=_error_text(exc))
        except (ResilienceTimeoutError, HttpTransportError) as exc:
            return CaptureResult("failed", attempts=tuple(attempts), error=_error_text(exc))
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


class InventoryClient:
    """Stock levels: live when the service answers, else the last level seen (Redis, `cache_ttl`)."""

    def __init__(self, base_url: str, transport: HttpTransport, pipeline: ResiliencePipeline[Any],
                 cache: redis.Redis, *, key_prefix: str, cache_ttl: float, total_timeout: float,
                 fan_out: ThreadPoolExecutor, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._url = base_url
        self._transport = transport
        self._pipeline = pipeline
        self._cache = cache
        self._prefix = f"{key_prefix}:inventory:"
        self._ttl_ms = max(1, int(cache_ttl * 1000))
        self._total_timeout = total_timeout
        self._fan_out = fan_out
        self._rewrite_after = min(REWRITE_SAME_LEVEL_AFTER, cache_ttl / 10)
        self._written: dict[int, tuple[int, float]] = {}  # product -> (level, monotonic) this process wrote
        self._monotonic = monotonic

    def level(self, product_id: int) -> StockLevel:
        return self.levels({product_id: 1}, deadline=time.monotonic() + self._total_timeout)[product_id]

    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]:
        products = list(quantities)
        if len(products) == 1:
            live = {products[0]: self._live(products[0], deadline)}
        else:
            futures = {pid: self._fan_out.submit(self._live, pid, deadline) for pid in products}
            live = {}
            for pid, future in futures.items():
                try:
                    live[pid] = future.result(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
                except Exception:
                    live[pid] = None
        levels: dict[int, StockLevel] = {}
        missing = [pid for pid, available in live.items() if available is None]
        cached = self._cached(missing) if missing else {}
        fresh = {}
        for pid, available in live.items():
            if available is not None:
                levels[pid] = StockLevel(available, InventorySource.LIVE)
                fresh[pid] = available
            elif cached.get(pid) is not None:
                levels[pid] = StockLevel(cached[pid], InventorySource.CACHE)
            else:
                levels[pid] = StockLevel(None, InventorySource.UNAVAILABLE)
        if fresh:
            self._remember(fresh)
        return levels

    def _live(self, product_id: int, deadline: float) -> int | None:
        url = f"{self._url}/stock/{product_id}"

        def attempt(call: Any) -> HttpResponse:
            return self._transport.request("GET", url, deadline=call.deadline)

        try:
            response = self._pipeline.execute(attempt, deadline=deadline, operation="stock",
                                              context={"product_id": product_id})
        except (BrokenCircuitError, BulkheadRejectedError, ResilienceTimeoutError, HttpTransportError):
            return None
        if response is None or response.status != 200:
            return None
        try:
            available = response.json()["available"]
        except (ValueError, KeyError, TypeError):
            return None
        return available if isinstance(available, int) and not isinstance(available, bool) else None

    def _cached(self, product_ids: list[int]) -> dict[int, int | None]:
        try:
            # One GET per key, pipelined (one round trip as MGET): each product's key hashes to a slot of its own
            # on Redis Cluster, where an MGET across slots is refused.
            pipe = self._cache.pipeline(transaction=False)
            for pid in product_ids:
                pipe.get(f"{self._prefix}{pid}")
            values = pipe.execute()
        except redis.RedisError:
            return {}
        return {pid: int(v) if v is not None else None for pid, v in zip(product_ids, values, strict=True)}

    def _remember(self, levels: Mapping[int, int]) -> None:
        now = self._monotonic()
        written = self._written
        changed = {
            pid: available for pid, available in levels.items()
            if (seen := written.get(pid)) is None or seen[0] != available or now - seen[1] >= self._rewrite_after
        }
        if not changed:
            return
        try:
            pipe = self._cache.pipeline(transaction=False)
            for pid, available in changed.items():
                pipe.set(f"{self._prefix}{pid}", available, px=self._ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:  # a cache that cannot be written only makes later fallbacks poorer
            log.debug("inventory cache write failed: %s", exc)
            return
        for pid, available in changed.items():
            written[pid] = (available, now)


class NotificationClient:
    def __init__(self, base_url: str, transport: HttpTransport, pipeline: ResiliencePipeline[Any]) -> None:
        self._url = base_url
        self._transport = transport
        self._pipeline = pipeline

    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        headers = {"Idempotency-Key": f"{kind}:{order_id}"}
        body = {"order_id": order_id, "kind": kind}

        def attempt(call: Any) -> HttpResponse:
            return self._transport.request("POST", f"{self._url}/notifications", deadline=call.deadline,
                                           json=body, headers=headers)

        try:
            response = self._pipeline.execute(attempt, deadline=deadline, operation="notify",
                                              context={"order_id": order_id})
        except Exception as exc:  # best effort: a lost notification never fails anything else
            log.warning("notification not sent", extra={"event": "notification_failed", "order_id": order_id,
                                                         "error": _error_text(exc)})
            return False
        return response is not None and 200 <= response.status < 300


@dataclass
class Circuits:
    """The circuits the admin API and health report on."""

    breakers: dict[str, CircuitBreaker]

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for name, breaker in self.breakers.items():
            out.append(snapshot_dict(breaker))
            out[-1]["name"] = name
        return out

    def isolate(self, name: str) -> dict[str, Any]:
        """Open the circuit by hand, for the whole fleet; the circuit as it is then."""
        breaker = self.breakers[name]
        breaker.isolate()
        return snapshot_dict(breaker)

    def reset(self, name: str) -> dict[str, Any]:
        """Close the circuit by hand with an empty window, for the whole fleet; the circuit as it is then."""
        breaker = self.breakers[name]
        breaker.reset()
        return snapshot_dict(breaker)

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self.breakers.items()}

    def check(self) -> str | None:
        states = self.states()
        broken = [name for name, state in states.items() if state in ("open", "isolated")]
        notes = []
        if broken:
            notes.append("Open circuits: " + ", ".join(broken))
        if any(b.degraded for b in self.breakers.values()):
            notes.append("circuit state is local to this process: Redis unreachable")
        return "; ".join(notes) or None


def snapshot_dict(breaker: CircuitBreaker) -> dict[str, Any]:
    """A circuit as the admin API shows it."""
    snap = breaker.snapshot()
    until = None
    if snap.break_until is not None:
        until = datetime.fromtimestamp(snap.break_until, UTC).isoformat().replace("+00:00", "Z")
    return {"name": snap.name, "state": snap.state, "failure_ratio": round(snap.failure_ratio, 4),
            "throughput": snap.throughput, "break_until": until}


def _service_check(transport: HttpTransport, name: str, base_url: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            response = transport.request("GET", f"{base_url}/health", deadline=time.monotonic() + 1.0)
        except HttpTransportError as exc:
            return f"{name} unreachable: {type(exc).__name__}"
        return None if response.status == 200 else f"{name} answered {response.status}"

    return check


def payment_probe_timeout(policies: Policies) -> float:
    """The workers' attempts run on the payment circuit too and may take longer than the API's: a worker's
    half-open probe must hold the circuit for all of its attempt, or a second probe would start beside it."""
    return max(policies.dependencies["payment"].attempt_timeout, policies.jobs_payment.attempt_timeout)


def build_dependencies(settings: Settings, policies: Policies, redis_client: redis.Redis) -> dict[str, Any]:
    # Circuit state and the cache get their own client with short timeouts: a hung Redis must cost
    # milliseconds per call, not redis-py's default seconds.
    state_client = redis.Redis.from_url(settings.redis_url, socket_timeout=0.05, socket_connect_timeout=0.05)
    store = RedisBreakerStore(state_client, key_prefix=f"{settings.redis_prefix}:resilience")
    hooks = (PrometheusHook(), DecisionLog())
    transport = HttpTransport(pool_maxsize=32)
    deps = policies.dependencies
    common: dict[str, Any] = {"store": store, "hooks": hooks, "is_failure": http_failure,
                              "is_timeout": http_timeout, "retry_after": http_retry_after}

    jobs = policies.jobs_payment
    payment_pipeline = build_pipeline("payment", deps["payment"], hedging=False,
                                      probe_timeout=payment_probe_timeout(policies), **common)
    # The workers count on the same `payment` circuit, with their own attempt timeout; the outbox retries.
    job_pipeline: ResiliencePipeline[Any] = ResiliencePipeline(
        "payment", attempt_timeout=jobs.attempt_timeout, total_timeout=jobs.attempt_timeout,
        breaker=payment_pipeline.breaker, hooks=hooks, is_failure=http_failure, is_timeout=http_timeout,
    )
    inventory_pipeline = build_pipeline("inventory", deps["inventory"], fallback=lambda outcome: None, **common)
    notification_pipeline = build_pipeline("notification", deps["notification"], hedging=False, **common)

    payments = PaymentClient(settings.payment_url, transport, payment_pipeline, payment_pipeline.breaker)
    job_payments = PaymentClient(settings.payment_url, transport, job_pipeline, payment_pipeline.breaker)
    inventory = InventoryClient(
        settings.inventory_url, transport, inventory_pipeline, state_client, key_prefix=settings.redis_prefix,
        cache_ttl=deps["inventory"].cache_ttl or 300.0, total_timeout=deps["inventory"].total_timeout,
        fan_out=ThreadPoolExecutor(8, thread_name_prefix="inventory"),
    )
    notifier = NotificationClient(settings.notification_url, transport, notification_pipeline)
    breakers = {name: p.breaker for name, p in (("payment", payment_pipeline), ("inventory", inventory_pipeline))
                if p.breaker is not None}
    circuits = Circuits(breakers)
    checks = {
        "payment-service": _service_check(transport, "payment service", settings.payment_url),
        "inventory-service": _service_check(transport, "inventory service", settings.inventory_url),
        "notification-service": _service_check(transport, "notification service", settings.notification_url),
        "circuit-breakers": circuits.check,
    }
    return {
        "inventory": inventory, "payments": payments, "job_payments": job_payments, "notifier": notifier,
        "publisher": _publisher(settings), "circuits": circuits, "checks": checks, "transport": transport,
        "breaker_store": store,
    }


def _publisher(settings: Settings) -> Any:
    from app.adapters.publisher import CeleryPublisher

    return CeleryPublisher(settings)
