"""Reads and conditional writes on the schema. Every function takes an open Connection: the caller
owns the transaction, so an order, its job and its attempts change together or not at all."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from app.adapters.tables import (
    dead_letters,
    feature_flags,
    idempotency_keys,
    notification_jobs,
    order_lines,
    orders,
    payment_attempts,
    payment_jobs,
    products,
)
from app.domain import (
    FailureReason,
    InventorySource,
    Order,
    OrderLine,
    OrderStatus,
    Payment,
    PaymentStatus,
    check_transition,
)
from app.domain.model import PAYMENT_STATUS_FOR


def utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- catalog ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    unit_price: Decimal


def list_products(conn: Connection) -> list[Product]:
    rows = conn.execute(select(products).order_by(products.c.id))
    return [Product(r.id, r.name, Decimal(r.unit_price)) for r in rows]


def products_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, Product]:
    rows = conn.execute(select(products).where(products.c.id.in_(list(set(ids)))))
    return {r.id: Product(r.id, r.name, Decimal(r.unit_price)) for r in rows}


# --- orders ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRecord:
    source: str  # "api" | "worker"
    started_at: datetime
    duration_ms: int
    outcome: str
    http_status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "started_at": self.started_at.isoformat(),
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "error": self.error,
        }


# Built once: statements whose values come as parameters skip SQLAlchemy's per-call construction and cache
# key walk, which `insert(...).values(...)` pays on every order (about 40% of the transaction's CPU).
_INSERT_ORDER = insert(orders)
_INSERT_LINES = insert(order_lines)
_INSERT_PAYMENT_JOB = insert(payment_jobs)


def insert_order(conn: Connection, order: Order, *, job_due_at: datetime) -> None:
    """The order and its payment job, in the caller's transaction: the outbox write."""
    conn.execute(
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
            "payment_id": None,
            "failure_reason": None,
            "message": order.message,
            "created_at": order.created_at,
            "updated_at": order.updated_at,
        },
    )
    conn.execute(
        _INSERT_LINES,
        [
            {
                "order_id": order.id,
                "line_no": i,
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
            }
            for i, line in enumerate(order.lines)
        ],
    )
    conn.execute(
        _INSERT_PAYMENT_JOB,
        {
            "order_id": order.id,
            "state": "pending",
            "retries": 0,
            "next_attempt_at": job_due_at,
            "created_at": order.created_at,
            "updated_at": order.created_at,
        },
    )


def _order_from_row(row: Any, lines: Sequence[Any]) -> Order:
    status = OrderStatus(row.status)
    return Order(
        id=row.id,
        customer_id=int(row.customer_id),
        status=status,
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
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


def order_exists(conn: Connection, order_id: str) -> bool:
    return conn.execute(select(orders.c.id).where(orders.c.id == order_id)).first() is not None


def get_order(conn: Connection, order_id: str) -> Order | None:
    row = conn.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None:
        return None
    lines = conn.execute(
        select(order_lines).where(order_lines.c.order_id == order_id).order_by(order_lines.c.line_no)
    ).all()
    return _order_from_row(row, lines)


def list_orders(conn: Connection, *, status: OrderStatus | None, limit: int) -> list[Order]:
    query = select(orders).order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(orders.c.status == str(status))
    rows = conn.execute(query).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    by_order: dict[str, list[Any]] = {i: [] for i in ids}
    for line in conn.execute(
        select(order_lines).where(order_lines.c.order_id.in_(ids)).order_by(order_lines.c.line_no)
    ):
        by_order[line.order_id].append(line)
    return [_order_from_row(r, by_order[r.id]) for r in rows]


def count_orders_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
    counts = {str(s): 0 for s in OrderStatus}
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def move_order(
    conn: Connection,
    order_id: str,
    *,
    from_status: OrderStatus,
    to_status: OrderStatus,
    now: datetime,
    payment_id: str | None = None,
    failure_reason: FailureReason | None = None,
    message: str | None = None,
) -> bool:
    """A conditional UPDATE: of two processes moving one order, exactly one wins."""
    check_transition(from_status, to_status)
    result = conn.execute(
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


def record_attempts(conn: Connection, order_id: str, attempts: Sequence[AttemptRecord], *, now: datetime) -> None:
    if not attempts:
        return
    conn.execute(
        insert(payment_attempts),
        [{"order_id": order_id, **a.to_dict(), "started_at": a.started_at} for a in attempts],
    )
    conn.execute(
        update(orders)
        .where(orders.c.id == order_id)
        .values(payment_attempts=orders.c.payment_attempts + len(attempts), updated_at=now)
    )


def attempt_history(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(payment_attempts).where(payment_attempts.c.order_id == order_id).order_by(payment_attempts.c.id)
    )
    return [
        {
            "source": r.source,
            "started_at": _utc(r.started_at).isoformat(),
            "duration_ms": r.duration_ms,
            "outcome": r.outcome,
            "http_status": r.http_status,
            "error": r.error,
        }
        for r in rows
    ]


# --- payment jobs (the outbox) ---------------------------------------------------------------------


def set_job_due(conn: Connection, order_id: str, *, due_at: datetime, now: datetime) -> None:
    conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == order_id, payment_jobs.c.state == "pending"))
        .values(next_attempt_at=due_at, published_at=None, updated_at=now)
    )


