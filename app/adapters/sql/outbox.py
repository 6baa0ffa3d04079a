"""The outbox: payment jobs (one per order, keyed by order id) and notification jobs (keyed by id).

Both are rows written in the transaction of the change that creates them, and share one life: pending and due
-> published by a relay (a conditional mark, so of two relays one sends it) -> claimed by a worker (running,
under a lease) -> done, or back to pending with a later due time; a lease that runs out gives the job back.
`_OutboxTable` holds that shared part once, over the table's key column; the payment and notification
classes add what only they do. Every change of a claimed job is conditional on its claim, so a run whose
lease was taken over can no longer touch the job it lost.

The statements a worker runs for every job are built once, with bound parameters, and say what they need in
one round trip (UPDATE ... RETURNING; on PostgreSQL the settle is a single statement): a backlog drains at the
pace of these statements, and building a statement anew costs SQLAlchemy a cache key per execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
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

from app.adapters.sql.orders import attempt_rows
from app.adapters.sql.tables import notification_jobs, orders, payment_attempts, payment_jobs
from app.adapters.sql.times import utc, utc_or_none
from app.domain import PAYMENT_STATUS_FOR, OrderStatus
from app.services.unit_of_work import ClaimedJob, ClaimedNotification, PaymentJobRow, Settlement

# --- what both outboxes share -----------------------------------------------------------------------------


class _OutboxTable:
    """The relay's side of one outbox (`Relay`), and the lease that gives a lost job back."""

    def __init__(self, conn: Connection, key: Column[Any], *, reclaim_counts_retry: bool) -> None:
        self._conn = conn
        self._key = key
        self._table: Table = key.table  # type: ignore[assignment]
        self._reclaim_counts_retry = reclaim_counts_retry

    def _awaiting_message(self, now: datetime, republish_before: datetime) -> ColumnElement[bool]:
        """Pending, due, and never published or published so long ago that the message must be lost."""
        table = self._table
        return and_(
            table.c.state == "pending",
            # Still due: a worker may have deferred or rescheduled it since the relay read it.
            table.c.next_attempt_at <= now,
            or_(table.c.published_at.is_(None), table.c.published_at < republish_before),
        )

    def due(self, *, now: datetime, republish_before: datetime, limit: int) -> list[Any]:
        rows = self._conn.execute(
            select(self._key).where(self._awaiting_message(now, republish_before))
            .order_by(self._table.c.next_attempt_at).limit(limit)
        )
        return [row[0] for row in rows]

    def mark_published(self, job: Any, *, now: datetime, republish_before: datetime) -> bool:
        """True for the one relay that gets to publish this job now."""
        return self._conn.execute(
            update(self._table).where(and_(self._key == job, self._awaiting_message(now, republish_before)))
            .values(published_at=now)
        ).rowcount == 1

    def unmark_published(self, job: Any) -> None:
        """The publish failed: the next relay pass tries again instead of waiting for the republish delay."""
        self._conn.execute(
            update(self._table).where(and_(self._key == job, self._table.c.state == "pending"))
            .values(published_at=None)
        )

    def reclaim_expired(self, *, now: datetime) -> int:
        """A running job whose lease ran out lost its worker (killed, frozen): pending and due now. For a
        payment the lost run counts as a retry, so a job that keeps killing its worker runs out of retries
        like one that keeps failing (and then the ledger decides) instead of taking workers down forever."""
        table = self._table
        values: dict[str, Any] = {"state": "pending", "next_attempt_at": now, "lease_until": None,
                                  "published_at": None, "updated_at": now}
        if self._reclaim_counts_retry:
            values.update(retries=table.c.retries + 1, claim_token=None)
        return self._conn.execute(
            update(table).where(and_(table.c.state == "running", table.c.lease_until < now)).values(values)
        ).rowcount


# --- payment jobs -----------------------------------------------------------------------------------------

_INSERT_PAYMENT_JOB = insert(payment_jobs)

_CLAIM_WHERE = and_(
    payment_jobs.c.order_id == bindparam("job_order_id"),
    payment_jobs.c.state == "pending",
    payment_jobs.c.next_attempt_at <= bindparam("claim_now"),
)
_CLAIM_VALUES = {"state": "running", "lease_until": bindparam("claim_lease_until"),
                 "claim_token": bindparam("claim_token_value"), "updated_at": bindparam("claim_now")}
_ORDER_FOR_PAYMENT = (orders.c.status, orders.c.customer_id, orders.c.total, orders.c.currency)
# PostgreSQL: the claim and the order in one statement (UPDATE ... FROM orders ... RETURNING).
_CLAIM_WITH_ORDER = (
    update(payment_jobs)
    .where(and_(_CLAIM_WHERE, orders.c.id == payment_jobs.c.order_id))
    .values(_CLAIM_VALUES)
    .returning(payment_jobs.c.retries, payment_jobs.c.ledger_first, *_ORDER_FOR_PAYMENT)
)
# SQLite's RETURNING may not name the tables of UPDATE ... FROM: the claim, then the order.
_CLAIM = (
    update(payment_jobs).where(_CLAIM_WHERE).values(_CLAIM_VALUES)
    .returning(payment_jobs.c.retries, payment_jobs.c.ledger_first)
)
_ORDER_OF_JOB = select(*_ORDER_FOR_PAYMENT).where(orders.c.id == bindparam("job_order_id"))
_MINE = and_(payment_jobs.c.order_id == bindparam("job_order_id"),
             payment_jobs.c.claim_token == bindparam("job_claim_token"))
