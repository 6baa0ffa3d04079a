"""Outbox, notification and dead-letter SQL. Every function takes an open Connection: the caller owns the
transaction. Every change of a claimed job is conditional on its claim token, so a worker whose lease was
taken over can no longer touch the job it lost.

The statements a worker runs for every job are built once, with bound parameters, and say what they need in
one round trip (UPDATE ... RETURNING): a backlog drains at the pace of these statements, and building a
statement anew costs SQLAlchemy a cache key per execution."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    TextClause,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from app.adapters.db import write
from app.adapters.repository import utc
from app.adapters.tables import dead_letters, notification_jobs, orders, payment_attempts, payment_jobs


@lru_cache(maxsize=16)
def _autocommit(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


_HELD: ContextVar[tuple[Engine, Connection] | None] = ContextVar("orderflow_held_connection", default=None)


@contextmanager
def one_connection(engine: Engine) -> Iterator[None]:
    """Every `single_statement` on `engine` inside this block runs on one connection (PostgreSQL): a job checks
    a connection out of the pool, and pings it, once instead of once per statement."""
    if engine.dialect.name != "postgresql" or _HELD.get() is not None:
        yield
        return
    with _autocommit(engine).connect() as conn:
        token = _HELD.set((engine, conn))
        try:
            yield
        finally:
            _HELD.reset(token)


@contextmanager
def single_statement(engine: Engine) -> Iterator[Connection]:
    """For a transaction of one statement. On PostgreSQL the statement is its own transaction (autocommit),
    which spares the BEGIN and COMMIT round trips; elsewhere it runs in an ordinary write transaction."""
    if engine.dialect.name != "postgresql":
        with write(engine) as conn:
            yield conn
        return
    held = _HELD.get()
    if held is not None and held[0] is engine:
        yield held[1]
        return
    with _autocommit(engine).connect() as conn:
        yield conn


# --- payment jobs: what the relay publishes ---------------------------------------------------------


# The relay's side of both outboxes (payment jobs by order id, notification jobs by id): which rows are due
# for a message, and marking one published so that of two relays only one sends it.

def _awaiting_message(table: Table, now: datetime, republish_before: datetime) -> ColumnElement[bool]:
    """Pending, due, and never published or published so long ago that the message must be lost."""
    return and_(
        table.c.state == "pending",
        # Still due: a worker may have deferred or rescheduled it since the relay read it.
        table.c.next_attempt_at <= now,
        or_(table.c.published_at.is_(None), table.c.published_at < republish_before),
    )


def _due(conn: Connection, key: Column[Any], *, now: datetime, republish_before: datetime, limit: int) -> list[Any]:
    table = key.table
    rows = conn.execute(
        select(key).where(_awaiting_message(table, now, republish_before))
        .order_by(table.c.next_attempt_at).limit(limit)
    )
    return [row[0] for row in rows]


def _mark_published(conn: Connection, key: Column[Any], value: Any, *, now: datetime,
                    republish_before: datetime) -> bool:
    table = key.table
    return conn.execute(
        update(table).where(and_(key == value, _awaiting_message(table, now, republish_before)))
        .values(published_at=now)
    ).rowcount == 1


def _unmark_published(conn: Connection, key: Column[Any], value: Any) -> None:
    table = key.table
    conn.execute(update(table).where(and_(key == value, table.c.state == "pending")).values(published_at=None))


def due_payment_jobs(conn: Connection, *, now: datetime, republish_before: datetime, limit: int) -> list[str]:
    """Order ids of pending, due jobs never published or published so long ago the message must be lost."""
    return [str(order_id) for order_id in _due(conn, payment_jobs.c.order_id, now=now,
                                                republish_before=republish_before, limit=limit)]


def mark_payment_published(
    conn: Connection, order_id: str, *, now: datetime, republish_before: datetime
) -> bool:
    """True for the one relay that gets to publish this job now; another relay running at once gets False."""
    return _mark_published(conn, payment_jobs.c.order_id, order_id, now=now, republish_before=republish_before)


def unmark_payment_published(conn: Connection, order_id: str) -> None:
    """The publish failed: the next relay pass tries again instead of waiting for the republish delay."""
    _unmark_published(conn, payment_jobs.c.order_id, order_id)


def reclaim_expired_payment_leases(conn: Connection, *, now: datetime) -> int:
    """A running job whose lease ran out lost its worker (killed, frozen): it becomes pending and due now.
    The lost run counts as a retry, so a job that keeps killing its worker runs out of retries like one that
    keeps failing, instead of taking workers down forever; the derived payment key makes a rerun safe."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.state == "running", payment_jobs.c.lease_until < now))
        .values(state="pending", retries=payment_jobs.c.retries + 1, next_attempt_at=now, lease_until=None,
                claim_token=None, published_at=None, updated_at=now)
    ).rowcount