def close_job(conn: Connection, order_id: str, *, state: str, now: datetime) -> None:
    conn.execute(
        update(payment_jobs)
        .where(payment_jobs.c.order_id == order_id)
        .values(state=state, lease_until=None, claim_token=None, updated_at=now)
    )


def job_id_for(conn: Connection, order_id: str) -> int | None:
    return conn.execute(select(payment_jobs.c.id).where(payment_jobs.c.order_id == order_id)).scalar()


def queue_notification(conn: Connection, order_id: str, kind: str, *, now: datetime) -> None:
    """At most one notification job per order and kind, whichever path confirmed the order."""
    exists = conn.execute(
        select(notification_jobs.c.id).where(
            and_(notification_jobs.c.order_id == order_id, notification_jobs.c.kind == kind)
        )
    ).first()
    if exists:
        return
    conn.execute(
        insert(notification_jobs).values(
            order_id=order_id, kind=kind, state="pending", attempts=0, next_attempt_at=now,
            created_at=now, updated_at=now,
        )
    )


def count_unreplayed_dead_letters(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(dead_letters).where(dead_letters.c.replayed_at.is_(None)))
               .scalar_one())


def count_payment_backlog(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(payment_jobs)
                            .where(payment_jobs.c.state.in_(("pending", "running")))).scalar_one())


# --- feature flags ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool
    description: str
    updated_at: datetime
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "description": self.description,
            "updated_at": self.updated_at.isoformat().replace("+00:00", "Z"),
            "updated_by": self.updated_by,
        }


def list_flags(conn: Connection) -> list[Flag]:
    rows = conn.execute(select(feature_flags).order_by(feature_flags.c.name))
    return [Flag(r.name, bool(r.enabled), r.description, _utc(r.updated_at), r.updated_by) for r in rows]


def set_flag(conn: Connection, name: str, *, enabled: bool, by: str, now: datetime) -> Flag | None:
    result = conn.execute(
        update(feature_flags)
        .where(feature_flags.c.name == name)
        .values(enabled=enabled, updated_by=by, updated_at=now)
    )
    if result.rowcount != 1:
        return None
    row = conn.execute(select(feature_flags).where(feature_flags.c.name == name)).one()
    return Flag(row.name, bool(row.enabled), row.description, _utc(row.updated_at), row.updated_by)


