"""Fakes and helpers of the worker tests: a scripted job gateway, a clock, orders written straight to the db."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app.adapters.sql import SqlUnitOfWorkFactory
from app.domain import AttemptRecord, DeadLetter, Order
from app.services.ports import CaptureResult
from app.services.unit_of_work import PaymentJobRow, UnitOfWorkFactory
from tests.fake_unit_of_work import new_order

STATUS_FOR = {"captured": 201, "declined": 402, "rejected": 400, "failed": 503, "conflict": 409}


@dataclass
class FakeJobGateway:
    """Answers each capture with the next scripted outcome (the last one repeats)."""

    outcomes: list[str] = field(default_factory=lambda: ["captured"])
    break_until: float | None = None
    ledger: list[dict[str, object]] | None = field(default_factory=list)
    retry_after: float | None = None
    calls: list[str] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)

    def circuit_allows_calls(self) -> bool:
        return self.break_until is None

    def circuit_break_until(self) -> float | None:
        return self.break_until

    def capture(self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float,
                source: str) -> CaptureResult:
        if self.break_until is not None:
            # As the real pipeline does: the open circuit refuses the call before anything is sent.
            return CaptureResult("not_attempted", error="circuit open")
        outcome = self.outcomes[min(len(self.calls), len(self.outcomes) - 1)]
        self.calls.append(order_id)
        status = STATUS_FOR.get(outcome)
        attempt = AttemptRecord(source, datetime.now(UTC), 3, outcome, status, None if outcome == "captured"
                                else f"HTTP {status}")
        if outcome == "not_attempted":
            return CaptureResult("not_attempted", error="circuit open")
        if outcome == "conflict":  # as PaymentClient reports a 409: retryable later, the job's own retry
            return CaptureResult("failed", None, (attempt,), http_status=status)
        return CaptureResult(outcome, f"pay_{order_id[:8]}" if outcome == "captured" else None, (attempt,),
                             http_status=status, retry_after=self.retry_after if outcome == "failed" else None)

    def lookup_captures(self, order_id: str, *, deadline: float) -> list[dict[str, object]] | None:
        self.lookups.append(order_id)
        if self.ledger is None:
            return None
        return [c for c in self.ledger if c.get("order_id") == order_id]


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def place_order(uow: UnitOfWorkFactory, *, now: datetime, customer_id: int = 1,
                due_at: datetime | None = None) -> str:
    order = new_order(uuid.uuid4().hex, now=now, customer_id=customer_id)
    with uow() as unit:
        unit.orders.add(order)
        unit.outbox.payments.add(order.id, due_at=due_at or now, now=now)
        unit.commit()
    return order.id


def order(uow: UnitOfWorkFactory, order_id: str) -> Order:
    with uow(read_only=True) as unit:
        found = unit.orders.get(order_id)
    assert found is not None
    return found


def job(uow: UnitOfWorkFactory, order_id: str) -> PaymentJobRow:
    with uow(read_only=True) as unit:
        found = unit.outbox.payments.get(order_id)
    assert found is not None
    return found


def dead_letters_of(uow: UnitOfWorkFactory, order_id: str) -> list[DeadLetter]:
    with uow(read_only=True) as unit:
        return [d for d in unit.dead_letters.latest() if d.order_id == order_id]


def uow_of(engine: Engine) -> SqlUnitOfWorkFactory:
    """The SQL unit of work over a test's engine, keeping what its units publish (`.published`)."""
    published: list[object] = []
    factory = SqlUnitOfWorkFactory(engine, published.append)
    factory.published = published  # type: ignore[attr-defined]
    return factory
