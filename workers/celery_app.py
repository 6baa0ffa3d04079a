"""The worker's Celery application, over the broker configuration of `app.adapters.broker`: its tasks, its
bootsteps (the outbox relay, the metrics server), its logging, and its tolerance of a lost broker."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.worker import consumer as celery_consumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from app.adapters.broker import (
    DEAD_LETTER,
    PROCESS_PAYMENT,
    QUEUES,
    SEND_NOTIFICATION,
    celery_config,
    publisher_celery,
    queue_prefix,
    task_queues,
)
from app.config import Settings
from app.logs import LEVEL_VARIABLE, configure_logging, log_level

logger = logging.getLogger("orderflow.worker")


class Consumer(celery_consumer.Consumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery, which Celery adds whenever it sees quorum queues.

    That step serves countdown and ETA tasks, which OrderFlow never sends (the outbox decides when a job is
    due): it would only declare 28 delay queues on the broker and warn, on every start, that our direct
    exchanges cannot carry ETA tasks."""

    class Blueprint(celery_consumer.Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [step for step in celery_consumer.Consumer.Blueprint.default_steps
                         if not step.endswith(":DelayedDelivery")]


def make_celery(settings: Settings | None = None, *, role: str = "worker") -> Celery:
    """A configured Celery app. The worker's includes the tasks and the bootsteps (relay, metrics); the
    publisher's sends by task name and imports nothing else."""
    settings = settings or Settings.from_env()
    if role == "publisher":
        return publisher_celery(settings)
    _leave_unacknowledged_messages_in_redis()
    app = Celery("orderflow", include=["workers.tasks"])
    app.conf.update(celery_config(settings, role=role))
    from workers.bootsteps import MetricsServerStep, OutboxRelayStep

    app.steps["worker"].add(OutboxRelayStep)
    app.steps["worker"].add(MetricsServerStep)
    signals.setup_logging.connect(_log_like_every_process)
    signals.celeryd_after_setup.connect(_banner_as_a_log_line)
    return app


def _log_like_every_process(loglevel: int | None = None, **_: Any) -> None:
    """Celery's lines, its tasks' and OrderFlow's through the one handler, in the stack's format, as `worker`.

    With a receiver of this signal Celery configures no logger of its own (nor does it redirect stdout, and
    `worker_hijack_root_logger` has nothing left to do); the pool processes inherit this on fork. The level
    is `--loglevel`'s unless ORDERFLOW_LOG_LEVEL is set, which then rules every process of the stack alike."""
    configure_logging("worker", level=log_level() if LEVEL_VARIABLE in os.environ else loglevel or None)


def _banner_as_a_log_line(sender: str, instance: Any, **_: Any) -> None:
    """Celery prints its start-up banner on stdout, outside logging: it becomes one log record instead."""
    instance.quiet = True
    logger.info("%s", instance.startup_info(artlines=False).strip("\n"), extra={"event": "worker_starting"})


def _leave_unacknowledged_messages_in_redis() -> None:
    """Leave a message in Redis's unacked set when its channel is gone, instead of stopping the worker.

    When Redis goes away while tasks run, kombu closes the channel; a task that finishes afterwards acks (or
    rejects) through that closed channel, whose connection is None, and kombu fails with an AttributeError
    that Celery treats as unrecoverable: the whole worker stops (celery#9250 shows the same path on AMQP).
    Shutdown does the same when it restores in-flight messages. None of them needs the broker: the message
    stays in the unacked set (restored after visibility_timeout), and the outbox relay republishes its job
    anyway, whose claim makes any rerun harmless. So on a closed channel only the local bookkeeping is dropped.
    """
    kombu_redis.Channel.QoS = BrokerLossTolerantQoS


class BrokerLossTolerantQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's Redis QoS, except that acking or rejecting on a closed channel only forgets the message."""

    restore_at_shutdown = False

    def _channel_lost(self, delivery_tag: str, action: str) -> bool:
        if self.channel.connection is not None:
            return False
        logger.warning("broker channel closed: message %s left unacknowledged in the broker (%s)",
                       delivery_tag, action)
        virtual.QoS.ack(self, delivery_tag)
        return True

    def ack(self, delivery_tag: str) -> None:
        if not self._channel_lost(delivery_tag, "ack"):
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not self._channel_lost(delivery_tag, "reject"):
            super().reject(delivery_tag, requeue=requeue)


__all__ = ["DEAD_LETTER", "PROCESS_PAYMENT", "QUEUES", "SEND_NOTIFICATION", "celery_config", "make_celery",
           "queue_prefix", "task_queues"]