# --- payment jobs: what a worker does with one ------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    order_id: str
    retries: int
    claim_token: str
    # The order as the claim found it: what the payment call needs, read in the same statement.
    order_status: str = "PaymentPending"
    customer_id: int = 0
    total: Decimal = Decimal("0")
    currency: str = "USD"
    # A replayed job: the ledger is asked before the capture (see `restart_payment_job`).
    ledger_first: bool = False


_CLAIM_WHERE = and_(
    payment_jobs.c.order_id == bindparam("job_order_id"),
    payment_jobs.c.state == "pending",
    payment_jobs.c.next_attempt_at <= bindparam("claim_now"),
)
_CLAIM_VALUES = {"state": "running", "lease_until": bindparam("claim_lease_until"),
                 "claim_token": bindparam("claim_token_value"), "updated_at": bindparam("claim_now")}
_ORDER_FOR_PAYMENT = (orders.c.status, orders.c.customer_id, orders.c.total, orders.c.currency)
# PostgreSQL: the claim and the order in one statement (UPDATE ... FROM orders ... RETURNING).
_CLAIM_PAYMENT_JOB_WITH_ORDER = (
    update(payment_jobs)
    .where(and_(_CLAIM_WHERE, orders.c.id == payment_jobs.c.order_id))
    .values(_CLAIM_VALUES)
    .returning(payment_jobs.c.retries, payment_jobs.c.ledger_first, *_ORDER_FOR_PAYMENT)
)
# SQLite's RETURNING may not name the tables of UPDATE ... FROM: the claim, then the order.
_CLAIM_PAYMENT_JOB = (
    update(payment_jobs).where(_CLAIM_WHERE).values(_CLAIM_VALUES)
    .returning(payment_jobs.c.retries, payment_jobs.c.ledger_first)
)
_ORDER_OF_JOB = select(*_ORDER_FOR_PAYMENT).where(orders.c.id == bindparam("job_order_id"))


def claim_payment_job(
    conn: Connection, order_id: str, *, now: datetime, lease_until: datetime, token: str
) -> ClaimedJob | None:
    """pending & due -> running, in one conditional UPDATE: of two messages for one job exactly one runs it.
    It returns the retry count and, on PostgreSQL in the same statement, the order's payment details."""
    params = {"job_order_id": order_id, "claim_now": now, "claim_lease_until": lease_until,
              "claim_token_value": token}
    if conn.dialect.name == "postgresql":
        row = conn.execute(_CLAIM_PAYMENT_JOB_WITH_ORDER, params).first()
        if row is None:
            return None
        claimed, order = row, row
    else:
        job_row = conn.execute(_CLAIM_PAYMENT_JOB, params).first()
        if job_row is None:
            return None
        claimed, order = job_row, conn.execute(_ORDER_OF_JOB, {"job_order_id": order_id}).one()
    return ClaimedJob(order_id, int(claimed.retries), token, order_status=order.status,
                      customer_id=int(order.customer_id), total=Decimal(str(order.total)), currency=order.currency,
                      ledger_first=bool(claimed.ledger_first))


def reschedule_payment_job(
    conn: Connection, job: ClaimedJob, *, due_at: datetime, retries: int, now: datetime, ledger_first: bool = False
) -> bool:
    """running -> pending, due at `due_at` (a retry sets `retries` one higher; a deferral keeps it).
    `ledger_first`: the next run asks the ledger before it captures (this run could not)."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == job.order_id, payment_jobs.c.claim_token == job.claim_token))
        .values(state="pending", retries=retries, next_attempt_at=due_at, lease_until=None, claim_token=None,
                published_at=None, ledger_first=ledger_first, updated_at=now)
    ).rowcount == 1


def hold_claim(conn: Connection, job: ClaimedJob, *, now: datetime) -> bool:
    """True while `job`'s claim is still this run's; it also locks the job's row until the transaction ends
    (PostgreSQL), so the relay cannot take the lease back between this check and the commit."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == job.order_id, payment_jobs.c.claim_token == job.claim_token))
        .values(updated_at=now)
    ).rowcount == 1


