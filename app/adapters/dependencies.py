"""The wiring of the three HTTP dependencies, each client behind its resilience pipeline, on one transport.

payment (critical): `payment_client.py`; inventory (degradable): `inventory_client.py`; notification (best
effort): `notification_client.py`; what the admin API and readiness report: `dependency_health.py`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from app.adapters.dependency_health import Circuits, service_check
from app.adapters.http import HttpTransport
from app.adapters.http.outcomes import http_failure, http_retry_after, http_timeout
from app.adapters.inventory_client import InventoryClient
from app.adapters.notification_client import NotificationClient
from app.adapters.payment_client import PaymentClient
from app.adapters.redis_breaker_store import RedisBreakerStore
from app.config import Settings
from app.metrics import PrometheusHook
from app.policies import Policies
from app.resilience import (
    AttemptFinished,
    CallFinished,
    LoggingHook,
    ResiliencePipeline,
    build_pipeline,
)

log = logging.getLogger("orderflow.dependencies")


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
        "payment-service": service_check(transport, "payment service", settings.payment_url),
        "inventory-service": service_check(transport, "inventory service", settings.inventory_url),
        "notification-service": service_check(transport, "notification service", settings.notification_url),
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
