"""The same-work Celery worker of benchmark 4's baseline: a payment job written the naive way, with the same
libraries and none of OrderFlow's code around them.

One task per order id: claim the payment job with one UPDATE (raw SQL through SQLAlchemy `text()` on an engine
of its own, the order's customer and total read back by the same statement), POST the capture to the payment
service through the chaos proxy with `requests` (one Session per pool process, the body and headers the
payment client sends), then in one transaction UPDATE the order to `Confirmed` and close the job. No
resilience pipeline, no deadline, no retries, no attempt records, no notification, no metrics: what is left
is the work itself, so the drain's rate against ours is what OrderFlow's machinery costs.

The only thing shared with the stack is the Celery configuration (`celery_config`), so both drain under the
same broker settings. `celery -A bench.naive_payment_worker worker --concurrency=3 --queues=bench_naive`,
with `PAYMENT_URL` naming the payment proxy and `DATABASE_URL` (`DATABASE_SCHEMA`) the stack's database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from celery import Celery
from sqlalchemy import Engine, create_engine, text

from app.adapters.broker import celery_config
from app.config import Settings

NAIVE_TASK = "bench.naive_payment"
NAIVE_QUEUE = "bench_naive"

# The order's customer and total come back from the claim itself (scalar subqueries in RETURNING, which both
# PostgreSQL and SQLite >= 3.35 accept), so the job costs one statement before the capture, as ours does.
CLAIM = text(
    "UPDATE payment_jobs SET state = 'running', updated_at = :now "
    "WHERE order_id = :order_id AND state = 'pending' "
    "RETURNING (SELECT customer_id FROM orders WHERE orders.id = payment_jobs.order_id), "
    "(SELECT total FROM orders WHERE orders.id = payment_jobs.order_id)"
)
CONFIRM = text(
    "UPDATE orders SET status = 'Confirmed', payment_status = 'captured', payment_id = :payment_id, "
    "message = NULL, payment_attempts = payment_attempts + 1, updated_at = :now "
    "WHERE id = :order_id AND status = 'PaymentPending'"
)
CLOSE_JOB = text("UPDATE payment_jobs SET state = 'done', updated_at = :now WHERE order_id = :order_id")


@dataclass
class _ProcessState:
    """What a pool process opens once, after the fork: its engine and its HTTP session."""

    engine: Engine
    session: requests.Session
    payment_url: str


def naive_engine(url: str, schema: str | None = None) -> Engine:
    """A plain engine, as the SQLAlchemy tutorial makes one (the schema by search_path on PostgreSQL)."""
    if url.startswith("sqlite"):
        return create_engine(url)
    connect_args = {"options": f"-c search_path={schema}"} if schema else {}
    return create_engine(url, pool_size=1, connect_args=connect_args)


def pay(engine: Engine, session: requests.Session, payment_url: str, order_id: str) -> bool:
    """One job: claim, capture, confirm. False when there was no pending job for the order or no capture."""
    with engine.begin() as conn:
        row = conn.execute(CLAIM, {"order_id": order_id, "now": datetime.now(UTC)}).first()
    if row is None:
        return False
    customer_id, total = row
    response = session.post(
        f"{payment_url}/payments",
        json={
            "order_id": order_id,
            "customer_id": int(customer_id),
            "amount": f"{Decimal(str(total)):.2f}",
            "currency": "USD",
        },
        headers={"Idempotency-Key": f"order-{order_id}-payment"},
        timeout=10,
    )
    if response.status_code != 201:
        return False
    payment_id = response.json()["id"]
    with engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(CONFIRM, {"order_id": order_id, "payment_id": payment_id, "now": now})
        conn.execute(CLOSE_JOB, {"order_id": order_id, "now": now})
    return True


def make_app(settings: Settings | None = None, env: dict[str, str] | None = None) -> Celery:
    settings = settings or Settings.from_env()
    environ: dict[str, Any] = dict(os.environ if env is None else env)
    app = Celery("orderflow-bench-naive", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(task_routes={NAIVE_TASK: {"queue": NAIVE_QUEUE}}, task_default_queue=NAIVE_QUEUE)
    state: list[_ProcessState] = []

    @app.task(name=NAIVE_TASK)
    def naive_payment(order_id: str) -> None:
        if not state:  # opened in the pool process, after the fork
            state.append(
                _ProcessState(
                    naive_engine(environ["DATABASE_URL"], environ.get("DATABASE_SCHEMA") or None),
                    requests.Session(),
                    environ.get("PAYMENT_URL", "").rstrip("/"),
                )
            )
        process = state[0]
        pay(process.engine, process.session, process.payment_url, order_id)

    return app


# `celery -A bench.naive_payment_worker` looks for this name.
app = make_app()