_FINISH = (
    update(payment_jobs).where(_MINE)
    .values(state=bindparam("final_state"), lease_until=None, claim_token=None, updated_at=bindparam("finish_now"))
)
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


class SqlPaymentJobs(_OutboxTable):
    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, payment_jobs.c.order_id, reclaim_counts_retry=True)

    def add(self, order_id: str, *, due_at: datetime, now: datetime) -> None:
        self._conn.execute(_INSERT_PAYMENT_JOB, {"order_id": order_id, "state": "pending", "retries": 0,
                                                 "next_attempt_at": due_at, "created_at": now, "updated_at": now})

    def get(self, order_id: str) -> PaymentJobRow | None:
        row = self._conn.execute(select(payment_jobs).where(payment_jobs.c.order_id == order_id)).first()
        if row is None:
            return None
        return PaymentJobRow(row.order_id, row.state, int(row.retries), utc(row.next_attempt_at),
                             utc_or_none(row.lease_until), utc_or_none(row.published_at))

    def set_due(self, order_id: str, *, due_at: datetime, now: datetime) -> None:
        self._conn.execute(
            update(payment_jobs)
            .where(and_(payment_jobs.c.order_id == order_id, payment_jobs.c.state == "pending"))
            .values(next_attempt_at=due_at, published_at=None, updated_at=now)
        )

    def close(self, order_id: str, *, now: datetime) -> None:
        self._conn.execute(
            update(payment_jobs)
            .where(payment_jobs.c.order_id == order_id)
            .values(state="done", lease_until=None, claim_token=None, updated_at=now)
        )

    def claim(self, order_id: str, *, now: datetime, lease_until: datetime, token: str) -> ClaimedJob | None:
        """It returns the retry count and, on PostgreSQL in the same statement, the order's payment details."""
        params = {"job_order_id": order_id, "claim_now": now, "claim_lease_until": lease_until,
                  "claim_token_value": token}
        conn = self._conn
        if conn.dialect.name == "postgresql":
            row = conn.execute(_CLAIM_WITH_ORDER, params).first()
            if row is None:
                return None
            claimed, order = row, row
        else:
            job_row = conn.execute(_CLAIM, params).first()
            if job_row is None:
                return None
            claimed, order = job_row, conn.execute(_ORDER_OF_JOB, {"job_order_id": order_id}).one()
        return ClaimedJob(order_id, int(claimed.retries), token, order_status=order.status,
                          customer_id=int(order.customer_id), total=Decimal(str(order.total)),
                          currency=order.currency, ledger_first=bool(claimed.ledger_first))

    def hold_claim(self, job: ClaimedJob, *, now: datetime) -> bool:
        """The row stays locked until the transaction ends (PostgreSQL), so the relay cannot take the lease
        back between this check and the commit."""
        return self._conn.execute(
            update(payment_jobs).where(_MINE).values(updated_at=bindparam("held_now")),
            {"job_order_id": job.order_id, "job_claim_token": job.claim_token, "held_now": now},
        ).rowcount == 1

    def finish(self, job: ClaimedJob, *, state: str, now: datetime) -> bool:
        """running -> done | dead."""
        return self._conn.execute(
            _FINISH, {"job_order_id": job.order_id, "job_claim_token": job.claim_token, "final_state": state,
                      "finish_now": now},
        ).rowcount == 1

    def reschedule(self, job: ClaimedJob, *, due_at: datetime, retries: int, now: datetime,
                   ledger_first: bool = False) -> bool:
        """running -> pending, due at `due_at` (a retry sets `retries` one higher; a deferral keeps it)."""
        return self._conn.execute(
            update(payment_jobs)
            .where(and_(payment_jobs.c.order_id == job.order_id, payment_jobs.c.claim_token == job.claim_token))
            .values(state="pending", retries=retries, next_attempt_at=due_at, lease_until=None, claim_token=None,
                    published_at=None, ledger_first=ledger_first, updated_at=now)
        ).rowcount == 1

    def settle(self, job: ClaimedJob, settlement: Settlement) -> tuple[bool, int | None]:
        """The attempts recorded and counted on the order, the order moved by a conditional UPDATE (when
        someone else moved it, the attempts are still counted), the job done, and, if the order moved and a
        notification kind is given, its notification job queued. On PostgreSQL all of it is one statement."""
        to_status = settlement.to_status
        attempts = settlement.attempts
        params: dict[str, Any] = {
            "settle_order_id": job.order_id, "from_status": str(OrderStatus.PAYMENT_PENDING),
            "to_status": str(to_status), "to_payment_status": str(PAYMENT_STATUS_FOR[to_status]),
            "settle_payment_id": settlement.payment_id,
            "settle_failure_reason": str(settlement.failure_reason) if settlement.failure_reason else None,
            "new_attempts": len(attempts), "settle_now": settlement.now,
        }
        conn = self._conn
        kind = settlement.notification_kind
        claimed_until = settlement.notification_claimed_until
        if conn.dialect.name == "postgresql":
            for i, attempt in enumerate(attempts):
                params.update({f"a{i}_{k}": v for k, v in attempt.to_dict().items()})
                params[f"a{i}_started_at"] = attempt.started_at
            params.update({
                "job_claim_token": job.claim_token, "queue_kind": kind or "",
                "queue_state": "pending" if claimed_until is None else "running",
                "queue_lease_until": claimed_until,
            })
            row = conn.execute(_settle_statement(len(attempts), notify=kind is not None), params).one()
            return bool(row.moved), (int(row.notification_id) if row.notification_id is not None else None)
        if attempts:
            conn.execute(insert(payment_attempts), attempt_rows(job.order_id, attempts))
        moved = conn.execute(_SETTLE_ORDER, params).rowcount == 1
        if not moved and attempts:
            conn.execute(_COUNT_ATTEMPTS, params)
        self.finish(job, state="done", now=settlement.now)
        notification = None
        if moved and kind is not None:
            notification = SqlNotificationJobs(conn).add(job.order_id, kind, now=settlement.now,
                                                         claimed_until=claimed_until)
        return moved, notification

    def restart(self, order_id: str, *, now: datetime) -> bool:
        return self._conn.execute(
            update(payment_jobs)
            .where(payment_jobs.c.order_id == order_id)
            .values(state="pending", retries=0, next_attempt_at=now, lease_until=None, claim_token=None,
                    published_at=None, ledger_first=True, updated_at=now)
        ).rowcount == 1

    def count_open(self) -> int:
        return int(self._conn.execute(select(func.count()).select_from(payment_jobs)
                                      .where(payment_jobs.c.state.in_(("pending", "running")))).scalar_one())