# --- idempotency keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class KeyClaim:
    """What claiming an Idempotency-Key found.

    `claimed`: this request holds the key (`token`); `replay`: a finished response (`response`); `bound`: an
    order is bound to the key but no response was stored and nobody holds it any more (`order_id`);
    `in_use`: another request holds it; `mismatch`: it was first used with another body."""

    outcome: str  # "claimed" | "replay" | "bound" | "in_use" | "mismatch"
    response: StoredResponse | None = None
    token: str | None = None
    order_id: str | None = None


def claim_idempotency_key(
    conn: Connection, key: str, fingerprint: str, *, now: datetime, lock_for: timedelta, keep_for: timedelta,
    token: str,
) -> KeyClaim:
    """Every write here is conditional, so of two requests racing for one key exactly one holds it, on
    SQLite and on PostgreSQL alike (a lost race shows as no row changed, or as an IntegrityError on the
    insert, which the caller answers by claiming again)."""
    keys = idempotency_keys.c
    row = conn.execute(select(idempotency_keys).where(keys.key == key)).first()
    if row is not None and _utc(row.expires_at) <= now:
        conn.execute(idempotency_keys.delete().where(and_(keys.key == key, keys.expires_at <= now)))
        row = None
    if row is None:
        conn.execute(
            insert(idempotency_keys).values(
                key=key, fingerprint=fingerprint, state="running", locked_until=now + lock_for,
                created_at=now, expires_at=now + keep_for, claim_token=token,
            )
        )
        return KeyClaim("claimed", token=token)
    if row.fingerprint != fingerprint:
        return KeyClaim("mismatch")
    if row.state == "done":
        return KeyClaim(
            "replay", StoredResponse(int(row.response_status), row.response_body, json.loads(row.response_headers))
        )
    if _utc(row.locked_until) > now:
        return KeyClaim("in_use")
    if row.order_id is not None:
        # The first request stored its order and then died, timed out or failed: its order is the answer.
        return KeyClaim("bound", order_id=row.order_id)
    # The first request's claim lapsed before it stored an order: this request takes over, if no other
    # request took it over first (the UPDATE is conditional on what made the takeover allowed).
    taken = conn.execute(
        update(idempotency_keys)
        .where(and_(keys.key == key, keys.state == "running", keys.order_id.is_(None), keys.locked_until <= now))
        .values(locked_until=now + lock_for, claim_token=token)
    ).rowcount
    return KeyClaim("claimed", token=token) if taken == 1 else KeyClaim("in_use")


def bind_idempotency_key(conn: Connection, key: str, token: str, order_id: str) -> bool:
    """Bind the order to the key, in the transaction that stores the order. False when this request no longer
    holds the key (its claim lapsed and another request took it over): the caller must not store the order."""
    keys = idempotency_keys.c
    return conn.execute(
        update(idempotency_keys)
        .where(and_(keys.key == key, keys.claim_token == token, keys.order_id.is_(None)))
        .values(order_id=order_id)
    ).rowcount == 1


def complete_idempotency_key(conn: Connection, key: str, token: str, response: StoredResponse) -> None:
    keys = idempotency_keys.c
    conn.execute(
        update(idempotency_keys)
        .where(and_(keys.key == key, keys.claim_token == token, keys.state == "running"))
        .values(
            state="done",
            response_status=response.status,
            response_body=response.body,
            response_headers=json.dumps(response.headers),
        )
    )


def release_idempotency_key(conn: Connection, key: str, token: str, *, now: datetime) -> None:
    """This request ends without a response to keep. A key with no order is freed for the client's retry; a
    key bound to an order keeps it, and its claim lapses now so the retry is answered with that order."""
    keys = idempotency_keys.c
    mine = and_(keys.key == key, keys.claim_token == token, keys.state == "running")
    conn.execute(idempotency_keys.delete().where(and_(mine, keys.order_id.is_(None))))
    conn.execute(update(idempotency_keys).where(and_(mine, keys.order_id.is_not(None))).values(locked_until=now))


def purge_expired_keys(conn: Connection, *, now: datetime) -> int:
    return conn.execute(idempotency_keys.delete().where(idempotency_keys.c.expires_at <= now)).rowcount


