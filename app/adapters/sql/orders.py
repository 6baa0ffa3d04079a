"""Orders, their lines and their payment attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from app.adapters.sql.tables import dead_letters, order_lines, orders, payment_attempts
from app.adapters.sql.times import utc
from app.domain import (
    PAYMENT_STATUS_FOR,
    AttemptRecord,
    FailureReason,
    InventorySource,
    Order,
    OrderLine,
    OrderStatus,
    Payment,
    PaymentStatus,
    check_transition,
)

# Built once: statements whose values come as parameters skip SQLAlchemy's per-call construction and cache
# key walk, which `insert(...).values(...)` pays on every order (about 40% of the transaction's CPU).
_INSERT_ORDER = insert(orders)
_INSERT_LINES = insert(order_lines)
_INSERT_ATTEMPTS = insert(payment_attempts)


def attempt_rows(order_id: str, attempts: Sequence[AttemptRecord]) -> list[dict[str, Any]]:
    return [{"order_id": order_id, **a.to_dict(), "started_at": a.started_at} for a in attempts]


def _order_from_row(row: Any, lines: Sequence[Any]) -> Order:
    return Order(
        id=row.id,
        customer_id=int(row.customer_id),
        status=OrderStatus(row.status),
        currency=row.currency,
        lines=tuple(OrderLine(line.product_id, line.quantity, Decimal(line.unit_price)) for line in lines),
        payment=Payment(
            status=PaymentStatus(row.payment_status),
            attempts=int(row.payment_attempts),
            payment_id=row.payment_id,
            failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
        ),
        inventory_source=InventorySource(row.inventory_source),
        message=row.message,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


class SqlOrders:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, order: Order) -> None:
        self._conn.execute(
            _INSERT_ORDER,
            {
                "id": order.id,
                "customer_id": order.customer_id,
                "status": str(order.status),
                "currency": order.currency,
                "total": order.total,
                "inventory_source": str(order.inventory_source),
                "payment_status": str(order.payment.status),
                "payment_attempts": order.payment.attempts,
                "payment_id": order.payment.payment_id,
                "failure_reason": str(order.payment.failure_reason) if order.payment.failure_reason else None,
                "message": order.message,
                "created_at": order.created_at,
                "updated_at": order.updated_at,
            },
        )
        self._conn.execute(
            _INSERT_LINES,
            [
                {"order_id": order.id, "line_no": i, "product_id": line.product_id, "quantity": line.quantity,
                 "unit_price": line.unit_price}
                for i, line in enumerate(order.lines)
            ],
        )

    def exists(self, order_id: str) -> bool:
        return self._conn.execute(select(orders.c.id).where(orders.c.id == order_id)).first() is not None

    def get(self, order_id: str) -> Order | None:
        row = self._conn.execute(select(orders).where(orders.c.id == order_id)).first()
        if row is None:
            return None
        lines = self._conn.execute(
            select(order_lines).where(order_lines.c.order_id == order_id).order_by(order_lines.c.line_no)
        ).all()
        return _order_from_row(row, lines)

    def status_of(self, order_id: str) -> str | None:
        return self._conn.execute(select(orders.c.status).where(orders.c.id == order_id)).scalar()

    def latest(self, *, status: OrderStatus | None, limit: int) -> list[Order]:
        query = select(orders).order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(orders.c.status == str(status))
        rows = self._conn.execute(query).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        by_order: dict[str, list[Any]] = {i: [] for i in ids}
        for line in self._conn.execute(
            select(order_lines).where(order_lines.c.order_id.in_(ids)).order_by(order_lines.c.line_no)
        ):
            by_order[line.order_id].append(line)
        return [_order_from_row(r, by_order[r.id]) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
        counts = {str(s): 0 for s in OrderStatus}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def move(self, order_id: str, *, from_status: OrderStatus, to_status: OrderStatus, now: datetime,
             payment_id: str | None = None, failure_reason: FailureReason | None = None,
             message: str | None = None) -> bool:
        check_transition(from_status, to_status)
        result = self._conn.execute(
            update(orders)
            .where(and_(orders.c.id == order_id, orders.c.status == str(from_status)))
            .values(
                status=str(to_status),
                payment_status=str(PAYMENT_STATUS_FOR[to_status]),
                payment_id=payment_id,
                failure_reason=str(failure_reason) if failure_reason else None,
                message=message,
                updated_at=now,
            )
        )
        return result.rowcount == 1

    def record_attempts(self, order_id: str, attempts: Sequence[AttemptRecord], *, now: datetime) -> int | None:
        if not attempts:
            return None
        self._conn.execute(_INSERT_ATTEMPTS, attempt_rows(order_id, attempts))
        count = (
            update(orders)
            .where(orders.c.id == order_id)
            .values(payment_attempts=orders.c.payment_attempts + len(attempts), updated_at=now)
        )
        if self._conn.dialect.update_returning:  # PostgreSQL, SQLite 3.35 and later
            return self._conn.execute(count.returning(orders.c.payment_attempts)).scalar()
        self._conn.execute(count)
        return self._conn.execute(select(orders.c.payment_attempts).where(orders.c.id == order_id)).scalar()

    def attempts_since_last_dead_letter(self, order_id: str) -> list[dict[str, Any]]:
        """Each earlier dead letter holds every attempt up to it, so the attempts of this run are those after
        the ones the earlier dead letters already hold; counting them, not comparing clocks, keeps this right
        when the API's and the workers' clocks disagree."""
        earlier = self._conn.execute(
            select(func.coalesce(func.sum(dead_letters.c.attempts), 0)).where(dead_letters.c.order_id == order_id)
        ).scalar_one()
        rows = self._conn.execute(
            select(payment_attempts)
            .where(payment_attempts.c.order_id == order_id)
            .order_by(payment_attempts.c.id)
            .offset(int(earlier))
        )
        return [
            {
                "source": r.source,
                "started_at": utc(r.started_at).isoformat(),
                "duration_ms": r.duration_ms,
                "outcome": r.outcome,
                "http_status": r.http_status,
                "error": r.error,
            }
            for r in rows
        ]
