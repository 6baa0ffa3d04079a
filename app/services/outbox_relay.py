"""The outbox relay: hands due jobs from the database to the broker, and takes back jobs whose worker died.

It runs as a thread in the Celery worker's main process (`workers.relay`). Several relays at once (several
workers) are harmless: marking a job published is a conditional UPDATE, so at most one relay publishes it per
round, and a job published twice is still run once (the worker's claim).

A job's first message is usually the API's hint, which leaves no mark in the database, so a due job the relay
finds never published may well be waiting in the queue already. While a queue still holds messages, the relay
therefore publishes nothing to it: the workers are busy with what is there, and a second message per job
would double their work just when a backlog drains. Once the queue is empty, any job still pending and due
has no message left and is published (or republished) as before. Nor does it hand out payment jobs while the
payment circuit is open or isolated: a worker could only defer them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.services.unit_of_work import UnitOfWorkFactory

log = logging.getLogger("orderflow.relay")

# A job published this long ago and still pending lost its message (broker restarted, queue purged).
DEFAULT_REPUBLISH_AFTER = 30.0
BATCH = 200
# Idempotency keys kept past their 24 h are forgotten this often, this many at a time: the table would otherwise
# grow with every order (a key is only ever read again by a repeat of the same request).
PURGE_EVERY = 60.0
PURGE_BATCH = 1000


@dataclass(frozen=True)
class RelayPass:
    reclaimed: int = 0
    payments: int = 0
    notifications: int = 0
    failed: bool = False
    purged: int = 0


@dataclass
class OutboxRelay:
    uow: UnitOfWorkFactory
    send_payment: Callable[[str], None]
    send_notification: Callable[[int], None]
    payment_queue: str = "payments"
    notification_queue: str = "notifications"
    republish_after: float = DEFAULT_REPUBLISH_AFTER
    batch: int = BATCH
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Messages waiting in a broker queue, None when unknown (then the relay publishes as if it were empty).
    waiting: Callable[[str], int | None] | None = None
    # True while the payment circuit is open or isolated: no payment job is handed out then, since its worker
    # could only defer it again; the jobs stay due, and the first pass after the break ends or the circuit
    # is reset hands them out.
    payments_held: Callable[[], bool] | None = None
    # Wraps every database step of a pass (the worker keeps forks out of them: see `workers.relay`).
    guard: Callable[[], AbstractContextManager[object]] = nullcontext
    purge_every: float = PURGE_EVERY
    purge_batch: int = PURGE_BATCH
    monotonic: Callable[[], float] = time.monotonic
    _purged_at: float = field(default=float("-inf"), init=False)

    def _payments_held(self) -> bool:
        if self.payments_held is None:
            return False
        try:
            with self.guard():
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
        with self.guard(), self.uow() as uow:
            reclaimed = uow.outbox.payments.reclaim_expired(now=now)
            reclaimed += uow.outbox.notifications.reclaim_expired(now=now)
            uow.commit()
        if reclaimed:
            log.warning("reclaimed jobs whose lease expired", extra={"event": "lease_expired", "jobs": reclaimed})
        purged = self._purge(now)
        payments_busy = self._payments_held() or self._queue_busy(self.payment_queue)
        notifications_busy = self._queue_busy(self.notification_queue)
        payment_ids: list[str] = []
        notification_ids: list[int] = []
        if not (payments_busy and notifications_busy):
            with self.guard(), self.uow(read_only=True) as uow:
                if not payments_busy:
                    payment_ids = [str(order_id) for order_id in uow.outbox.payment_relay.due(
                        now=now, republish_before=republish_before, limit=self.batch)]
                if not notifications_busy:
                    notification_ids = [int(job_id) for job_id in uow.outbox.notification_relay.due(
                        now=now, republish_before=republish_before, limit=self.batch)]
        sent = {True: 0, False: 0}
        try:
            for payment, jobs in ((True, payment_ids), (False, notification_ids)):
                self._publish_all(jobs, now, republish_before, payment=payment, sent=sent)
        except Exception as exc:
            # The broker is down: stop this pass; the unpublished jobs are due again on the next one.
            log.warning("relay could not publish", extra={"event": "relay_publish_failed",
                                                          "error": f"{type(exc).__name__}: {exc}"})
            return RelayPass(reclaimed, sent[True], sent[False], failed=True, purged=purged)
        return RelayPass(reclaimed, sent[True], sent[False], purged=purged)

    def _purge(self, now: datetime) -> int:
        """One bounded batch of expired idempotency keys, at most every `purge_every` seconds."""
        if self.monotonic() - self._purged_at < self.purge_every:
            return 0
        self._purged_at = self.monotonic()
        with self.guard(), self.uow() as uow:
            purged = uow.idempotency.purge_expired(now=now, limit=self.purge_batch)
            uow.commit()
        if purged:
            log.info("forgot expired idempotency keys", extra={"event": "idempotency_keys_purged", "keys": purged})
        return purged

    def _publish(self, job: str | int, now: datetime, republish_before: datetime, *, payment: bool) -> bool:
        sent = {payment: 0}
        self._publish_all([job], now, republish_before, payment=payment, sent=sent)
        return sent[payment] == 1

    def _publish_all(self, jobs: Sequence[str | int], now: datetime, republish_before: datetime, *,
                     payment: bool, sent: dict[bool, int]) -> None:
        """Marks the jobs published, in one transaction, then sends those it marked; counts them in `sent`.

        Marked first and committed, then sent: the mark is what stops a second relay sending them too. One
        transaction for a pass's jobs, not one each: on SQLite every write transaction queues for the single
        write lock that the API's orders wait for. A send that fails unmarks what is left unsent."""
        if not jobs:
            return
        with self.guard(), self.uow() as uow:
            outbox = uow.outbox.payment_relay if payment else uow.outbox.notification_relay
            marked = [job for job in jobs if outbox.mark_published(job, now=now, republish_before=republish_before)]
            uow.commit()
        for index, job in enumerate(marked):
            try:
                if payment:
                    self.send_payment(str(job))
                else:
                    self.send_notification(int(job))
            except Exception:
                with self.guard(), self.uow() as uow:
                    relay = uow.outbox.payment_relay if payment else uow.outbox.notification_relay
                    for left in marked[index:]:
                        relay.unmark_published(left)
                    uow.commit()
                raise
            sent[payment] += 1


__all__ = ["BATCH", "DEFAULT_REPUBLISH_AFTER", "OutboxRelay", "RelayPass"]