_FINISH_PAYMENT_JOB = (
    update(payment_jobs)
    .where(and_(payment_jobs.c.order_id == bindparam("job_order_id"),
                payment_jobs.c.claim_token == bindparam("job_claim_token")))
    .values(state=bindparam("final_state"), lease_until=None, claim_token=None, updated_at=bindparam("finish_now"))
)


def finish_payment_job(conn: Connection, job: ClaimedJob, *, state: str, now: datetime) -> bool:
    """running -> done | dead."""
    return conn.execute(
        _FINISH_PAYMENT_JOB,
        {"job_order_id": job.order_id, "job_claim_token": job.claim_token, "final_state": state, "finish_now": now},
    ).rowcount == 1


_SETTLE_ORDER = (
    update(orders)
    .where(and_(orders.c.id == bindparam("settle_order_id"), orders.c.status == bindparam("from_status")))
    .values(status=bindparam("to_status"), payment_status=bindparam("to_payment_status"),
            payment_id=bindparam("settle_payment_id"), failure_reason=bindparam("settle_failure_reason"),
            message=None, payment_attempts=orders.c.payment_attempts + bindparam("new_attempts"),
            updated_at=bindparam("settle_now"))
)
_COUNT_ATTEMPTS = (
    update(orders)
    .where(orders.c.id == bindparam("settle_order_id"))
    .values(payment_attempts=orders.c.payment_attempts + bindparam("new_attempts"),
            updated_at=bindparam("settle_now"))
)


def settle_payment_job(
    conn: Connection,
    job: ClaimedJob,
    *,
    from_status: str,
    to_status: str,
    payment_status: str,
    attempts: Sequence[Any],
    now: datetime,
    payment_id: str | None = None,
    failure_reason: str | None = None,
    notification_kind: str | None = None,
    notification_claimed_until: datetime | None = None,
) -> tuple[bool, int | None]:
    """The end of a run that settles its order: the attempts recorded (`AttemptRecord`s) and counted on the
    order, the order moved by a conditional UPDATE (of two processes moving one order exactly one wins; when
    someone else moved it, the attempts are still counted), the job done, and, if the order moved and
    `notification_kind` is given, its notification job queued (see `queue_notification`). Returns (moved, the
    new notification job's id). On PostgreSQL all of it is one statement, so it needs no transaction of its
    own; elsewhere the caller's transaction holds the statements together."""
    params: dict[str, Any] = {
        "settle_order_id": job.order_id, "from_status": str(from_status), "to_status": str(to_status),
        "to_payment_status": str(payment_status), "settle_payment_id": payment_id,
        "settle_failure_reason": str(failure_reason) if failure_reason else None, "new_attempts": len(attempts),
        "settle_now": now,
    }
    if conn.dialect.name == "postgresql":
        for i, attempt in enumerate(attempts):
            params.update({f"a{i}_{k}": v for k, v in attempt.to_dict().items()})
            params[f"a{i}_started_at"] = attempt.started_at
        params.update({
            "job_claim_token": job.claim_token, "queue_kind": notification_kind or "",
            "queue_state": "pending" if notification_claimed_until is None else "running",
            "queue_lease_until": notification_claimed_until,
        })
        row = conn.execute(_settle_statement(len(attempts), notify=notification_kind is not None), params).one()
        return bool(row.moved), (int(row.notification_id) if row.notification_id is not None else None)
    if attempts:
        conn.execute(insert(payment_attempts),
                     [{"order_id": job.order_id, **a.to_dict(), "started_at": a.started_at} for a in attempts])
    moved = conn.execute(_SETTLE_ORDER, params).rowcount == 1
    if not moved and attempts:
        conn.execute(_COUNT_ATTEMPTS, params)
    finish_payment_job(conn, job, state="done", now=now)
    notification = None
    if moved and notification_kind is not None:
        notification = queue_notification(conn, job.order_id, notification_kind, now=now,
                                          claimed_until=notification_claimed_until)
    return moved, notification


