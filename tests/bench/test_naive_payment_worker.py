"""The same-work baseline of the backlog drain: its SQL against a migrated SQLite database, with a stand-in
for the payment service, so a change of schema or of the payment client's request shape shows here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters.db import make_engine
from app.adapters.sql.tables import orders, payment_jobs
from app.config import Settings
from app.domain import money, payment_key
from bench import backlog, naive_payment_worker
from bench.environment import Database, sqlite_database


@dataclass
class Answer:
    status_code: int
    body: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return self.body


@dataclass
class PaymentService:
    """Answers every capture with `status`; keeps what it was sent."""

    status: int = 201
    calls: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, **kwargs: Any) -> Answer:
        self.calls.append({"url": url, **kwargs})
        return Answer(self.status, {"id": f"pay-{len(self.calls)}", "status": "captured"})


@pytest.fixture
def db() -> Iterator[Database]:
    with sqlite_database() as database:
        yield database


def _backlog(db: Database, count: int) -> list[str]:
    sent: list[str] = []
    ids = backlog.write_backlog(
        db,
        Settings.from_env({}),
        count,
        customer=backlog.NAIVE_CUSTOMER,
        not_due_for=backlog.NAIVE_NOT_DUE,
        send=sent.extend,
    )
    assert sent == ids
    return ids


def _order_and_job(db: Database, order_id: str) -> tuple[Any, Any]:
    engine = make_engine(db.url)
    try:
        with engine.connect() as conn:
            order = conn.execute(select(orders).where(orders.c.id == order_id)).one()
            job = conn.execute(select(payment_jobs).where(payment_jobs.c.order_id == order_id)).one()
        return order, job
    finally:
        engine.dispose()


def test_naive_task_claims_the_job_captures_once_and_confirms_the_order(db: Database) -> None:
    order_id, other = _backlog(db, 2)
    engine = naive_payment_worker.naive_engine(db.url)
    service = PaymentService()

    assert naive_payment_worker.pay(engine, service, "http://payment", order_id) is True
    again = naive_payment_worker.pay(engine, service, "http://payment", order_id)

    assert again is False and len(service.calls) == 1
    order, job = _order_and_job(db, order_id)
    assert (order.status, order.payment_status, order.payment_id, order.payment_attempts) == (
        "Confirmed", "captured", "pay-1", 1
    )
    assert job.state == "done"
    assert _order_and_job(db, other)[0].status == "PaymentPending"
    engine.dispose()


def test_naive_task_sends_the_capture_the_payment_client_sends(db: Database) -> None:
    (order_id,) = _backlog(db, 1)
    engine = naive_payment_worker.naive_engine(db.url)
    service = PaymentService()

    naive_payment_worker.pay(engine, service, "http://payment", order_id)

    call = service.calls[0]
    order, _ = _order_and_job(db, order_id)
    assert call["url"] == "http://payment/payments"
    assert call["headers"] == {"Idempotency-Key": payment_key(order_id)}
    assert call["json"] == {
        "order_id": order_id,
        "customer_id": backlog.NAIVE_CUSTOMER,
        "amount": money(Decimal(str(order.total))),
        "currency": "USD",
    }
    engine.dispose()


def test_naive_task_leaves_the_order_pending_when_the_capture_fails(db: Database) -> None:
    (order_id,) = _backlog(db, 1)
    engine = naive_payment_worker.naive_engine(db.url)

    done = naive_payment_worker.pay(engine, PaymentService(status=503), "http://payment", order_id)

    order, job = _order_and_job(db, order_id)
    assert done is False and order.status == "PaymentPending" and job.state == "running"
    engine.dispose()


def test_the_baseline_backlog_is_not_due_so_the_stack_relay_leaves_it_alone(db: Database) -> None:
    (order_id,) = _backlog(db, 1)

    _, job = _order_and_job(db, order_id)
    order, _ = _order_and_job(db, order_id)

    assert order.customer_id == backlog.NAIVE_CUSTOMER
    assert (job.next_attempt_at - order.created_at).days >= 364
