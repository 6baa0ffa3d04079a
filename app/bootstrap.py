"""The one composition root: builds the engine, the unit of work, the clients and their pipelines and the services
for a process of OrderFlow (`bootstrap`), and what a worker process adds on top (`build_worker`)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import Engine, text

from app.config import Settings, celery_broker_url, redis_py_url
from app.policies import Policies
from app.resilience import (
    AttemptFinished,
    CallFinished,
    LoggingHook,
    ResiliencePipeline,
    build_pipeline,
)
from app.services.flags import FlagService
from app.services.idempotency import IdempotencyStore
from app.services.load import ProcessLoad
from app.services.notifications import BackgroundConfirmations, NotificationRunner
from app.services.ordering import OrderPlacement
from app.services.payment_jobs import PaymentJobRunner
from app.services.ports import (
    InventoryChecker,
    JobPaymentGateway,
    JobPublisher,
    NotificationSender,
    PaymentGateway,
)
from app.services.readiness import Readiness
from app.services.unit_of_work import UnitOfWorkFactory, deliver_to


@dataclass
class Services:
    """Everything a process of OrderFlow works with, built once by `bootstrap`."""

    settings: Settings
    policies: Policies
    engine: Engine
    uow: UnitOfWorkFactory
    redis: redis.Redis
    flags: FlagService
    placement: OrderPlacement
    idempotency: IdempotencyStore
    inventory: InventoryChecker
    payments: PaymentGateway
    readiness: Readiness
    # Tells the workers of due jobs and dead letters (after a commit); the relay's sends too, in a worker.
    publisher: JobPublisher
    # What the metrics endpoints add to every scrape: the fleet's gauges (dead letters, backlog, circuits).
    fleet_collector: Any
    # The workers' side of the payment service, the notification client and the circuits the admin API
    # operates: None where a test hands in fakes of the dependencies instead.
    job_payments: JobPaymentGateway | None = None
    notifier: NotificationSender | None = None
    circuits: Any = None


def bootstrap(settings: Settings, **overrides: Any) -> Services:
    from app.adapters.db import make_engine
    from app.adapters.sql import SqlUnitOfWorkFactory
    from app.policies import load_policies

    policies = overrides.pop("policies", None) or load_policies(settings.resilience_file)
    engine: Engine = overrides.pop("engine", None) or make_engine(
        settings.database_url, schema=settings.database_schema, pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    redis_client = overrides.pop("redis", None) or redis.Redis.from_url(
        settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    dependencies = overrides.pop("dependencies", None) or build_dependencies(settings, policies)
    inventory = dependencies["inventory"]
    payments = dependencies["payments"]
    publisher = dependencies["publisher"]
    uow = SqlUnitOfWorkFactory(engine, deliver_to(publisher))
    flags = overrides.pop("flags", None) or FlagService(uow)
    placement = OrderPlacement(
        uow=uow,
        inventory=inventory,
        payments=payments,
        flags=flags,
        request_deadline=policies.api.request_deadline,
        inventory_total_timeout=policies.dependencies["inventory"].total_timeout,
        monotonic=time.monotonic,
        payment_total_timeout=policies.dependencies["payment"].total_timeout,
    )
    idempotency = IdempotencyStore(uow, lock_for=timedelta(seconds=policies.api.request_deadline))
    checks = {"database": _database_check(engine), "broker": _broker_check(settings, redis_client)}
    checks.update(dependencies.get("checks", {}))
    readiness = Readiness(checks)
    fleet = _fleet_collector(uow, dependencies.get("circuits"))
    if overrides:
        raise TypeError(f"unknown overrides: {', '.join(sorted(overrides))}")
    return Services(
        settings=settings, policies=policies, engine=engine, uow=uow, redis=redis_client, flags=flags,
        placement=placement, idempotency=idempotency, inventory=inventory, payments=payments, readiness=readiness,
        publisher=publisher, fleet_collector=fleet, job_payments=dependencies.get("job_payments"),
        notifier=dependencies.get("notifier"), circuits=dependencies.get("circuits"),
    )


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


def build_dependencies(settings: Settings, policies: Policies) -> dict[str, Any]:
    """The three HTTP dependencies, each client behind its resilience pipeline, on one transport; the circuits
    the admin API operates; the readiness checks of the services."""
    from app.adapters.dependency_health import Circuits, service_check
    from app.adapters.http import HttpTransport
    from app.adapters.http.outcomes import http_failure, http_retry_after, http_timeout
    from app.adapters.inventory_client import InventoryClient
    from app.adapters.notification_client import NotificationClient
    from app.adapters.payment_client import PaymentClient
    from app.adapters.publisher import CeleryPublisher
    from app.adapters.redis_breaker_store import RedisBreakerStore
    from app.metrics import PrometheusHook

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
        "publisher": CeleryPublisher(settings), "circuits": circuits, "checks": checks, "transport": transport,
        "breaker_store": store,
    }


def _database_check(engine: Engine) -> Any:
    def check() -> str | None:
        # A database that answers but has no tables (or an older schema) can store no order either.
        from app.adapters.migrate import schema_problem

        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                return schema_problem(conn)
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}"

    return check


# A readiness probe must answer well within its own deadline, whatever state the broker is in.
BROKER_CHECK_TIMEOUT = 0.5


def _broker_check(settings: Settings, redis_client: redis.Redis) -> Any:
    if settings.broker_is_amqp:
        return _amqp_check(settings.broker_url)
    if settings.broker is not None and celery_broker_url(settings.broker) != celery_broker_url(settings.redis_url):
        redis_client = redis.Redis.from_url(
            redis_py_url(settings.broker), socket_timeout=BROKER_CHECK_TIMEOUT,
            socket_connect_timeout=BROKER_CHECK_TIMEOUT,
        )

    def check() -> str | None:
        try:
            redis_client.ping()
        except Exception as exc:
            return f"broker unreachable: {type(exc).__name__}"
        return None

    return check


def _amqp_check(url: str) -> Any:
    from kombu import Connection

    def check() -> str | None:
        # A fresh connection each time: its handshake is the round trip that proves the broker answers, and
        # nothing is left open to go stale between probes.
        connection = Connection(url, connect_timeout=BROKER_CHECK_TIMEOUT, transport_options={
            "read_timeout": BROKER_CHECK_TIMEOUT, "write_timeout": BROKER_CHECK_TIMEOUT})
        try:
            connection.ensure_connection(max_retries=0)
        except Exception as exc:  # kombu wraps the cause (refused, timed out, access refused)
            return f"broker unreachable: {type(exc.__cause__ or exc).__name__}"
        finally:
            connection.release()
        return None

    return check


def _fleet_collector(uow: UnitOfWorkFactory, circuits: Any) -> Any:
    from app.metrics import FleetCollector
    from app.services.dead_letters import count_unreplayed
    from app.services.payment_jobs import count_backlog

    return FleetCollector(circuits.states if circuits is not None else dict, lambda: count_unreplayed(uow),
                          lambda: count_backlog(uow))


@dataclass
class WorkerContext:
    services: Services
    publisher: Any  # the Celery publisher: the relay sends with it
    payments: PaymentJobRunner
    notifications: NotificationRunner
    confirmations: BackgroundConfirmations
    republish_after: float


def build_worker(services: Services) -> WorkerContext:
    """What a worker process runs with, over the services `bootstrap` built for it."""
    from app.adapters.publisher import CeleryPublisher
    from app.metrics import count_payment_job

    policies = services.policies
    if services.notifier is None or services.job_payments is None:
        raise ValueError("a worker needs the real payment and notification clients")
    publisher = services.publisher
    if not isinstance(publisher, CeleryPublisher):
        publisher = CeleryPublisher(services.settings)
    lease_margin = services.settings.lease_margin
    notification_policy = policies.dependencies["notification"]
    notifications = NotificationRunner(
        uow=services.uow, sender=services.notifier, flags=services.flags,
        send_timeout=notification_policy.total_timeout, lease_margin=lease_margin,
    )
    load = ProcessLoad()
    confirmations = BackgroundConfirmations(notifications, load=load)
    return WorkerContext(
        services=services,
        publisher=publisher,
        payments=PaymentJobRunner(
            uow=services.uow, gateway=services.job_payments, config=policies.jobs_payment,
            confirmations=confirmations, load=load, lease_margin=lease_margin, on_outcome=count_payment_job,
        ),
        notifications=notifications,
        confirmations=confirmations,
        republish_after=services.settings.republish_after,
    )
