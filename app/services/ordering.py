"""Placing an order: the degrade-or-confirm decision."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app.adapters import repository as repo
from app.adapters.db import read, write
from app.domain import (
    PENDING_MESSAGE,
    FailureReason,
    InventorySource,
    Order,
    OrderLine,
    OrderStatus,
    OutOfStock,
    Payment,
    PaymentDeclined,
    StockRequest,
    UnknownProduct,
    money,
    worst_source,
)
from app.services.ports import FlagReader, InventoryChecker, JobPublisher, PaymentGateway

REAL_TIME_PAYMENTS = "RealTimePayments"
NOTIFICATIONS = "Notifications"
ORDER_CONFIRMED = "order_confirmed"


@dataclass(frozen=True)
class PlaceOrder:
    customer_id: int
    lines: tuple[tuple[int, int], ...]
    currency: str = "USD"


@dataclass
class OrderPlacement:
    """Everything place_order needs, built once per process by the composition root."""

    engine: Engine
    inventory: InventoryChecker
    payments: PaymentGateway
    flags: FlagReader
    publisher: JobPublisher
    request_deadline: float
    inventory_total_timeout: float
    monotonic: Callable[[], float]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    on_order_created: Callable[[Order], None] = lambda order: None

    def place(self, command: PlaceOrder, *, started: float | None = None) -> Order:
        started = self.monotonic() if started is None else started
        deadline = started + self.request_deadline

        with read(self.engine) as conn:
            catalog = repo.products_by_id(conn, (pid for pid, _ in command.lines))
        unknown = sorted({pid for pid, _ in command.lines if pid not in catalog})
        if unknown:
            raise UnknownProduct(unknown)

        stock = StockRequest.of(list(command.lines))
        levels = self.inventory.levels(
            stock.quantities, deadline=min(deadline, self.monotonic() + self.inventory_total_timeout)
        )
        shortages = {
            pid: (wanted, level.available)
            for pid, wanted in stock.quantities.items()
            if (level := levels.get(pid)) is not None and level.available is not None and level.available < wanted
        }
        if shortages:
            raise OutOfStock(shortages)
        source = worst_source(
            [levels[pid].source if pid in levels else InventorySource.UNAVAILABLE for pid in stock.quantities]
        )

        real_time = self.flags.is_enabled(REAL_TIME_PAYMENTS) and self.payments.circuit_allows_calls()
        now = self.now()
        order = Order(
            id=uuid.uuid4().hex,
            customer_id=command.customer_id,
            status=OrderStatus.PAYMENT_PENDING,
            currency=command.currency,
            lines=tuple(OrderLine(pid, qty, catalog[pid].unit_price) for pid, qty in command.lines),
            payment=Payment(),
            inventory_source=source,
            created_at=now,
            updated_at=now,
            message=PENDING_MESSAGE,
        )
        # Stored before any payment call: a crash after a capture can never leave a charge without an order.
        # The job is not due until the request deadline has passed, so no worker races the real-time attempt.
        job_due = now + timedelta(seconds=self.request_deadline) if real_time else now
        with write(self.engine) as conn:
            repo.insert_order(conn, order, job_due_at=job_due)
        self.on_order_created(order)

        if not real_time:
            self.publisher.payment_due(order.id)
            return order
        return self._pay_in_real_time(order, deadline)

    def _pay_in_real_time(self, order: Order, deadline: float) -> Order:
        result = self.payments.capture(
            order_id=order.id,
            customer_id=order.customer_id,
            amount=money(order.total),
            currency=order.currency,
            deadline=deadline,
            source="api",
        )
        now = self.now()
        with write(self.engine) as conn:
            repo.record_attempts(conn, order.id, result.attempts, now=now)
            if result.outcome == "captured":
                if repo.move_order(
                    conn, order.id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.CONFIRMED,
                    now=now, payment_id=result.payment_id,
                ):
                    repo.close_job(conn, order.id, state="done", now=now)
                    repo.queue_notification(conn, order.id, ORDER_CONFIRMED, now=now)
            elif result.outcome == "declined":
                if repo.move_order(
                    conn, order.id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.PAYMENT_FAILED,
                    now=now, failure_reason=FailureReason.DECLINED,
                ):
                    repo.close_job(conn, order.id, state="done", now=now)
            else:
                repo.set_job_due(conn, order.id, due_at=now, now=now)
            stored = repo.get_order(conn, order.id)
        assert stored is not None
        if result.outcome == "declined":
            raise PaymentDeclined(stored)
        if result.outcome not in ("captured", "declined"):
            self.publisher.payment_due(order.id)
        return stored


def get_order(engine: Engine, order_id: str) -> Order | None:
    with read(engine) as conn:
        return repo.get_order(conn, order_id)


def list_orders(engine: Engine, *, status: OrderStatus | None, limit: int) -> list[Order]:
    with read(engine) as conn:
        return repo.list_orders(conn, status=status, limit=limit)
