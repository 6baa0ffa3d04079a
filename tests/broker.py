"""RabbitMQ for the tests that need it, and removing a test deployment's queues from it afterwards.

The worker and chaos suites run on whatever broker the environment names: `BROKER_URL` unset, the Redis of
`REDIS_URL` (as a deployment would); `BROKER_URL=amqp://guest:guest@127.0.0.1:5672//`, RabbitMQ. CI runs
them once each way. Tests written for RabbitMQ itself use `BROKER_URL` when it names RabbitMQ, else the
machine's RabbitMQ on 127.0.0.1:5672, and skip when none answers (fail under ORDERFLOW_REQUIRE_ALL=1).
"""

from __future__ import annotations

import os

import pytest
from kombu import Connection

from app.adapters.broker import queue_prefix, task_queues
from app.config import Settings, is_amqp_url

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def environment_broker() -> str | None:
    """The broker this test run was given: BROKER_URL, or None for the Redis of REDIS_URL."""
    url = os.environ.get("BROKER_URL") or None
    require_reachable(url)
    return url


def rabbitmq_url() -> str:
    """BROKER_URL when it names RabbitMQ, else the machine's RabbitMQ; the test is skipped (failed under
    ORDERFLOW_REQUIRE_ALL=1) when it does not answer."""
    url = os.environ.get("BROKER_URL") or ""
    if not is_amqp_url(url):
        url = DEFAULT_RABBITMQ_URL
    require_reachable(url)
    return url


def require_reachable(url: str | None) -> None:
    """Skip (fail under ORDERFLOW_REQUIRE_ALL=1) unless a RabbitMQ `url` answers; Redis URLs pass as they are."""
    if url is None or not is_amqp_url(url):
        return
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception as exc:
        reason = f"RabbitMQ is not reachable at {url.split('@')[-1]}: {type(exc.__cause__ or exc).__name__}"
        if os.environ.get("ORDERFLOW_REQUIRE_ALL") == "1":
            pytest.fail(f"{reason} (ORDERFLOW_REQUIRE_ALL=1 forbids skipping)")
        pytest.skip(reason)


def drop_queues(settings: Settings) -> None:
    """RabbitMQ keeps a deployment's durable queues (and their exchanges) after it stops: a test deployment
    removes its own, so repeated runs leave nothing behind. The default deployment's are never touched."""
    if not settings.broker_is_amqp or not queue_prefix(settings):
        return
    with Connection(settings.broker_url, connect_timeout=2) as connection:
        channel = connection.channel()
        for queue in task_queues(settings):
            channel.queue_delete(queue.name)
            channel.exchange_delete(queue.exchange.name)
