"""The order_confirmed notification: sent at least once, best effort, obeying the Notifications flag."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select

from app.adapters import jobs_repository as jobs
from app.adapters import repository as repo
from app.adapters.db import read, write
from app.adapters.tables import notification_jobs
from app.domain import OrderStatus
from app.services.notifications import NotificationRunner, send_notification_job
from tests.workers.fakes import Clock, order, place_order


class Sender:
    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers) or [True]
        self.sent: list[tuple[str, str]] = []

    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        answer = self.answers[min(len(self.sent), len(self.answers) - 1)]
        self.sent.append((order_id, kind))
        return answer


class Flags:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def is_enabled(self, name: str) -> bool:
        assert name == "Notifications"
        return self.enabled


def confirmed_order_with_notification(engine: Engine, clock: Clock) -> tuple[str, int]:
    order_id = place_order(engine, now=clock(), due_at=clock() + timedelta(days=1))
    with write(engine) as conn:
        repo.move_order(conn, order_id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.CONFIRMED,
                        now=clock(), payment_id="pay_x")
        repo.queue_notification(conn, order_id, "order_confirmed", now=clock())
        job_id = conn.execute(
            select(notification_jobs.c.id).where(notification_jobs.c.order_id == order_id)
        ).scalar_one()
    return order_id, int(job_id)


def state(engine: Engine, order_id: str) -> str | None:
    with read(engine) as conn:
        return jobs.notification_state(conn, order_id, "order_confirmed")


def test_notification_is_sent_once_with_the_order_and_kind(engine: Engine) -> None:
    clock, sender = Clock(), Sender(True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(engine=engine, sender=sender, flags=Flags(True), now=clock)
    assert send_notification_job(job_id, runner=runner) == "sent"
    assert send_notification_job(job_id, runner=runner) == "not_due"
    assert sender.sent == [(order_id, "order_confirmed")]
    assert state(engine, order_id) == "done"


def test_flag_off_skips_the_notification(engine: Engine) -> None:
    clock, sender = Clock(), Sender(True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(engine=engine, sender=sender, flags=Flags(False), now=clock)
    assert send_notification_job(job_id, runner=runner) == "skipped"
    assert sender.sent == []
    assert state(engine, order_id) == "skipped"


def test_failed_sends_are_retried_with_backoff_then_given_up_without_touching_the_order(engine: Engine) -> None:
    clock, sender = Clock(), Sender(False)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(engine=engine, sender=sender, flags=Flags(True), now=clock, max_attempts=3,
                                rng=lambda: 1.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    assert send_notification_job(job_id, runner=runner) == "not_due"  # backing off
    clock.advance(1.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    clock.advance(2.0)
    assert send_notification_job(job_id, runner=runner) == "failed"
    assert len(sender.sent) == 3
    assert state(engine, order_id) == "failed"
    assert order(engine, order_id).status is OrderStatus.CONFIRMED


def test_a_send_that_recovers_on_retry_is_done(engine: Engine) -> None:
    clock, sender = Clock(), Sender(False, True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(engine=engine, sender=sender, flags=Flags(True), now=clock, rng=lambda: 0.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    assert send_notification_job(job_id, runner=runner) == "sent"
    assert state(engine, order_id) == "done"
