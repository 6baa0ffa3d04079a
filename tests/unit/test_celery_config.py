"""The Celery configuration for each broker kind: which options reach which transport, and the queues."""

from __future__ import annotations

import pytest
from celery import Celery

from app.adapters.broker import (
    DEAD_LETTER,
    PROCESS_PAYMENT,
    PUBLISH_RETRY_POLICY,
    PUBLISH_SOCKET_TIMEOUT,
    SEND_NOTIFICATION,
    celery_config,
)
from app.config import Settings, SettingsError
from workers.celery_app import Consumer

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_ONLY_OPTIONS = {"global_keyprefix", "visibility_timeout", "socket_timeout", "socket_connect_timeout"}


def amqp_settings(**changes: object) -> Settings:
    return Settings(broker=RABBITMQ, **changes)  # type: ignore[arg-type]


def app_for(settings: Settings, role: str = "worker") -> Celery:
    app = Celery("config-test", set_as_current=False)
    app.conf.update(celery_config(settings, role=role))
    return app


# --- Settings ------------------------------------------------------------------------------------------

def test_the_broker_defaults_to_the_redis_of_redis_url_in_kombus_spelling() -> None:
    settings = Settings.from_env({"REDIS_URL": "unix:///tmp/of/redis.sock"})
    assert settings.broker is None
    assert settings.broker_url == "redis+socket:///tmp/of/redis.sock"
    assert not settings.broker_is_amqp
    assert settings.with_overrides(redis_url="redis://127.0.0.1:6379/3").broker_url == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize("url", [RABBITMQ, "pyamqp://guest:guest@127.0.0.1//", "amqps://u:p@broker.example//"])
def test_broker_url_names_rabbitmq(url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "BROKER_URL": url})
    assert settings.broker_url == url
    assert settings.broker_is_amqp
    assert settings.redis_url == "redis://127.0.0.1:6379/0"  # caches and circuit state stay on Redis


def test_broker_url_may_name_another_redis() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "BROKER_URL": "redis://127.0.0.1:6380/1"})
    assert settings.broker_url == "redis://127.0.0.1:6380/1" and not settings.broker_is_amqp


def test_an_unsupported_broker_url_stops_start_up_naming_the_variable_without_its_password() -> None:
    with pytest.raises(SettingsError, match="BROKER_URL") as raised:
        Settings.from_env({"BROKER_URL": "sqs://key:secret@queue.example"})
    assert "secret" not in str(raised.value)


# --- Redis ---------------------------------------------------------------------------------------------

def test_redis_gets_its_key_prefix_and_visibility_timeout_and_no_amqp_options() -> None:
    config = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0", redis_prefix="deploy-a"))
    transport = config["broker_transport_options"]
    assert config["broker_url"] == "redis://127.0.0.1:6379/0"
    assert transport["global_keyprefix"] == "deploy-a:"
    assert transport["visibility_timeout"] == 600
    assert "confirm_publish" not in transport and "read_timeout" not in transport
    assert "worker_consumer" not in config and "broker_heartbeat" not in config


def test_redis_queues_keep_their_plain_names_and_are_classic() -> None:
    # The key prefix already separates deployments on Redis.
    queues = celery_config(Settings(redis_prefix="deploy-a"))["task_queues"]
    assert [q.name for q in queues] == ["payments", "notifications", "dead_letter"]
    assert all(q.queue_arguments is None and q.alias is None for q in queues)


# --- RabbitMQ ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["worker", "publisher"])
def test_rabbitmq_gets_publisher_confirms_and_none_of_the_redis_options(role: str) -> None:
    config = celery_config(amqp_settings(), role=role)
    transport = config["broker_transport_options"]
    assert config["broker_url"] == RABBITMQ
    assert transport["confirm_publish"] is True
    assert not REDIS_ONLY_OPTIONS & set(transport)


def test_rabbitmq_publishes_as_briefly_as_redis() -> None:
    """The API's publisher gives up within a fraction of a second either way: the outbox relay delivers."""
    for settings in (Settings(), amqp_settings()):
        config = celery_config(settings, role="publisher")
        assert config["broker_connection_timeout"] == PUBLISH_SOCKET_TIMEOUT
        assert config["task_publish_retry_policy"] == PUBLISH_RETRY_POLICY
        assert config["broker_transport_options"]["max_retries"] == 1
    transport = celery_config(amqp_settings(), role="publisher")["broker_transport_options"]
    assert transport["read_timeout"] == transport["write_timeout"] == PUBLISH_SOCKET_TIMEOUT


def test_the_rabbitmq_worker_keeps_its_sockets_without_a_publish_timeout_and_reconnects() -> None:
    config = celery_config(amqp_settings(), role="worker")
    assert "read_timeout" not in config["broker_transport_options"]
    assert config["broker_connection_retry_on_startup"] is True
    assert config["broker_heartbeat"] == 30
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]


def test_rabbitmq_queues_are_durable_quorum_queues_and_global_qos_is_off() -> None:
    config = celery_config(amqp_settings())
    queues = config["task_queues"]
    assert [q.name for q in queues] == ["payments", "notifications", "dead_letter"]
    for queue in queues:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable and not queue.exclusive and not queue.auto_delete
        assert queue.exchange.durable
    assert config["worker_detect_quorum_queues"] is True


def test_the_rabbitmq_worker_runs_without_native_delayed_delivery() -> None:
    config = celery_config(amqp_settings())
    assert config["worker_consumer"] == "workers.celery_app:Consumer"
    steps = Consumer.Blueprint.default_steps
    assert not any(step.endswith(":DelayedDelivery") for step in steps)
    assert any(step.endswith(":Tasks") for step in steps)


def test_a_deployment_other_than_the_default_prefixes_its_rabbitmq_queues() -> None:
    app = app_for(amqp_settings(redis_prefix="deploy-b"))
    names = {alias: app.amqp.queues[alias].name for alias in ("payments", "notifications", "dead_letter")}
    assert names == {"payments": "deploy-b.payments", "notifications": "deploy-b.notifications",
                     "dead_letter": "deploy-b.dead_letter"}
    routed = {task: app.amqp.router.route({}, task)["queue"].name
              for task in (PROCESS_PAYMENT, SEND_NOTIFICATION, DEAD_LETTER)}
    assert routed == {PROCESS_PAYMENT: "deploy-b.payments", SEND_NOTIFICATION: "deploy-b.notifications",
                      DEAD_LETTER: "deploy-b.dead_letter"}
    # `celery worker -Q payments,notifications,dead_letter` selects them by their plain names.
    app.amqp.queues.select(["payments", "notifications", "dead_letter"])
    assert set(app.amqp.queues.consume_from) == set(names.values())
