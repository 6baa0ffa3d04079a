"""The real-time payment call gets what is left of the request's bound, not a fresh total_timeout.

The order's own work before the call (catalog, stock, the INSERT) is paid out of the payment's time, and a
reserve is kept for the work after it, so the whole request answers within the payment total_timeout (and
always within api.request_deadline). A call that cannot fit is not made: the order stays PaymentPending.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from app.adapters.db import make_engine
from app.adapters.sql import SqlUnitOfWorkFactory
from app.adapters.sql.tables import payment_jobs
from app.domain import Order, OrderStatus, PaymentDeclined
from app.services.ordering import (
    MIN_PAYMENT_WINDOW,
    PAYMENT_RESERVE,
    PAYMENT_RESERVE_SHARE,
    OrderPlacement,
    PlaceOrder,
)
from app.services.ports import CaptureResult, StockLevel
from app.services.unit_of_work import deliver_to
from tests.support import DatabaseHandle, FakeInventory, FakePayments, FakePublisher

ORDER = PlaceOrder(customer_id=7, lines=((1, 1),))


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlowInventory(FakeInventory):
    """Answers after `seconds` of the clock have passed."""

    def __init__(self, advance: Clock | None, seconds: float) -> None:
        super().__init__()
        self.advance = advance
        self.seconds = seconds

    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]:
        if self.advance is None:
            time.sleep(self.seconds)
        else:
            self.advance.advance(self.seconds)
        return super().levels(quantities, deadline=deadline)


@dataclass
class HangingPayments(FakePayments):
    """A payment service that never answers: the call lasts until its deadline, then times out."""

    clock: Clock | None = None
    deadlines: list[tuple[float, float]] = field(default_factory=list)  # (deadline, clock when called)

    def capture(self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float,
                source: str) -> CaptureResult:
        now = self.clock() if self.clock is not None else time.monotonic()
        self.calls.append(order_id)
        self.deadlines.append((deadline, now))
        if self.clock is not None:
            self.clock.now = max(now, deadline)
        else:
            time.sleep(max(0.0, deadline - now))
        return CaptureResult("failed", error="total timeout")


class Flags:
    def is_enabled(self, name: str) -> bool:
        return True


@pytest.fixture(scope="module")
def engine(database: DatabaseHandle) -> Iterator[Engine]:
    engine = make_engine(database.url, schema=database.schema)
    yield engine
    engine.dispose()


def placement(engine: Engine, clock: Clock, inventory: FakeInventory, payments: FakePayments,
              publisher: FakePublisher, **overrides: object) -> OrderPlacement:
    options: dict[str, object] = {
        "request_deadline": 10.0, "inventory_total_timeout": 8.0, "payment_total_timeout": 8.0, **overrides
    }
    return OrderPlacement(uow=SqlUnitOfWorkFactory(engine, deliver_to(publisher)), inventory=inventory,
                          payments=payments, flags=Flags(), monotonic=clock, **options)  # type: ignore[arg-type]


def job_due_at(engine: Engine, order_id: str) -> datetime:
    with engine.connect() as conn:
        due = conn.execute(
            select(payment_jobs.c.next_attempt_at).where(payment_jobs.c.order_id == order_id)
        ).scalar_one()
    return due if due.tzinfo is not None else due.replace(tzinfo=UTC)


def test_the_orders_own_work_is_paid_out_of_the_payment_total_timeout(engine: Engine) -> None:
    clock = Clock()
    payments, publisher = HangingPayments(clock=clock), FakePublisher()
    started = clock()
    order = placement(engine, clock, SlowInventory(clock, 1.5), payments, publisher).place(ORDER, started=started)

    [(deadline, called_at)] = payments.deadlines
    assert deadline == pytest.approx(started + 8.0 - PAYMENT_RESERVE)
    assert deadline - called_at == pytest.approx(8.0 - 1.5 - PAYMENT_RESERVE)
    assert clock() - started == pytest.approx(8.0 - PAYMENT_RESERVE)
    assert order.status is OrderStatus.PAYMENT_PENDING
    assert publisher.due == [order.id]


def test_the_request_deadline_bounds_the_call_when_it_is_the_shorter_bound(engine: Engine) -> None:
    clock = Clock()
    payments = HangingPayments(clock=clock)
    started = clock()
    placement(engine, clock, SlowInventory(clock, 0.5), payments, FakePublisher(), request_deadline=6.0).place(
        ORDER, started=started)
    [(deadline, _)] = payments.deadlines
    assert deadline == pytest.approx(started + 6.0 - PAYMENT_RESERVE)


def test_a_payment_call_that_cannot_fit_after_the_stock_check_is_not_made(engine: Engine) -> None:
    clock = Clock()
    payments, publisher = HangingPayments(clock=clock), FakePublisher()
    slow = SlowInventory(clock, 8.0 - PAYMENT_RESERVE - MIN_PAYMENT_WINDOW / 2)
    order = placement(engine, clock, slow, payments, publisher).place(ORDER, started=clock())

    assert payments.calls == []
    assert order.status is OrderStatus.PAYMENT_PENDING and order.payment.attempts == 0
    assert publisher.due == [order.id]
    assert job_due_at(engine, order.id) <= datetime.now(UTC)


def test_a_payment_call_that_cannot_fit_after_the_insert_is_taken_as_a_timeout(engine: Engine) -> None:
    clock = Clock()
    payments, publisher = HangingPayments(clock=clock), FakePublisher()
    service = placement(engine, clock, SlowInventory(clock, 1.0), payments, publisher)

    def slow_insert(order: Order) -> None:  # the INSERT waited on a busy database
        clock.advance(8.0 - 1.0 - PAYMENT_RESERVE)

    service.on_order_created = slow_insert
    order = service.place(ORDER, started=clock())

    assert payments.calls == []
    assert order.status is OrderStatus.PAYMENT_PENDING and order.payment.attempts == 0
    assert publisher.due == [order.id]
    assert job_due_at(engine, order.id) <= datetime.now(UTC)


def test_an_open_circuit_leaves_the_job_due_at_the_break_end_without_a_hint(engine: Engine) -> None:
    clock = Clock()
    break_until = time.time() + 30.0
    payments = HangingPayments(clock=clock, open_circuit=True, break_until=break_until)
    publisher = FakePublisher()
    order = placement(engine, clock, SlowInventory(clock, 0.0), payments, publisher).place(ORDER, started=clock())

    assert payments.calls == [] and publisher.due == []
    assert order.status is OrderStatus.PAYMENT_PENDING
    assert job_due_at(engine, order.id).timestamp() == pytest.approx(break_until, abs=0.01)


def test_a_tight_payment_policy_keeps_at_most_a_tenth_of_its_bound_in_reserve(engine: Engine) -> None:
    clock = Clock()
    payments = HangingPayments(clock=clock)
    started = clock()
    placement(engine, clock, SlowInventory(clock, 0.05), payments, FakePublisher(),
              payment_total_timeout=1.0).place(ORDER, started=started)
    [(deadline, _)] = payments.deadlines
    assert deadline == pytest.approx(started + 1.0 - PAYMENT_RESERVE_SHARE * 1.0)


def test_with_payment_hanging_the_whole_placement_ends_within_total_timeout(engine: Engine) -> None:
    # Real time, with margins far wider than the work around the call: a 2 s total_timeout, 0.5 s spent on
    # stock, and a 1 s reserve, so the call may last until 1 s and the placement must end before 2 s.
    payments = HangingPayments()
    service = placement(engine, Clock(), SlowInventory(None, 0.5), payments, FakePublisher(),
                        payment_total_timeout=2.0, payment_reserve=1.0, payment_reserve_share=0.5)
    service.monotonic = time.monotonic
    started = time.monotonic()
    order = service.place(ORDER, started=started)
    elapsed = time.monotonic() - started

    assert payments.calls == [order.id]
    assert elapsed < 2.0, f"placement took {elapsed:.2f} s with a 2 s payment total_timeout"


@pytest.mark.parametrize(("outcome", "customer_id", "status"), [
    ("captured", 7, OrderStatus.CONFIRMED),
    ("declined", 402, OrderStatus.PAYMENT_FAILED),
    ("failed", 7, OrderStatus.PAYMENT_PENDING),
])
def test_the_order_answered_after_the_payment_is_the_order_stored(
    engine: Engine, outcome: str, customer_id: int, status: OrderStatus
) -> None:
    """The moved order is built from what the transaction wrote, not read back under the write lock: it must
    be exactly what a later read finds."""
    clock = Clock()
    service = placement(engine, clock, FakeInventory(), FakePayments(outcome=outcome), FakePublisher())
    try:
        answered = service.place(PlaceOrder(customer_id=customer_id, lines=((1, 2), (2, 1))), started=clock())
    except PaymentDeclined as declined:
        answered = declined.order
    with SqlUnitOfWorkFactory(engine)(read_only=True) as unit:
        stored = unit.orders.get(answered.id)
    assert stored is not None
    assert answered.status is status and answered.payment.attempts == 1
    assert answered.to_dict() == stored.to_dict()


def test_the_attempt_count_comes_back_without_returning_too(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database without UPDATE ... RETURNING (SQLite before 3.35) reads the count back in the transaction."""
    clock = Clock()
    service = placement(engine, clock, FakeInventory(), FakePayments(), FakePublisher())
    monkeypatch.setattr(engine.dialect, "update_returning", False)
    answered = service.place(ORDER, started=clock())
    monkeypatch.undo()
    with SqlUnitOfWorkFactory(engine)(read_only=True) as unit:
        stored = unit.orders.get(answered.id)
    assert stored is not None and answered.payment.attempts == stored.payment.attempts == 1
    assert answered.to_dict() == stored.to_dict()
