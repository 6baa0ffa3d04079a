"""Outbox, notification and dead-letter SQL. Every function takes an open Connection: the caller owns the
transaction. Every change of a claimed job is conditional on its claim token, so a worker whose lease was
taken over can no longer touch the job it lost."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from app.adapters.repository import utc
from app.adapters.tables import dead_letters, notification_jobs, orders, payment_attempts, payment_jobs

# --- payment jobs: what the relay publishes ---------------------------------------------------------


def due_payment_jobs(conn: Connection, *, now: datetime, republish_before: datetime, limit: int) -> list[str]:
    """Order ids of pending, due jobs never published or published so long ago the message must be lost."""
    rows = conn.execute(
        select(payment_jobs.c.order_id)
        .where(
            and_(
                payment_jobs.c.state == "pending",
                payment_jobs.c.next_attempt_at <= now,
                or_(payment_jobs.c.published_at.is_(None), payment_jobs.c.published_at < republish_before),
            )
        )
        .order_by(payment_jobs.c.next_attempt_at)
        .limit(limit)
    )
    return [r.order_id for r in rows]


def mark_payment_published(
    conn: Connection, order_id: str, *, now: datetime, republish_before: datetime
) -> bool:
    """True for the one relay that gets to publish this job now; another relay running at once gets False."""
    result = conn.execute(
        update(payment_jobs)
        .where(
            and_(
                payment_jobs.c.order_id == order_id,
                payment_jobs.c.state == "pending",
                # Still due: a worker may have deferred or rescheduled it since the relay read it.
                payment_jobs.c.next_attempt_at <= now,
                or_(payment_jobs.c.published_at.is_(None), payment_jobs.c.published_at < republish_before),
            )
        )
        .values(published_at=now)
    )
    return result.rowcount == 1


def unmark_payment_published(conn: Connection, order_id: str) -> None:
    """The publish failed: the next relay pass tries again instead of waiting for the republish delay."""
    conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == order_id, payment_jobs.c.state == "pending"))
        .values(published_at=None)
    )


def reclaim_expired_payment_leases(conn: Connection, *, now: datetime) -> int:
    """A running job whose lease ran out lost its worker (killed, frozen): it becomes pending and due now.
    Its retry count is kept; the derived payment key makes running it again safe."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.state == "running", payment_jobs.c.lease_until < now))
        .values(state="pending", next_attempt_at=now, lease_until=None, claim_token=None, published_at=None,
                updated_at=now)
    ).rowcount


# --- payment jobs: what a worker does with one ------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    order_id: str
    retries: int
    claim_token: str


def claim_payment_job(
    conn: Connection, order_id: str, *, now: datetime, lease_until: datetime, token: str
) -> ClaimedJob | None:
    """pending & due -> running, in one conditional UPDATE: of two messages for one job exactly one runs it."""
    result = conn.execute(
        update(payment_jobs)
        .where(
            and_(
                payment_jobs.c.order_id == order_id,
                payment_jobs.c.state == "pending",
                payment_jobs.c.next_attempt_at <= now,
            )
        )
        .values(state="running", lease_until=lease_until, claim_token=token, updated_at=now)
    )
    if result.rowcount != 1:
        return None
    retries = conn.execute(select(payment_jobs.c.retries).where(payment_jobs.c.order_id == order_id)).scalar_one()
    return ClaimedJob(order_id, int(retries), token)


def reschedule_payment_job(
    conn: Connection, job: ClaimedJob, *, due_at: datetime, retries: int, now: datetime
) -> bool:
    """running -> pending, due at `due_at` (a retry sets `retries` one higher; a deferral keeps it)."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == job.order_id, payment_jobs.c.claim_token == job.claim_token))
        .values(state="pending", retries=retries, next_attempt_at=due_at, lease_until=None, claim_token=None,
                published_at=None, updated_at=now)
    ).rowcount == 1


def finish_payment_job(conn: Connection, job: ClaimedJob, *, state: str, now: datetime) -> bool:
    """running -> done | dead."""
    return conn.execute(
        update(payment_jobs)
        .where(and_(payment_jobs.c.order_id == job.order_id, payment_jobs.c.claim_token == job.claim_token))
        .values(state=state, lease_until=None, claim_token=None, updated_at=now)
    ).rowcount == 1


def restart_payment_job(conn: Connection, order_id: str, *, now: datetime) -> bool:
    """A replayed job: pending, a fresh retry count, due now."""
    return conn.execute(
        update(payment_jobs)
        .where(payment_jobs.c.order_id == order_id)
        .values(state="pending", retries=0, next_attempt_at=now, lease_until=None, claim_token=None,
                published_at=None, updated_at=now)
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
    rows = conn.execute(
        select(notification_jobs.c.id)
        .where(
            and_(
                notification_jobs.c.state == "pending",
                notification_jobs.c.next_attempt_at <= now,
                or_(notification_jobs.c.published_at.is_(None),
                    notification_jobs.c.published_at < republish_before),
            )
        )
        .order_by(notification_jobs.c.next_attempt_at)
        .limit(limit)
    )
    return [int(r.id) for r in rows]


def mark_notification_published(
    conn: Connection, job_id: int, *, now: datetime, republish_before: datetime
) -> bool:
    return conn.execute(
        update(notification_jobs)
        .where(
            and_(
                notification_jobs.c.id == job_id,
                notification_jobs.c.state == "pending",
                # Still due: a retry may have been scheduled since the relay read it.
                notification_jobs.c.next_attempt_at <= now,
                or_(notification_jobs.c.published_at.is_(None),
                    notification_jobs.c.published_at < republish_before),
            )
        )
        .values(published_at=now)
    ).rowcount == 1


def unmark_notification_published(conn: Connection, job_id: int) -> None:
    conn.execute(
        update(notification_jobs)
        .where(and_(notification_jobs.c.id == job_id, notification_jobs.c.state == "pending"))
        .values(published_at=None)
    )


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


def claim_notification(
    conn: Connection, job_id: int, *, now: datetime, lease_until: datetime
) -> ClaimedNotification | None:
    result = conn.execute(
        update(notification_jobs)
        .where(
            and_(
                notification_jobs.c.id == job_id,
                notification_jobs.c.state == "pending",
                notification_jobs.c.next_attempt_at <= now,
            )
        )
        .values(state="running", lease_until=lease_until, updated_at=now)
    )
    if result.rowcount != 1:
        return None
    row = conn.execute(select(notification_jobs).where(notification_jobs.c.id == job_id)).one()
    return ClaimedNotification(int(row.id), row.order_id, row.kind, int(row.attempts))


def finish_notification(conn: Connection, job_id: int, *, state: str, attempts: int, now: datetime) -> None:
    """running -> done | skipped | failed."""
    conn.execute(
        update(notification_jobs)
        .where(and_(notification_jobs.c.id == job_id, notification_jobs.c.state == "running"))
        .values(state=state, attempts=attempts, lease_until=None, updated_at=now)
    )


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
