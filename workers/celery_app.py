"""The Celery application: configuration only. The database schedules the jobs (the outbox); Celery only
runs them, so nothing here counts retries or holds a job for later (no countdown, no ETA: with Redis
those live in worker memory and come back through visibility_timeout redelivery, celery#2599)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.worker import consumer as celery_consumer
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from app.config import DEFAULT_PREFIX, Settings
from app.logs import LEVEL_VARIABLE, configure_logging, log_level

PROCESS_PAYMENT = "orderflow.process_payment"
SEND_NOTIFICATION = "orderflow.send_notification"
DEAD_LETTER = "orderflow.dead_letter"
logger = logging.getLogger("orderflow.worker")

QUEUES = {PROCESS_PAYMENT: "payments", SEND_NOTIFICATION: "notifications", DEAD_LETTER: "dead_letter"}

# A publish that cannot reach the broker gives up fast: the outbox row, not the publisher, guarantees the job
# reaches a worker, and the caller (an API request, the relay) must not hang on a dead broker.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.0, "interval_step": 0.1, "interval_max": 0.1}
PUBLISH_SOCKET_TIMEOUT = 0.5


def queue_prefix(settings: Settings) -> str:
    """What a deployment's queue names start with on RabbitMQ.

    On Redis every key of a deployment carries its prefix (`global_keyprefix`). RabbitMQ's unit of isolation
    would be a vhost, but the stock `guest` user may use only `/`, so there the queue names carry the
    deployment's ORDERFLOW_REDIS_PREFIX instead: stacks sharing a vhost (parallel tests, several deployments)
    never consume each other's messages. The default deployment keeps the plain names `payments`,
    `notifications`, `dead_letter`.
    """
    if not settings.broker_is_amqp or settings.redis_prefix == DEFAULT_PREFIX:
        return ""
    return f"{settings.redis_prefix}."


def task_queues(settings: Settings) -> list[Queue]:
    """The three queues, declared explicitly. Each is known to Celery by its plain name (`-Q payments`, the
    routes, the publisher), an alias when the broker name carries the deployment's prefix.

    On RabbitMQ they are durable quorum queues: replicated where the cluster has several nodes, and safe
    across a broker restart (messages are persistent by Celery's default). Quorum queues must be durable,
    not exclusive and not auto-deleted."""
    prefix = queue_prefix(settings)
    arguments = {"x-queue-type": "quorum"} if settings.broker_is_amqp else None
    queues = []
    for name in QUEUES.values():
        wire = prefix + name
        queues.append(Queue(wire, Exchange(wire, type="direct", durable=True), routing_key=wire, durable=True,
                            exclusive=False, auto_delete=False, queue_arguments=arguments,
                            alias=name if wire != name else None))
    return queues


def _redis_transport(settings: Settings, *, publisher: bool) -> dict[str, Any]:
    return {
        # One key prefix per deployment (and per test), so stacks sharing a Redis never see each other's queues.
        "global_keyprefix": f"{settings.redis_prefix}:",
        "socket_connect_timeout": PUBLISH_SOCKET_TIMEOUT if publisher else 2.0,
        # The worker's sockets must outlive the 1 s BRPOP poll; the publisher's only a single command.
        "socket_timeout": PUBLISH_SOCKET_TIMEOUT if publisher else 10.0,
        # Redelivery of unacknowledged messages is only a second safety net (the job's lease is the first),
        # so it need not be fast; it must only exceed any job's run time.
        "visibility_timeout": 600,
    }


def _amqp_transport(*, publisher: bool) -> dict[str, Any]:
    transport: dict[str, Any] = {
        # A publish returns only once RabbitMQ has taken the message (persisted on a quorum of nodes); a
        # message it nacks raises, so the relay keeps the job for its next pass.
        "confirm_publish": True,
    }
    if publisher:
        # Reads and writes of the publisher's socket give up as fast as its connect: a broker that accepts
        # the connection and then stalls must not hold an API thread or the relay.
        transport.update(read_timeout=PUBLISH_SOCKET_TIMEOUT, write_timeout=PUBLISH_SOCKET_TIMEOUT)
    return transport


def celery_config(settings: Settings, *, role: str = "worker") -> dict[str, Any]:
    """`role="publisher"`: the API's and CLI's app, which only sends and must never block for long."""
    publisher = role == "publisher"
    amqp = settings.broker_is_amqp
    transport = _amqp_transport(publisher=publisher) if amqp else _redis_transport(settings, publisher=publisher)
    # A dead broker must surface as an error to the publisher, not as kombu's own retry loop.
    transport.update(max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.1)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        # Workers retry the broker on start-up as they do later: the supervisor may start them first.
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": PUBLISH_SOCKET_TIMEOUT if publisher else 4.0,
        # Bounded publish retries: the outbox, not the publisher, guarantees delivery.
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # JSON only: messages carry ids, never pickled objects another process would have to trust.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Nobody reads task results; the database holds every outcome.
        "task_ignore_result": True,
        "result_backend": None,
        # Acknowledge after the task ran, and put the message back if the pool child running it dies: a
        # killed process loses no job (the claim makes the redelivery harmless).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per pool process at a time: a slow payment never holds messages another process could run.
        "worker_prefetch_multiplier": 1,
        # On SIGTERM a running payment call gets a short grace to finish; after that it is abandoned to its
        # lease, which is safe. The supervisor's stop budget is a few seconds per rank.
        "worker_soft_shutdown_timeout": 3.0,
        # A task running when the broker connection is lost could never be acknowledged (kombu then fails
        # inside its event loop and the worker stops): cancel it instead. Its job is leased in the database,
        # so the relay hands it out again, and the derived payment key makes the rerun charge nothing new.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": task_queues(settings),
        "task_routes": {name: {"queue": queue} for name, queue in QUEUES.items()},
        "task_default_queue": "payments",
        "task_create_missing_queues": True,
        "broker_pool_limit": 10,
    }
    if amqp:
        config.update({
            # Quorum queues refuse a consumer on a channel with global QoS: Celery sees the queues' type in
            # `task_queues` and sets the prefetch per consumer (the default, spelled out because it matters).
            # Each queue then holds back at most one message per pool process for this worker.
            "worker_detect_quorum_queues": True,
            # A broker that vanishes without closing the connection is noticed within a minute, not
            # Celery's default four; a restart closes the connection and is noticed at once.
            "broker_heartbeat": 30,
            "worker_consumer": "workers.celery_app:Consumer",
        })
    return config


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
        app = Celery("orderflow-publisher", set_as_current=False)
        app.conf.update(celery_config(settings, role=role))
        return app
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
