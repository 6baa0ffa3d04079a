"""The readiness `broker` check on each broker kind: a real connection under a short timeout. A broker that
is down degrades readiness (warn, 200): orders are still stored, and the outbox relay delivers them later."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app import create_app
from app.config import Settings
from app.policies import parse_policies
from tests.broker import rabbitmq_url
from tests.support import DatabaseHandle, FakeInventory, FakePayments, FakePublisher


def readiness(database: DatabaseHandle, redis_url: str, broker: str | None) -> tuple[int, dict[str, Any], float]:
    settings = Settings(database_url=database.url, database_schema=database.schema, redis_url=redis_url,
                        broker=broker)
    app = create_app(settings, policies=parse_policies(""), redis=redis.Redis.from_url(redis_url),
                     dependencies={"inventory": FakeInventory(), "payments": FakePayments(),
                                   "publisher": FakePublisher()})
    try:
        started = time.monotonic()
        response = app.test_client().get("/health/ready")
        return response.status_code, response.get_json(), time.monotonic() - started
    finally:
        app.extensions["orderflow"].engine.dispose()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel completes them) and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


def test_a_reachable_rabbitmq_passes(database: DatabaseHandle, redis_url: str) -> None:
    status, body, _ = readiness(database, redis_url, rabbitmq_url())
    assert status == 200
    assert body["checks"]["broker"] == [{"status": "pass"}]


def test_an_unreachable_rabbitmq_degrades_readiness_without_failing_it(
    database: DatabaseHandle, redis_url: str, closed_port: int
) -> None:
    status, body, _ = readiness(database, redis_url, f"amqp://guest:guest@127.0.0.1:{closed_port}//")
    assert status == 200 and body["status"] == "warn"
    assert body["checks"]["broker"] == [{"status": "warn", "output": "broker unreachable: ConnectionRefusedError"}]
    assert body["checks"]["database"] == [{"status": "pass"}]


def test_a_silent_rabbitmq_is_reported_within_the_checks_short_timeout(
    database: DatabaseHandle, redis_url: str, silent_port: int
) -> None:
    status, body, elapsed = readiness(database, redis_url, f"amqp://guest:guest@127.0.0.1:{silent_port}//")
    assert status == 200
    [check] = body["checks"]["broker"]
    assert check["status"] == "warn" and check["output"].startswith("broker unreachable")
    assert elapsed < 1.5


def test_a_redis_broker_of_its_own_is_the_one_checked(
    database: DatabaseHandle, redis_url: str, closed_port: int
) -> None:
    """REDIS_URL answers, the BROKER_URL Redis does not: readiness speaks of the broker."""
    status, body, _ = readiness(database, redis_url, f"redis://127.0.0.1:{closed_port}/0")
    assert status == 200
    assert body["checks"]["broker"][0]["status"] == "warn"
    status, body, _ = readiness(database, redis_url, None)
    assert body["checks"]["broker"] == [{"status": "pass"}]