_SETTLE_STATEMENTS: dict[tuple[int, bool], TextClause] = {}


def _settle_statement(attempts: int, *, notify: bool) -> TextClause:
    """PostgreSQL: the settle in one statement of data-modifying CTEs. `counted` touches the order only when
    `moved` did not, so no row is updated twice."""
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


# --- notification jobs ------------------------------------------------------------------------------------

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
_FINISH_NOTIFICATIONS = (
    update(notification_jobs)
    .where(and_(notification_jobs.c.id.in_(bindparam("job_ids", expanding=True)),
                notification_jobs.c.state == "running"))
    .values(state=bindparam("final_state"), attempts=bindparam("final_attempts"), lease_until=None,
            updated_at=bindparam("finish_now"))
)


class SqlNotificationJobs(_OutboxTable):
    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, notification_jobs.c.id, reclaim_counts_retry=False)

    def add(self, order_id: str, kind: str, *, now: datetime, claimed_until: datetime | None = None) -> int | None:
        """In one statement. `claimed_until`: the writer sends it itself, so the job starts claimed (running)
        under a lease until then; if the writer dies first, the lease runs out and the relay hands it out."""
        row = self._conn.execute(
            _QUEUE_NOTIFICATION,
            {"queue_order_id": order_id, "queue_kind": kind, "queue_now": now,
             "queue_state": "pending" if claimed_until is None else "running", "queue_lease_until": claimed_until},
        ).first()
        return int(row.id) if row is not None else None

    def claim(self, job_id: int, *, now: datetime, lease_until: datetime) -> ClaimedNotification | None:
        row = self._conn.execute(
            _CLAIM_NOTIFICATION, {"job_id": job_id, "claim_now": now, "claim_lease_until": lease_until}
        ).first()
        if row is None:
            return None
        return ClaimedNotification(job_id, row.order_id, row.kind, int(row.attempts))

    def finish(self, job_ids: Sequence[int], *, state: str, attempts: int, now: datetime) -> None:
        """running -> done | skipped | failed, for every job of `job_ids` (one statement)."""
        if job_ids:
            self._conn.execute(_FINISH_NOTIFICATIONS, {"job_ids": list(job_ids), "final_state": state,
                                                       "final_attempts": attempts, "finish_now": now})

    def retry(self, job_id: int, *, attempts: int, due_at: datetime, now: datetime) -> None:
        self._conn.execute(
            update(notification_jobs)
            .where(and_(notification_jobs.c.id == job_id, notification_jobs.c.state == "running"))
            .values(state="pending", attempts=attempts, next_attempt_at=due_at, lease_until=None,
                    published_at=None, updated_at=now)
        )

    def state_of(self, order_id: str, kind: str) -> str | None:
        return self._conn.execute(
            select(notification_jobs.c.state).where(
                and_(notification_jobs.c.order_id == order_id, notification_jobs.c.kind == kind)
            )
        ).scalar()


class SqlOutbox:
    def __init__(self, conn: Connection) -> None:
        self.payments = SqlPaymentJobs(conn)
        self.notifications = SqlNotificationJobs(conn)
        # The relay reads and marks each outbox by its key: payment jobs by order id, notifications by id.
        self.payment_relay = self.payments
        self.notification_relay = self.notifications
