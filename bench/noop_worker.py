"""The no-op Celery worker of benchmark 4's baseline: the stack's Celery configuration, one task that only
counts itself in Redis, so a drain of N no-op messages is timed the same way as the payment backlog.

`celery -A bench.noop_worker worker --concurrency=3 --queues=bench_drain`.
"""

from __future__ import annotations

import redis
from celery import Celery

from app.adapters.broker import celery_config
from app.config import Settings

NOOP_TASK = "bench.drain_noop"
NOOP_QUEUE = "bench_drain"


def counter_key(settings: Settings) -> str:
    return f"{settings.redis_prefix}:bench:noop-done"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("orderflow-bench-noop", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(task_routes={NOOP_TASK: {"queue": NOOP_QUEUE}}, task_default_queue=NOOP_QUEUE)
    client: list[redis.Redis] = []

    @app.task(name=NOOP_TASK)
    def drain_noop(order_id: str) -> None:
        if not client:  # one connection per pool process, opened after the fork
            client.append(redis.Redis.from_url(settings.redis_url))
        client[0].incr(counter_key(settings))

    return app


# `celery -A bench.noop_worker` looks for this name.
app = make_app()
