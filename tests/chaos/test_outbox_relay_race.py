"""Found by the payment-outage scenarios: a job a worker defers while the relay is publishing it waits out
the relay's republish delay (30 s) instead of running when its deferral ends. No stack: the relay and a
job run, interleaved by hand over a real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from app.adapters.db import make_engine
from app.adapters.sql import SqlUnitOfWorkFactory
from app.domain import PENDING_MESSAGE, InventorySource, Order, OrderLine, OrderStatus, Payment
from app.policies import JobsPaymentConfig
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from app.services.ports import CaptureResult
from tests.support import fresh_database
from workers.relay import OutboxRelay

REPUBLISH_AFTER = 30.0
BREAK = timedelta(seconds=4)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class OpenCircuit:
    """The workers' payment gateway while the shared circuit is open until `until`."""

    def __init__(self, until: datetime) -> None:
        self.until = until

    def circuit_allows_calls(self) -> bool:
        return False

    def circuit_break_until(self) -> float | None:
        return self.until.timestamp()

    def capture(self, **_: object) -> CaptureResult:
        # The real pipeline's admission refuses the call while the circuit is open: nothing is sent.
        return CaptureResult("not_attempted", error="circuit open")

    def lookup_captures(self, order_id: str, *, deadline: float) -> list[dict[str, object]] | None:
        return None


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with fresh_database() as db:
        engine = make_engine(db.url, schema=db.schema)
        yield engine
        engine.dispose()


def pending_order(engine: Engine, *, due_at: datetime) -> str:
    order = Order(
        id=uuid.uuid4().hex, customer_id=1, status=OrderStatus.PAYMENT_PENDING, currency="USD",
        lines=(OrderLine(1, 1, Decimal("12.50")),), payment=Payment(), inventory_source=InventorySource.LIVE,
        created_at=due_at, updated_at=due_at, message=PENDING_MESSAGE,
    )
    with SqlUnitOfWorkFactory(engine)() as unit:
        unit.orders.add(order)
        unit.outbox.payments.add(order.id, due_at=due_at, now=due_at)
        unit.commit()
    return order.id


def test_a_job_deferred_while_the_relay_publishes_it_runs_when_its_deferral_ends(engine: Engine) -> None:
    clock = Clock()
    first = pending_order(engine, due_at=clock() - timedelta(seconds=1))
    second = pending_order(engine, due_at=clock())
    runner = PaymentJobRunner(uow=SqlUnitOfWorkFactory(engine), gateway=OpenCircuit(clock() + BREAK),  # type: ignore[arg-type]
                              config=JobsPaymentConfig(), now=clock)
    published: list[str] = []

    def send_payment(order_id: str) -> None:
        published.append(order_id)
        if order_id == first:
            # While the relay is busy with the first job, a worker woken by the API's own message runs
            # the second one: the circuit is open, so the job is deferred until the break ends.
            assert process_payment_job(second, runner=runner) == "deferred"

    relay = OutboxRelay(uow=SqlUnitOfWorkFactory(engine), send_payment=send_payment,
                        send_notification=lambda job_id: None, republish_after=REPUBLISH_AFTER, now=clock)
    relay.run_once()
    for order_id in published:
        if order_id == second:
            assert process_payment_job(second, runner=runner) == "skipped"  # not due yet

    clock.now += BREAK + timedelta(seconds=1)
    published.clear()
    relay.run_once()
    assert second in published, "the deferred job was not handed out when its break ended"
