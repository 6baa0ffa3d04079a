"""Acking on a broker channel that closed with its connection: the worker forgets the message and lives on.

Against real Redis: kombu's own QoS fails there with an AttributeError, which Celery treats as unrecoverable
and stops the worker; the message itself must stay in the broker's unacked set for visibility_timeout
redelivery (and the outbox relay republishes its job anyway).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from app.config import celery_broker_url
from workers.celery_app import BrokerLossTolerantQoS, make_celery


@pytest.fixture
def broker(redis_url: str, key_prefix: str) -> Iterator[tuple[Connection, redis.Redis]]:
    connection = Connection(celery_broker_url(redis_url), transport_options={"global_keyprefix": f"{key_prefix}:"})
    client = redis.Redis.from_url(redis_url)
    try:
        yield connection, client
    finally:
        connection.release()
        for key in client.scan_iter(f"{key_prefix}:*"):
            client.delete(key)
        client.close()


def _unacked_message(connection: Connection, key_prefix: str) -> tuple[kombu_redis.Channel, str]:
    queue = Queue(f"{key_prefix}-q", Exchange(f"{key_prefix}-x", type="direct"), routing_key="k")
    channel = connection.channel()
    producer = connection.Producer(channel)
    producer.publish({"order_id": "o-1"}, exchange=queue.exchange, routing_key="k", declare=[queue],
                     serializer="json")
    message = queue(channel).get(no_ack=False)
    assert message is not None
    return channel, message.delivery_tag


def test_the_worker_app_installs_the_tolerant_qos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kombu_redis.Channel, "QoS", kombu_redis.QoS)
    make_celery()
    assert kombu_redis.Channel.QoS is BrokerLossTolerantQoS


@pytest.mark.parametrize("action", ["ack", "reject", "requeue"])
def test_settling_on_a_closed_channel_leaves_the_message_unacked_in_redis(
    monkeypatch: pytest.MonkeyPatch, broker: tuple[Connection, redis.Redis], key_prefix: str, action: str
) -> None:
    monkeypatch.setattr(kombu_redis.Channel, "QoS", BrokerLossTolerantQoS)
    connection, client = broker
    channel, tag = _unacked_message(connection, key_prefix)
    qos = channel.qos
    unacked = f"{key_prefix}:unacked"
    assert client.hexists(unacked, tag)

    channel.close()
    assert channel.connection is None
    if action == "ack":
        qos.ack(tag)
    else:
        qos.reject(tag, requeue=action == "requeue")

    qos._flush()  # kombu settles acks lazily
    assert tag not in qos._delivered
    assert client.hexists(unacked, tag), "the message must stay for visibility_timeout redelivery"


def test_kombus_own_qos_fails_on_a_closed_channel(
    monkeypatch: pytest.MonkeyPatch, broker: tuple[Connection, redis.Redis], key_prefix: str
) -> None:
    """Why the tolerant QoS exists: this is the error that stopped the whole worker."""
    monkeypatch.setattr(kombu_redis.Channel, "QoS", kombu_redis.QoS)
    monkeypatch.setattr(kombu_redis.QoS, "restore_at_shutdown", False)
    connection, _ = broker
    channel, tag = _unacked_message(connection, key_prefix)
    qos = channel.qos
    channel.close()
    with pytest.raises(AttributeError):
        qos.ack(tag)


def test_settling_on_an_open_channel_still_acknowledges(
    monkeypatch: pytest.MonkeyPatch, broker: tuple[Connection, redis.Redis], key_prefix: str
) -> None:
    monkeypatch.setattr(kombu_redis.Channel, "QoS", BrokerLossTolerantQoS)
    connection, client = broker
    channel, tag = _unacked_message(connection, key_prefix)
    channel.qos.ack(tag)
    assert not client.hexists(f"{key_prefix}:unacked", tag)
    channel.close()
