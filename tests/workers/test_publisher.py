"""The publisher against the real brokers: what the relay asks it about a queue, and what it sends."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from app.adapters.publisher import CeleryPublisher
from app.config import Settings
from tests.broker import drop_queues, rabbitmq_url


@pytest.fixture(params=["redis", "rabbitmq"])
def settings(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Settings]:
    """A deployment of this test's own on each broker kind."""
    prefix = f"test-publisher-{uuid.uuid4().hex[:8]}"
    broker = rabbitmq_url() if request.param == "rabbitmq" else None
    settings = Settings(redis_url=redis_url, redis_prefix=prefix, broker=broker)
    try:
        yield settings
    finally:
        drop_queues(settings)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def answered(publisher: CeleryPublisher, queue: str, timeout: float = 10.0) -> int | None:
    """The queue's length once the broker answers: its first connection may still be opening (None meanwhile,
    as `waiting` says when the broker cannot)."""
    deadline = time.monotonic() + timeout
    count = publisher.waiting(queue)
    while count is None and time.monotonic() < deadline:
        time.sleep(0.1)
        count = publisher.waiting(queue)
    return count


def test_waiting_counts_the_messages_a_queue_holds(settings: Settings) -> None:
    publisher = CeleryPublisher(settings)
    try:
        assert answered(publisher, "payments") == 0
        publisher.send_payment("order-1")
        publisher.send_payment("order-2")
        assert answered(publisher, "payments") == 2
        assert answered(publisher, "notifications") == 0
    finally:
        publisher.close()


def test_deployments_sharing_a_broker_never_see_each_others_messages(settings: Settings) -> None:
    other = settings.with_overrides(redis_prefix=f"{settings.redis_prefix}-other")
    publisher, neighbour = CeleryPublisher(settings), CeleryPublisher(other)
    try:
        publisher.send_payment("order-1")
        assert answered(publisher, "payments") == 1
        assert answered(neighbour, "payments") == 0
    finally:
        publisher.close()
        neighbour.close()
        drop_queues(other)


@pytest.mark.parametrize("broker", [None, "amqp://guest:guest@127.0.0.1:1//"])
def test_waiting_is_unknown_and_sending_fails_fast_when_the_broker_cannot_be_reached(broker: str | None) -> None:
    settings = Settings.from_env({**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}).with_overrides(broker=broker)
    publisher = CeleryPublisher(settings)
    assert publisher.waiting("payments") is None
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 (whatever the transport raises; the relay catches them all)
        publisher.send_payment("order-1")
    assert time.monotonic() - started < 2.0
