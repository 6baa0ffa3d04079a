"""The outbox relay: hands due jobs from the database to the broker, and takes back jobs whose worker died.

It runs as a thread in the Celery worker's main process. Several relays at once (several workers) are
harmless: marking a job published is a conditional UPDATE, so at most one relay publishes it per round, and
a job published twice is still run once (the worker's claim).

A job's first message is usually the API's hint, which leaves no mark in the database, so a due job the relay
finds never published may well be waiting in the queue already. While a queue still holds messages, the relay
therefore publishes nothing to it: the workers are busy with what is there, and a second message per job
would double their work just when a backlog drains. Once the queue is empty, any job still pending and due
has no message left and is published (or republished) as before. Nor does it hand out payment jobs while the
payment circuit is open or isolated: a worker could only defer them again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app.adapters import jobs_repository as jobs
from app.adapters.db import read, write
from app.logs import name_thread
from workers.celery_app import PROCESS_PAYMENT, QUEUES, SEND_NOTIFICATION

log = logging.getLogger("orderflow.relay")

# The prefork pool forks replacement children from the process this relay runs in. SQLite keeps its file
# locks in per-process bookkeeping that a child inherits: a fork taken while this thread is inside a
# transaction leaves the child believing another connection of its own holds the lock, and every write it
# tries is "database is locked" for good. So forks wait until no transaction of this process is open.
FORK_GUARD = threading.Lock()
os.register_at_fork(before=FORK_GUARD.acquire, after_in_parent=FORK_GUARD.release,
                    after_in_child=FORK_GUARD.release)


@contextmanager
def no_fork() -> Iterator[None]:
    with FORK_GUARD:
        yield


# A job published this long ago and still pending lost its message (broker restarted, queue purged).
DEFAULT_REPUBLISH_AFTER = 30.0
BATCH = 200


@dataclass(frozen=True)
class RelayPass:
    reclaimed: int = 0
    payments: int = 0
    notifications: int = 0
    failed: bool = False


@dataclass
class OutboxRelay:
    engine: Engine
    send_payment: Callable[[str], None]
    send_notification: Callable[[int], None]
    republish_after: float = DEFAULT_REPUBLISH_AFTER
    batch: int = BATCH
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Messages waiting in a broker queue, None when unknown (then the relay publishes as if it were empty).
    waiting: Callable[[str], int | None] | None = None
    # True while the payment circuit is open or isolated: no payment job is handed out then, since its worker
    # could only defer it again; the jobs stay due, and the first pass after the break ends or the circuit
    # is reset hands them out.
    payments_held: Callable[[], bool] | None = None

    def _payments_held(self) -> bool:
        if self.payments_held is None:
            return False
        try:
            with no_fork():
                return self.payments_held()
        except Exception:  # the circuit's state unknown: hand jobs out, their calls' admission decides
            return False

    def _queue_busy(self, queue_name: str) -> bool:
        if self.waiting is None:
            return False
        count = self.waiting(queue_name)
        return count is not None and count > 0

    def run_once(self) -> RelayPass:
        now = self.now()
        republish_before = now - timedelta(seconds=self.republish_after)
        with no_fork(), write(self.engine) as conn:
            reclaimed = jobs.reclaim_expired_payment_leases(conn, now=now)
            reclaimed += jobs.reclaim_expired_notification_leases(conn, now=now)
        if reclaimed:
            log.warning("reclaimed jobs whose lease expired", extra={"event": "lease_expired", "jobs": reclaimed})
        payments_busy = self._payments_held() or self._queue_busy(QUEUES[PROCESS_PAYMENT])
        notifications_busy = self._queue_busy(QUEUES[SEND_NOTIFICATION])
        payment_ids: list[str] = []
        notification_ids: list[int] = []
        if not (payments_busy and notifications_busy):
            with no_fork(), read(self.engine) as conn:
                if not payments_busy:
                    payment_ids = jobs.due_payment_jobs(conn, now=now, republish_before=republish_before,
                                                        limit=self.batch)
                if not notifications_busy:
                    notification_ids = jobs.due_notification_jobs(conn, now=now, republish_before=republish_before,
                                                                  limit=self.batch)
        payments = notifications = 0
        try:
            for order_id in payment_ids:
                if self._publish(order_id, now, republish_before, payment=True):
                    payments += 1
            for job_id in notification_ids:
                if self._publish(job_id, now, republish_before, payment=False):
                    notifications += 1
        except Exception as exc:
            # The broker is down: stop this pass; the unpublished jobs are due again on the next one.
            log.warning("relay could not publish", extra={"event": "relay_publish_failed",
                                                          "error": f"{type(exc).__name__}: {exc}"})
            return RelayPass(reclaimed, payments, notifications, failed=True)
        return RelayPass(reclaimed, payments, notifications)

    def _publish(self, job: str | int, now: datetime, republish_before: datetime, *, payment: bool) -> bool:
        # Marked first and committed, then sent: the mark is what stops a second relay sending it too.
        with no_fork(), write(self.engine) as conn:
            if payment:
                marked = jobs.mark_payment_published(conn, str(job), now=now, republish_before=republish_before)
            else:
                marked = jobs.mark_notification_published(conn, int(job), now=now,
                                                          republish_before=republish_before)
        if not marked:
            return False
        try:
            if payment:
                self.send_payment(str(job))
            else:
                self.send_notification(int(job))
        except Exception:
            with no_fork(), write(self.engine) as conn:
                if payment:
                    jobs.unmark_payment_published(conn, str(job))
                else:
                    jobs.unmark_notification_published(conn, int(job))
            raise
        return True


class RelayThread:
    """Runs `relay.run_once` every `interval` seconds until stopped; an error in one pass never ends it."""

    def __init__(self, relay: OutboxRelay, *, interval: float) -> None:
        self._relay = relay
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orderflow-outbox-relay", daemon=True)
        # Its lines (and those of what it calls: the publisher, the circuit) say `relay`, not `worker`.
        name_thread(self._thread.name, "relay")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._relay.run_once()
            except Exception as exc:  # database down: try again next interval
                log.warning("relay pass failed", extra={"event": "relay_failed",
                                                        "error": f"{type(exc).__name__}: {exc}"})
            self._stop.wait(self._interval)


__all__ = ["DEFAULT_REPUBLISH_AFTER", "FORK_GUARD", "no_fork", "OutboxRelay", "RelayPass", "RelayThread"]
