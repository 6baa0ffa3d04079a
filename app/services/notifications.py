"""Telling the customer their order is confirmed: at least once, best effort, never touching the order.

The job row is written with the confirmation (either path); the relay hands due rows to the workers. A failed
send is tried a few more times with full-jitter backoff, then given up: the order stays Confirmed.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from app.resilience import full_jitter_delay
from app.services.load import ProcessLoad
from app.services.ports import FlagReader, NotificationSender
from app.services.unit_of_work import ClaimedNotification, UnitOfWorkFactory

log = logging.getLogger("orderflow.notifications")

NOTIFICATIONS_FLAG = "Notifications"


@dataclass
class NotificationRunner:
    uow: UnitOfWorkFactory
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
    with runner.uow(single_statement=True) as uow:
        job = uow.outbox.notifications.claim(job_id, now=now, lease_until=lease_until)
        uow.commit()
    if job is None:
        return "not_due"
    return deliver_notification(job, runner=runner)


def deliver_notification(job: ClaimedNotification, *, runner: NotificationRunner) -> str:
    """Send a claimed notification job and record the outcome (`sent`, `skipped`, `retry` or `failed`)."""
    if not runner.flags.is_enabled(NOTIFICATIONS_FLAG):
        return _finish(runner, [job], "skipped", job.attempts)
    if _try_send(runner, job):
        return _finish(runner, [job], "done", job.attempts + 1)
    return _failed(runner, job)


def _try_send(runner: NotificationRunner, job: ClaimedNotification) -> bool:
    try:
        return runner.sender.send(order_id=job.order_id, kind=job.kind,
                                  deadline=runner.monotonic() + runner.send_timeout)
    except Exception:  # best effort: a broken sender must not strand the job in `running`
        log.exception("notification sender raised", extra={"event": "notification_error", "order_id": job.order_id})
        return False


def _failed(runner: NotificationRunner, job: ClaimedNotification) -> str:
    """A send that did not go out: retried later with backoff, or given up after `max_attempts`."""
    attempts = job.attempts + 1
    if attempts >= runner.max_attempts:
        return _finish(runner, [job], "failed", attempts)
    delay = full_jitter_delay(attempts - 1, runner.backoff_base, runner.backoff_max, runner.rng)
    now = runner.now()
    with runner.uow(single_statement=True) as uow:
        uow.outbox.notifications.retry(job.id, attempts=attempts, due_at=now + timedelta(seconds=delay), now=now)
        uow.commit()
    log.info("notification retry", extra={"event": "notification", "order_id": job.order_id, "kind": job.kind,
                                          "outcome": "retry", "delay": round(delay, 3)})
    return "retry"


def _finish(runner: NotificationRunner, finished: list[ClaimedNotification], state: str, attempts: int) -> str:
    """Every job of `finished` (one statement) -> `state`, with `attempts` runs."""
    if finished:
        with runner.uow(single_statement=True) as uow:
            uow.outbox.notifications.finish([job.id for job in finished], state=state, attempts=attempts,
                                            now=runner.now())
            uow.commit()
    outcome = "sent" if state == "done" else state
    # A sent notification is routine (one per confirmed order; the notification service keeps the record):
    # DEBUG. A skipped or failed one is a decision worth a line.
    level = logging.WARNING if state == "failed" else logging.DEBUG if state == "done" else logging.INFO
    if log.isEnabledFor(level):
        for job in finished:
            log.log(level, "notification %s", outcome, extra={"event": "notification", "order_id": job.order_id,
                                                              "kind": job.kind, "outcome": outcome})
    return outcome


# A confirmation's send is cut after this long, so one slow send holds up the others queued behind it little.
CONFIRMATION_SEND_TIMEOUT = 1.0
# After a confirmation that did not go out, confirmations go through the broker for this long.
CONFIRMATION_PAUSE = 30.0
# Confirmations waiting for a process's sender thread; past this, new ones go through the broker.
CONFIRMATION_QUEUE = 256
# Sent confirmations marked done by one statement, and how long the sender thread waits to gather them: a
# statement per confirmation would cost a draining backlog more than the sends.
CONFIRMATION_BATCH = 64
CONFIRMATION_LINGER = 0.05
# While payment jobs keep this process busy (a backlog draining), confirmations wait for a quiet moment, for
# at most this long: the cores are the payments' first, and a customer hears within a minute or so.
CONFIRMATION_HOLD = 60.0
# Confirmations a process may hold that way; past this, new ones go through the broker.
CONFIRMATION_HELD = 10000
# How often a holding sender thread looks at the process's load again.
CONFIRMATION_HOLD_CHECK = 0.1


@dataclass(frozen=True)
class _Queued:
    job: ClaimedNotification
    send_by: float  # monotonic; later, its lease may have run out and the relay may have handed the job out
    hold_until: float  # monotonic; until then it waits while payment jobs keep the process busy


@dataclass
class BackgroundConfirmations:
    """Sends the `order_confirmed` notification of an order this worker process has just confirmed, from a
    sender thread of the process: the payment job that confirmed it moves on at once, so a backlog drains at
    the pace of its payments, and the thread marks what it sent done in batches. This spares each
    confirmation a trip through the relay, the broker and a task of its own.

    The job is written claimed (running, under a lease) in the confirming transaction, so a confirmation the
    thread does not send while its lease lasts (the process died or stopped first) is handed out by the relay
    once the lease runs out. A send that fails or times out is retried the ordinary way, and for `pause`
    seconds later confirmations go through the broker, as they do while `max_queued` wait for the thread: a
    slow notification service never slows down a payment backlog.

    Payments first: while payment jobs keep the process busy (`load` saturated, a backlog draining), a
    confirmation written then is held, under a lease `hold` seconds longer, and goes out at the first quiet
    moment or once it has waited `hold` seconds, whichever comes first. Up to `max_held` are held so; past
    that, new ones go through the broker. An exiting process (`flush`) sends what it holds at once."""

    runner: NotificationRunner
    send_timeout: float = CONFIRMATION_SEND_TIMEOUT
    pause: float = CONFIRMATION_PAUSE
    max_queued: int = CONFIRMATION_QUEUE
    batch: int = CONFIRMATION_BATCH
    linger: float = CONFIRMATION_LINGER
    load: ProcessLoad | None = None
    hold: float = CONFIRMATION_HOLD
    max_held: int = CONFIRMATION_HELD
    _paused_until: float = field(default=float("-inf"), init=False)
    _queue: queue.Queue[_Queued] | None = field(default=None, init=False)
    _pid: int | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _flushing: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self._sending = replace(self.runner, send_timeout=min(self.send_timeout, self.runner.send_timeout))

    def _holding(self) -> bool:
        return self.load is not None and self.hold > 0 and self.load.saturated()

    def claim_until(self, now: datetime) -> datetime | None:
        """The lease of a job written claimed now, or None to leave the job to the relay (paused or backed up).
        Written while payment jobs keep the process busy, it is held: its lease is `hold` seconds longer."""
        if self.runner.monotonic() < self._paused_until:
            return None
        holding = self._holding()
        waiting = self._queue
        if waiting is not None and self._pid == os.getpid() and (
            waiting.qsize() >= (self.max_held if holding else self.max_queued)
        ):
            return None
        lease = self._sending.send_timeout + self._sending.lease_margin + (self.hold if holding else 0.0)
        return now + timedelta(seconds=lease)

    def send(self, job_id: int, order_id: str, kind: str, lease_until: datetime) -> str:
        """Queue a job written claimed until `lease_until` (what `claim_until` answered) for the sender thread;
        returns at once."""
        job = ClaimedNotification(job_id, order_id, kind, 0)
        queued = self.runner.monotonic()
        lease = (lease_until - self.runner.now()).total_seconds()
        send_by = queued + lease - self._sending.send_timeout
        self._sender().put(_Queued(job, send_by, send_by - self._sending.lease_margin))
        return "queued"

    def flush(self, timeout: float) -> bool:
        """Wait until the sender thread has handled everything queued so far, held confirmations included
        (they go out at once); False if `timeout` ran out."""
        waiting = self._queue
        if waiting is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        self._flushing.set()
        try:
            with waiting.all_tasks_done:
                while waiting.unfinished_tasks:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    waiting.all_tasks_done.wait(left)
            return True
        finally:
            self._flushing.clear()

    def _sender(self) -> queue.Queue[_Queued]:
        """This process's queue, its thread started on first use: threads do not survive a fork."""
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._queue, self._pid = queue.Queue(), os.getpid()
                # A fresh context: the thread must never see the connection a payment job holds (one_connection).
                threading.Thread(target=contextvars.Context().run, args=(self._run, self._queue),
                                 name="orderflow-confirmations", daemon=True).start()
            return self._queue

    def _run(self, waiting: queue.Queue[_Queued]) -> None:
        while True:
            batch = [waiting.get()]
            self._wait_for_quiet(batch[0])
            gather_until = time.monotonic() + self.linger
            while len(batch) < self.batch:
                try:
                    batch.append(waiting.get(timeout=max(0.0, gather_until - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._deliver(batch)
            except Exception:  # the database, most likely: the jobs' leases hand them to the relay
                log.exception("confirmations not recorded", extra={"event": "notification_error"})
            finally:
                for _ in batch:
                    waiting.task_done()

    def _wait_for_quiet(self, first: _Queued) -> None:
        """Hold the oldest confirmation (and so every later one) while payment jobs keep the process busy,
        until it has waited its hold out or the process exits."""
        held = False
        while not self._flushing.is_set():
            left = first.hold_until - self.runner.monotonic()
            if left <= 0 or not self._holding():
                break
            if not held:
                held = True
                log.debug("confirmations held: payment jobs keep this process busy",
                          extra={"event": "notification", "outcome": "held"})
            self._flushing.wait(min(left, CONFIRMATION_HOLD_CHECK))

    def _deliver(self, batch: list[_Queued]) -> None:
        runner = self._sending
        if not runner.flags.is_enabled(NOTIFICATIONS_FLAG):
            _finish(runner, [item.job for item in batch], "skipped", 0)
            return
        sent = []
        for item in batch:
            now = runner.monotonic()
            if now < self._paused_until or now > item.send_by:
                continue  # left to its lease: the relay hands the job out when it runs out
            if _try_send(runner, item.job):
                sent.append(item.job)
            else:
                self._paused_until = runner.monotonic() + self.pause
                _failed(runner, item.job)
        _finish(runner, sent, "done", 1)


__all__ = ["NOTIFICATIONS_FLAG", "BackgroundConfirmations", "NotificationRunner", "deliver_notification",
           "send_notification_job"]
