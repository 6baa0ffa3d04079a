"""Telling the customer their order is confirmed: at least once, best effort, never touching the order.

The job row is written with the confirmation (either path); the relay hands due rows to the workers. A failed
send is tried a few more times with full-jitter backoff, then given up: the order stays Confirmed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app.adapters import jobs_repository as jobs
from app.adapters.db import write
from app.resilience.backoff import full_jitter_delay
from app.services.ports import FlagReader, NotificationSender

log = logging.getLogger("orderflow.notifications")

NOTIFICATIONS_FLAG = "Notifications"


@dataclass
class NotificationRunner:
    engine: Engine
    sender: NotificationSender
    flags: FlagReader
    send_timeout: float = 3.0
    max_attempts: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    lease_margin: float = 15.0
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    rng: Callable[[], float] = random.random


def send_notification_job(job_id: int, *, runner: NotificationRunner) -> str:
    """Returns `sent`, `skipped` (flag off), `retry`, `failed` (given up) or `not_due`."""
    now = runner.now()
    lease_until = now + timedelta(seconds=runner.send_timeout + runner.lease_margin)
    with write(runner.engine) as conn:
        job = jobs.claim_notification(conn, job_id, now=now, lease_until=lease_until)
    if job is None:
        return "not_due"
    if not runner.flags.is_enabled(NOTIFICATIONS_FLAG):
        return _finish(runner, job, "skipped", job.attempts)

    try:
        sent = runner.sender.send(order_id=job.order_id, kind=job.kind,
                                  deadline=runner.monotonic() + runner.send_timeout)
    except Exception:  # best effort: a broken sender must not strand the job in `running`
        log.exception("notification sender raised", extra={"event": "notification_error", "order_id": job.order_id})
        sent = False
    attempts = job.attempts + 1
    if sent:
        return _finish(runner, job, "done", attempts)
    if attempts >= runner.max_attempts:
        return _finish(runner, job, "failed", attempts)
    delay = full_jitter_delay(attempts - 1, runner.backoff_base, runner.backoff_max, runner.rng)
    now = runner.now()
    with write(runner.engine) as conn:
        jobs.retry_notification(conn, job.id, attempts=attempts, due_at=now + timedelta(seconds=delay), now=now)
    log.info("notification retry", extra={"event": "notification", "order_id": job.order_id, "kind": job.kind,
                                          "outcome": "retry", "delay": round(delay, 3)})
    return "retry"


def _finish(runner: NotificationRunner, job: jobs.ClaimedNotification, state: str, attempts: int) -> str:
    with write(runner.engine) as conn:
        jobs.finish_notification(conn, job.id, state=state, attempts=attempts, now=runner.now())
    outcome = "sent" if state == "done" else state
    level = logging.WARNING if state == "failed" else logging.INFO
    log.log(level, "notification %s", outcome, extra={"event": "notification", "order_id": job.order_id,
                                                      "kind": job.kind, "outcome": outcome})
    return outcome


__all__ = ["NOTIFICATIONS_FLAG", "NotificationRunner", "send_notification_job"]
