"""Prometheus metrics, with the names and labels of the contract.

gunicorn and Celery run several processes, so metrics are written in prometheus_client's multiprocess
mode when PROMETHEUS_MULTIPROC_DIR is set (make run sets one directory for the API, one for the
workers); a scrape aggregates every process of its group. Fleet-wide gauges (circuit state, dead
letters, backlog) are computed at scrape time by a collector, not written by whichever process saw a change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.resilience import (
    AttemptFinished,
    BreakerTransition,
    BulkheadRejected,
    CallFinished,
    FallbackExecuted,
    RetryScheduled,
    TimeoutOccurred,
)

# The *_created series double the exposition and no panel or alert reads them.
disable_created_metrics()

RETRY_ATTEMPTS = Counter(
    "resilience_retry_attempts_total", "Retries of calls to a dependency, by retry number.", ["service", "attempt"]
)
CIRCUIT_STATE_CHANGES = Counter(
    "resilience_circuitbreaker_state_changes_total", "Circuit breaker transitions.",
    ["service", "from_state", "to_state"],
)
FALLBACK_EXECUTIONS = Counter(
    "resilience_fallback_executions_total", "Fallbacks used instead of a dependency's answer.", ["service"]
)
TIMEOUTS = Counter("resilience_timeouts_total", "Attempt and total timeouts.", ["service", "kind"])
BULKHEAD_REJECTIONS = Counter(
    "resilience_bulkhead_rejections_total", "Calls rejected because the bulkhead was full.", ["service"]
)
REQUEST_DURATION = Histogram(
    "resilience_request_duration_seconds", "Duration of protected calls, retries included.", ["service", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 20.0),
)
HTTP_CLIENT_REQUESTS = Counter(
    "http_client_requests_total", "HTTP attempts to dependencies by result.", ["service", "status"]
)
ORDERS_CREATED = Counter("orders_created_total", "Orders created, by status at creation.", ["status"])
PAYMENT_JOBS = Counter("payment_jobs_total", "Payment job runs by outcome.", ["outcome"])
_PAYMENT_JOB_OUTCOMES: dict[str, Any] = {}


def count_payment_job(outcome: str) -> None:
    """The payment job runner's hook: one run ended with `outcome` (the labelled child is looked up once)."""
    counter = _PAYMENT_JOB_OUTCOMES.get(outcome)
    if counter is None:
        counter = _PAYMENT_JOB_OUTCOMES[outcome] = PAYMENT_JOBS.labels(outcome)
    counter.inc()

STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2, "isolated": 3}


class FleetCollector(Collector):
    """Gauges read from shared state at scrape time: the same answer from every process."""

    def __init__(
        self,
        circuit_states: Callable[[], dict[str, str]],
        dead_letters: Callable[[], int | None],
        backlog: Callable[[], int | None],
    ) -> None:
        self._circuit_states = circuit_states
        self._dead_letters = dead_letters
        self._backlog = backlog

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "resilience_circuitbreaker_state",
            "Fleet-wide circuit state: 0 closed, 1 open, 2 half_open, 3 isolated.",
            labels=["service"],
        )
        try:
            for service, name in sorted(self._circuit_states().items()):
                state.add_metric([service], STATE_VALUES.get(name, 0))
        except Exception:
            pass
        yield state
        for name, doc, read in (
            ("payment_dead_letters", "Dead-lettered payments not replayed.", self._dead_letters),
            ("payment_jobs_backlog", "Payment jobs not finished yet.", self._backlog),
        ):
            try:
                value = read()
            except Exception:
                value = None
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)


def render(fleet: Collector | None = None) -> tuple[bytes, str]:
    """The exposition of every process of this group (multiprocess mode) plus the fleet gauges."""
    registry = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY  # type: ignore[assignment]
    output = generate_latest(registry)
    if fleet is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(fleet)
        output += generate_latest(extra)
    return output, CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class PrometheusHook:
    """Turns the resilience policies' events into the contract's metrics."""

    def __call__(self, event: object) -> None:
        if isinstance(event, AttemptFinished):
            HTTP_CLIENT_REQUESTS.labels(event.service, "success" if event.success else "failure").inc()
        elif isinstance(event, CallFinished):
            REQUEST_DURATION.labels(event.service, event.outcome).observe(event.duration)
        elif isinstance(event, RetryScheduled):
            RETRY_ATTEMPTS.labels(event.service, str(event.attempt)).inc()
        elif isinstance(event, BreakerTransition):
            CIRCUIT_STATE_CHANGES.labels(event.service, event.from_state, event.to_state).inc()
        elif isinstance(event, TimeoutOccurred):
            TIMEOUTS.labels(event.service, event.kind).inc()
        elif isinstance(event, BulkheadRejected):
            BULKHEAD_REJECTIONS.labels(event.service).inc()
        elif isinstance(event, FallbackExecuted):
            FALLBACK_EXECUTIONS.labels(event.service).inc()
