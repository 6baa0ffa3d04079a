"""The publisher against the real broker: what the relay asks it about a queue."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from app.config import Settings
from workers.publisher import CeleryPublisher


def test_waiting_counts_the_messages_a_queue_holds() -> None:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set")
    prefix = f"test-publisher-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({**os.environ, "ORDERFLOW_REDIS_PREFIX": prefix})
    publisher = CeleryPublisher(settings)
    try:
        assert publisher.waiting("payments") == 0
        publisher.send_payment("order-1")
        publisher.send_payment("order-2")
        assert publisher.waiting("payments") == 2
        assert publisher.waiting("notifications") == 0
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_waiting_is_unknown_when_the_broker_cannot_be_reached() -> None:
    settings = Settings.from_env({**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert CeleryPublisher(settings).waiting("payments") is None
