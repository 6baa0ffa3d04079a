"""The Celery broker as OrderFlow uses it: task and queue names, and the configuration of a Celery app for
either role, the worker (`workers/`) or the publisher (the API's hints, the relay, the CLI). The database
schedules the jobs (the outbox); Celery only runs them, so nothing here counts retries or holds a job for later
(no countdown, no ETA: with Redis those live in worker memory and come back through visibility_timeout
redelivery, celery#2599)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app.config import DEFAULT_PREFIX, Settings

PROCESS_PAYMENT = "orderflow.process_payment"
SEND_NOTIFICATION = "orderflow.send_notification"
DEAD_LETTER = "orderflow.dead_letter"

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


def publisher_celery(settings: Settings) -> Celery:
    """A Celery app that only sends, by task name: it imports no task and configures no worker."""
    app = Celery("orderflow-publisher", set_as_current=False)
    app.conf.update(celery_config(settings, role="publisher"))
    return app


__all__ = ["DEAD_LETTER", "PROCESS_PAYMENT", "QUEUES", "SEND_NOTIFICATION", "celery_config", "publisher_celery",
           "queue_prefix", "task_queues"]
