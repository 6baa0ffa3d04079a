"""The one composition root: builds engines, clients, pipelines and services for a process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import Engine, text

from app.config import Settings, celery_broker_url, redis_py_url
from app.policies import Policies
from app.services.flags import FlagService
from app.services.idempotency import IdempotencyStore
from app.services.ordering import OrderPlacement
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
    dependencies = overrides.pop("dependencies", None) or _dependencies(settings, policies, redis_client)
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


def _dependencies(settings: Settings, policies: Any, redis_client: redis.Redis) -> dict[str, Any]:
    from app.adapters.dependencies import build_dependencies

    return build_dependencies(settings, policies, redis_client)


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