_SETTLE_STATEMENTS: dict[tuple[int, bool], TextClause] = {}


def _settle_statement(attempts: int, *, notify: bool) -> TextClause:
    """PostgreSQL: settle_payment_job in one statement of data-modifying CTEs. `counted` touches the order
    only when `moved` did not, so no row is updated twice."""
    key = (attempts, notify)
    statement = _SETTLE_STATEMENTS.get(key)
    if statement is not None:
        return statement
    values = ", ".join(
        f"(:settle_order_id, :a{i}_source, :a{i}_started_at, :a{i}_duration_ms, :a{i}_outcome, :a{i}_http_status, "
        f":a{i}_error)"
        for i in range(attempts)
    )
    recorded = (
        f", recorded AS (INSERT INTO payment_attempts (order_id, source, started_at, duration_ms, outcome, "
        f"http_status, error) VALUES {values})"
        if attempts else ""
    )
    notification = (
        ", notification AS (INSERT INTO notification_jobs (order_id, kind, state, attempts, next_attempt_at, "
        "lease_until, created_at, updated_at) SELECT id, CAST(:queue_kind AS VARCHAR), "
        "CAST(:queue_state AS VARCHAR), 0, :settle_now, CAST(:queue_lease_until AS TIMESTAMPTZ), :settle_now, "
        ":settle_now FROM moved WHERE NOT EXISTS (SELECT 1 FROM notification_jobs "
        "WHERE order_id = :settle_order_id AND kind = CAST(:queue_kind AS VARCHAR)) "
        "RETURNING id)"
        if notify else ""
    )
    statement = text(
        "WITH moved AS (UPDATE orders SET status = :to_status, payment_status = :to_payment_status, "
        "payment_id = :settle_payment_id, failure_reason = :settle_failure_reason, message = NULL, "
        "payment_attempts = payment_attempts + :new_attempts, updated_at = :settle_now "
        "WHERE id = :settle_order_id AND status = :from_status RETURNING id)"
        + (", counted AS (UPDATE orders SET payment_attempts = payment_attempts + :new_attempts, "
           "updated_at = :settle_now WHERE id = :settle_order_id AND NOT EXISTS (SELECT 1 FROM moved))"
           if attempts else "")
        + recorded
        + ", finished AS (UPDATE payment_jobs SET state = 'done', lease_until = NULL, claim_token = NULL, "
        "updated_at = :settle_now WHERE order_id = :settle_order_id AND claim_token = :job_claim_token)"
        + notification
        + " SELECT EXISTS (SELECT 1 FROM moved) AS moved, "
        + ("(SELECT id FROM notification) AS notification_id" if notify else "NULL AS notification_id")
    )
    _SETTLE_STATEMENTS[key] = statement
    return statement


def restart_payment_job(conn: Connection, order_id: str, *, now: datetime) -> bool:
    """A replayed job: pending, a fresh retry count, due now, and the ledger asked before it captures again
    (the payment service may have forgotten the order's key since the first run: a capture there must be
    found, not repeated)."""
    return conn.execute(
        update(payment_jobs)
        .where(payment_jobs.c.order_id == order_id)
        .values(state="pending", retries=0, next_attempt_at=now, lease_until=None, claim_token=None,
                published_at=None, ledger_first=True, updated_at=now)
    ).rowcount == 1


@dataclass(frozen=True)
class PaymentJobRow:
    order_id: str
    state: str
    retries: int
    next_attempt_at: datetime
    lease_until: datetime | None
    published_at: datetime | None


def get_payment_job(conn: Connection, order_id: str) -> PaymentJobRow | None:
    row = conn.execute(select(payment_jobs).where(payment_jobs.c.order_id == order_id)).first()
    if row is None:
        return None
    return PaymentJobRow(row.order_id, row.state, int(row.retries), utc(row.next_attempt_at),  # type: ignore[arg-type]
                         utc(row.lease_until), utc(row.published_at))


# --- attempts of one run ----------------------------------------------------------------------------


