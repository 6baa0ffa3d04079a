"""Telling the customer their order is confirmed: at least once, best effort, never touching the order.

The job row is written with the confirmation (either path); the relay hands due rows to the workers. A failed
send is tried a few more times with full-jitter backoff, then given up: the order stays Confirmed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app.adapters import jobs_repository as jobs
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
    with jobs.single_statement(runner.engine) as conn:
        job = jobs.claim_notification(conn, job_id, now=now, lease_until=lease_until)
    if job is None:
        return "not_due"
    return deliver_notification(job, runner=runner)


def deliver_notification(job: jobs.ClaimedNotification, *, runner: NotificationRunner) -> str:
    """Send a claimed notification job and record the outcome (`sent`, `skipped`, `retry` or `failed`)."""
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
    with jobs.single_statement(runner.engine) as conn:
        jobs.retry_notification(conn, job.id, attempts=attempts, due_at=now + timedelta(seconds=delay), now=now)
    log.info("notification retry", extra={"event": "notification", "order_id": job.order_id, "kind": job.kind,
                                          "outcome": "retry", "delay": round(delay, 3)})
    return "retry"


def _finish(runner: NotificationRunner, job: jobs.ClaimedNotification, state: str, attempts: int) -> str:
    with jobs.single_statement(runner.engine) as conn:
        jobs.finish_notification(conn, job.id, state=state, attempts=attempts, now=runner.now())
    outcome = "sent" if state == "done" else state
    # A sent notification is routine (one per confirmed order; the notification service keeps the record):
    # DEBUG. A skipped or failed one is a decision worth a line.
    level = logging.WARNING if state == "failed" else logging.DEBUG if state == "done" else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "notification %s", outcome, extra={"event": "notification", "order_id": job.order_id,
                                                          "kind": job.kind, "outcome": outcome})
    return outcome


# The inline send waits at most this long: it holds up the payment job that confirmed the order.
INLINE_SEND_TIMEOUT = 1.0
# After an inline send that did not go out, confirmations go through the broker for this long.
INLINE_PAUSE = 30.0


@dataclass
class InlineConfirmations:
    """Sends an order's confirmation from the worker that just confirmed it, sparing the job a trip through
    the relay, the broker and a second task. The job is written claimed (running, under a lease) in the
    confirming transaction, so a worker that dies before sending leaves a lease that runs out, and the relay
    hands the job out as usual. The send is the ordinary run of a claimed job, with a shorter timeout: one
    that fails or times out is retried the ordinary way, and for `pause` seconds later confirmations go
    through the broker, so a slow notification service never slows down a payment backlog."""

    runner: NotificationRunner
    send_timeout: float = INLINE_SEND_TIMEOUT
    pause: float = INLINE_PAUSE
    _paused_until: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self._inline = replace(self.runner, send_timeout=min(self.send_timeout, self.runner.send_timeout))

    def claim_until(self, now: datetime) -> datetime | None:
        """The lease of a job written claimed now, or None to leave the job to the relay (paused)."""
        if self.runner.monotonic() < self._paused_until:
            return None
        return now + timedelta(seconds=self._inline.send_timeout + self._inline.lease_margin)

    def send(self, job_id: int, order_id: str, kind: str) -> str:
        outcome = deliver_notification(jobs.ClaimedNotification(job_id, order_id, kind, 0), runner=self._inline)
        if outcome not in ("sent", "skipped"):
            self._paused_until = self.runner.monotonic() + self.pause
        return outcome


__all__ = ["NOTIFICATIONS_FLAG", "InlineConfirmations", "NotificationRunner", "deliver_notification",
           "send_notification_job"]