def run_history(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    """The payment attempts since the order's last replay (all of them if it was never replayed).

    Each earlier dead letter holds every attempt up to it, so the attempts of this run are those after the
    ones the earlier dead letters already hold; counting them, not comparing clocks, keeps this right when
    the API's and the workers' clocks disagree."""
    earlier = conn.execute(
        select(func.coalesce(func.sum(dead_letters.c.attempts), 0)).where(dead_letters.c.order_id == order_id)
    ).scalar_one()
    rows = conn.execute(
        select(payment_attempts)
        .where(payment_attempts.c.order_id == order_id)
        .order_by(payment_attempts.c.id)
        .offset(int(earlier))
    )
    return [
        {
            "source": r.source,
            "started_at": utc(r.started_at).isoformat(),  # type: ignore[union-attr]
            "duration_ms": r.duration_ms,
            "outcome": r.outcome,
            "http_status": r.http_status,
            "error": r.error,
        }
        for r in rows
    ]


# --- dead letters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    id: int
    order_id: str
    attempts: int
    last_error: str | None
    history: list[dict[str, Any]]
    dead_lettered_at: datetime
    replayed_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "dead_lettered_at": _iso(self.dead_lettered_at),
            "replayed_at": _iso(self.replayed_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=int(row.id), order_id=row.order_id, attempts=int(row.attempts), last_error=row.last_error,
        history=json.loads(row.history), dead_lettered_at=utc(row.dead_lettered_at),  # type: ignore[arg-type]
        replayed_at=utc(row.replayed_at),
    )


def insert_dead_letter(
    conn: Connection, order_id: str, *, history: Sequence[dict[str, Any]], last_error: str | None, now: datetime
) -> int:
    result = conn.execute(
        insert(dead_letters).values(
            order_id=order_id, attempts=len(history), last_error=last_error, history=json.dumps(list(history)),
            dead_lettered_at=now, replayed_at=None,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def list_dead_letters(conn: Connection, *, limit: int = 500) -> list[DeadLetter]:
    rows = conn.execute(
        select(dead_letters).order_by(dead_letters.c.dead_lettered_at.desc(), dead_letters.c.id.desc()).limit(limit)
    )
    return [_dead_letter(r) for r in rows]


def get_dead_letter(conn: Connection, dead_letter_id: int) -> DeadLetter | None:
    row = conn.execute(select(dead_letters).where(dead_letters.c.id == dead_letter_id)).first()
    return _dead_letter(row) if row is not None else None


def mark_dead_letter_replayed(conn: Connection, dead_letter_id: int, *, now: datetime) -> bool:
    """Conditional on not replayed yet: of two replays of one dead letter exactly one wins."""
    return conn.execute(
        update(dead_letters)
        .where(and_(dead_letters.c.id == dead_letter_id, dead_letters.c.replayed_at.is_(None)))
        .values(replayed_at=now)
    ).rowcount == 1


# --- notification jobs ------------------------------------------------------------------------------


def due_notification_jobs(
    conn: Connection, *, now: datetime, republish_before: datetime, limit: int
) -> list[int]:
    """Ids of notification jobs awaiting a message, as `due_payment_jobs`."""
    return [int(job_id) for job_id in _due(conn, notification_jobs.c.id, now=now,
                                            republish_before=republish_before, limit=limit)]


def mark_notification_published(
    conn: Connection, job_id: int, *, now: datetime, republish_before: datetime
) -> bool:
    return _mark_published(conn, notification_jobs.c.id, job_id, now=now, republish_before=republish_before)


def unmark_notification_published(conn: Connection, job_id: int) -> None:
    _unmark_published(conn, notification_jobs.c.id, job_id)


def reclaim_expired_notification_leases(conn: Connection, *, now: datetime) -> int:
    return conn.execute(
        update(notification_jobs)
        .where(and_(notification_jobs.c.state == "running", notification_jobs.c.lease_until < now))
        .values(state="pending", next_attempt_at=now, lease_until=None, published_at=None, updated_at=now)
    ).rowcount


@dataclass(frozen=True)
class ClaimedNotification:
    id: int
    order_id: str
    kind: str
    attempts: int


_CLAIM_NOTIFICATION = (
    update(notification_jobs)
    .where(
        and_(
            notification_jobs.c.id == bindparam("job_id"),
            notification_jobs.c.state == "pending",
            notification_jobs.c.next_attempt_at <= bindparam("claim_now"),
        )
    )
    .values(state="running", lease_until=bindparam("claim_lease_until"), updated_at=bindparam("claim_now"))
    .returning(notification_jobs.c.order_id, notification_jobs.c.kind, notification_jobs.c.attempts)
)


def claim_notification(
    conn: Connection, job_id: int, *, now: datetime, lease_until: datetime
) -> ClaimedNotification | None:
    row = conn.execute(
        _CLAIM_NOTIFICATION, {"job_id": job_id, "claim_now": now, "claim_lease_until": lease_until}
    ).first()
    if row is None:
        return None
    return ClaimedNotification(job_id, row.order_id, row.kind, int(row.attempts))


_QUEUE_NOTIFICATION = (
    insert(notification_jobs)
    .from_select(
        ["order_id", "kind", "state", "attempts", "next_attempt_at", "lease_until", "created_at", "updated_at"],
        select(
            bindparam("queue_order_id", type_=notification_jobs.c.order_id.type),
            bindparam("queue_kind", type_=notification_jobs.c.kind.type),
            bindparam("queue_state", type_=notification_jobs.c.state.type),
            literal(0),
            bindparam("queue_now", type_=notification_jobs.c.created_at.type),
            bindparam("queue_lease_until", type_=notification_jobs.c.lease_until.type),
            bindparam("queue_now", type_=notification_jobs.c.created_at.type),
            bindparam("queue_now", type_=notification_jobs.c.created_at.type),
        ).where(
            ~exists().where(
                and_(notification_jobs.c.order_id == bindparam("queue_order_id"),
                     notification_jobs.c.kind == bindparam("queue_kind"))
            )
        ),
    )
    .returning(notification_jobs.c.id)
)


def queue_notification(
    conn: Connection, order_id: str, kind: str, *, now: datetime, claimed_until: datetime | None = None
) -> int | None:
    """At most one notification job per order and kind, in one statement; the new job's id, or None when
    there was one already. `claimed_until`: the writer sends it itself, so the job starts claimed (running)
    under a lease until then; if the writer dies first, the lease runs out and the relay hands it out."""
    row = conn.execute(
        _QUEUE_NOTIFICATION,
        {"queue_order_id": order_id, "queue_kind": kind, "queue_now": now,
         "queue_state": "pending" if claimed_until is None else "running", "queue_lease_until": claimed_until},
    ).first()
    return int(row.id) if row is not None else None


_FINISH_NOTIFICATIONS = (
    update(notification_jobs)
    .where(and_(notification_jobs.c.id.in_(bindparam("job_ids", expanding=True)),
                notification_jobs.c.state == "running"))
    .values(state=bindparam("final_state"), attempts=bindparam("final_attempts"), lease_until=None,
            updated_at=bindparam("finish_now"))
)


def finish_notifications(
    conn: Connection, job_ids: Sequence[int], *, state: str, attempts: int, now: datetime
) -> None:
    """running -> done | skipped | failed, for every job of `job_ids` (one statement)."""
    if job_ids:
        conn.execute(_FINISH_NOTIFICATIONS, {"job_ids": list(job_ids), "final_state": state,
                                             "final_attempts": attempts, "finish_now": now})


def retry_notification(conn: Connection, job_id: int, *, attempts: int, due_at: datetime, now: datetime) -> None:
    conn.execute(
        update(notification_jobs)
        .where(and_(notification_jobs.c.id == job_id, notification_jobs.c.state == "running"))
        .values(state="pending", attempts=attempts, next_attempt_at=due_at, lease_until=None, published_at=None,
                updated_at=now)
    )


def notification_state(conn: Connection, order_id: str, kind: str) -> str | None:
    return conn.execute(
        select(notification_jobs.c.state).where(
            and_(notification_jobs.c.order_id == order_id, notification_jobs.c.kind == kind)
        )
    ).scalar()


def order_status(conn: Connection, order_id: str) -> str | None:
    return conn.execute(select(orders.c.status).where(orders.c.id == order_id)).scalar()
