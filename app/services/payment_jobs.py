"""The worker side of a payment: run one due job from the outbox, decide what happens to its order.

A job is claimed before anything else (pending & due -> running under a lease), so two messages for one job
never run it twice; a worker killed mid-job leaves a lease that runs out, and the relay hands the job out
again. Every move of an order is a conditional UPDATE, so the API and a worker never both move one order,
and the payment service sees the order's derived key on every call, so running a job again never charges
twice.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from app.domain import FailureReason, OrderStatus, check_transition, money
from app.policies import JobsPaymentConfig
from app.resilience import full_jitter_delay
from app.services.load import ProcessLoad
from app.services.ports import CaptureResult, JobPaymentGateway
from app.services.unit_of_work import ClaimedJob, DeadLettered, Settlement, UnitOfWorkFactory

log = logging.getLogger("orderflow.payment_jobs")

ORDER_CONFIRMED = "order_confirmed"
# How long past the attempt timeout a claimed job stays leased: covers the database writes around the call
# and a slow process; after it the relay hands the job to another worker.
DEFAULT_LEASE_MARGIN = 15.0


class ConfirmationSender(Protocol):
    """Sends an order's `order_confirmed` notification from the worker process that confirmed it, after the
    commit, instead of through the broker."""

    def claim_until(self, now: datetime) -> datetime | None:
        """The lease the job is written with (claimed for this worker), or None to leave it to the relay."""

    def send(self, job_id: int, order_id: str, kind: str, lease_until: datetime) -> str:
        """Send (or queue for sending) a job written claimed until `lease_until` (what `claim_until` answered);
        must not block for long."""


@dataclass
class PaymentJobRunner:
    """Everything one job run needs, built once per worker process."""

    uow: UnitOfWorkFactory
    gateway: JobPaymentGateway
    config: JobsPaymentConfig
    confirmations: ConfirmationSender | None = None
    # Told when a job starts and ends: best-effort work of the process gives way while jobs keep it busy.
    load: ProcessLoad | None = None
    # Told every outcome but `skipped` (the metrics hook counts them as `payment_jobs_total`).
    on_outcome: Callable[[str], None] = field(default=lambda outcome: None)
    lease_margin: float = DEFAULT_LEASE_MARGIN
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic
    rng: Callable[[], float] = random.random

    def retry_delay(self, retries: int, *, retry_after: float | None = None) -> float:
        """Full jitter over [0, min(backoff_max, backoff_base * 2**retries)]; a Retry-After asks for at least
        that long, never more than backoff_max."""
        delay = full_jitter_delay(retries, self.config.backoff_base, self.config.backoff_max, self.rng)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.config.backoff_max))
        return delay


def process_payment_job(order_id: str, *, runner: PaymentJobRunner) -> str:
    """Run the order's payment job if it is due; returns what happened (a `payment_jobs_total` outcome, or
    `skipped` when there was nothing to run)."""
    with runner.uow.pinned(), runner.load.running() if runner.load is not None else nullcontext():
        return _run(order_id, runner)


def count_backlog(uow: UnitOfWorkFactory) -> int:
    """Payment jobs not finished yet (pending or running)."""
    with uow(read_only=True) as unit:
        return unit.outbox.payments.count_open()


def _run(order_id: str, runner: PaymentJobRunner) -> str:
    now = runner.now()
    lease_until = now + timedelta(seconds=runner.config.attempt_timeout + runner.lease_margin)
    with runner.uow(single_statement=True) as uow:
        job = uow.outbox.payments.claim(order_id, now=now, lease_until=lease_until, token=uuid.uuid4().hex)
        uow.commit()
    if job is None:
        return _done(runner, order_id, "skipped", "not due, already running or finished")
    if job.order_status != OrderStatus.PAYMENT_PENDING:
        # The real-time path (or an earlier run) already settled the order: nothing left to pay.
        with runner.uow(single_statement=True) as uow:
            uow.outbox.payments.finish(job, state="done", now=now)
            uow.commit()
        return _done(runner, order_id, "skipped", "order already settled")

    if job.retries > runner.config.max_retries:
        # Past its retries without a run that could end it: its worker died on every run (expired leases), or
        # the ledger could not be asked when the retries ran out. No further call: the ledger decides.
        return _give_up(runner, job, CaptureResult("failed", error=_past_retries(job)),
                        FailureReason.RETRIES_EXHAUSTED, "dead_lettered")

    if job.ledger_first:
        # A replayed job: the payment service may have forgotten the order's key since the first run, so a
        # capture it already holds must be found in its ledger, not made again.
        captures = _ledger(runner, job.order_id)
        if captures is None:
            return _ledger_unreachable(runner, job, CaptureResult("failed", error="replayed job"), give_up=False)
        if captures:
            return _settle(runner, job, None, OrderStatus.CONFIRMED, "succeeded", payment_id=_payment_id(captures))

    # No separate look at the circuit first: the call's own admission (one round trip to the shared state)
    # refuses it while the circuit is open or isolated, and a refused call is deferred below.
    try:
        result = runner.gateway.capture(
            order_id=order_id, customer_id=job.customer_id, amount=money(job.total), currency=job.currency,
            deadline=runner.monotonic() + runner.config.attempt_timeout, source="worker",
        )
    except Exception as exc:  # the gateway promises not to raise; a bug there must not strand the job
        log.exception("payment gateway raised", extra={"event": "payment_gateway_error", "order_id": order_id})
        result = CaptureResult("failed", error=f"{type(exc).__name__}: {exc}")

    if result.outcome == "not_attempted":
        # Nothing reached the payment service (circuit open or isolated, bulkhead full): not a retry. An open
        # circuit defers the job to the end of its break.
        until = runner.gateway.circuit_break_until()
        due = (datetime.fromtimestamp(until, UTC) if until is not None
               else runner.now() + timedelta(seconds=runner.retry_delay(0)))
        return _defer(runner, job, due, result.error or "payment call not attempted")
    if result.outcome == "captured":
        return _settle(runner, job, result, OrderStatus.CONFIRMED, "succeeded", payment_id=result.payment_id)
    if result.outcome == "declined":
        return _settle(runner, job, result, OrderStatus.PAYMENT_FAILED, "declined",
                       failure_reason=FailureReason.DECLINED)
    if result.outcome == "rejected":
        return _give_up(runner, job, result, FailureReason.REJECTED, "rejected")
    if job.retries < runner.config.max_retries:
        return _retry(runner, job, result)
    return _give_up(runner, job, result, FailureReason.RETRIES_EXHAUSTED, "dead_lettered")


# Outcomes every job of a healthy backlog ends with: counted by `payment_jobs_total`, logged only at DEBUG
# (a JSON line per job would cost the drain more than some of its SQL); every other outcome is a decision
# an operator wants to see, logged at INFO.
_ROUTINE = frozenset({"succeeded", "skipped"})


def _done(runner: PaymentJobRunner, order_id: str, outcome: str, detail: str) -> str:
    if outcome != "skipped":
        runner.on_outcome(outcome)
    level = logging.DEBUG if outcome in _ROUTINE else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "payment job %s", outcome,
                extra={"event": "payment_job", "order_id": order_id, "outcome": outcome, "detail": detail})
    return outcome


def _defer(runner: PaymentJobRunner, job: ClaimedJob, due: datetime, reason: str) -> str:
    now = runner.now()
    with runner.uow() as uow:
        uow.outbox.payments.reschedule(job, due_at=max(due, now), retries=job.retries, now=now)
        uow.commit()
    return _done(runner, job.order_id, "deferred", f"{reason}; due {max(due, now).isoformat()}")


def _retry(runner: PaymentJobRunner, job: ClaimedJob, result: CaptureResult) -> str:
    delay = runner.retry_delay(job.retries, retry_after=result.retry_after)
    now = runner.now()
    with runner.uow() as uow:
        uow.orders.record_attempts(job.order_id, result.attempts, now=now)
        uow.outbox.payments.reschedule(job, due_at=now + timedelta(seconds=delay), retries=job.retries + 1,
                                       now=now)
        uow.commit()
    return _done(runner, job.order_id, "retried", f"retry {job.retries + 1} in {delay:.3f}s: {_error(result)}")


def _settle(
    runner: PaymentJobRunner,
    job: ClaimedJob,
    result: CaptureResult | None,
    to_status: OrderStatus,
    outcome: str,
    *,
    payment_id: str | None = None,
    failure_reason: FailureReason | None = None,
) -> str:
    """Captured (or found in the ledger) -> Confirmed; declined -> PaymentFailed: attempts, order, job and
    notification change in one transaction. The notification is then handed to this process's sender when it
    can take it (its row stays the guarantee: the relay hands it out if this process dies first)."""
    check_transition(OrderStatus.PAYMENT_PENDING, to_status)
    now = runner.now()
    confirmations = runner.confirmations if to_status is OrderStatus.CONFIRMED else None
    claimed_until = confirmations.claim_until(now) if confirmations is not None else None
    settlement = Settlement(
        to_status=to_status, attempts=result.attempts if result is not None else (), now=now,
        payment_id=payment_id, failure_reason=failure_reason,
        notification_kind=ORDER_CONFIRMED if to_status is OrderStatus.CONFIRMED else None,
        notification_claimed_until=claimed_until,
    )
    with runner.uow(single_statement=True) as uow:
        moved, notification = uow.outbox.payments.settle(job, settlement)
        uow.commit()
    if confirmations is not None and claimed_until is not None and notification is not None:
        try:
            confirmations.send(notification, job.order_id, ORDER_CONFIRMED, claimed_until)
        except Exception:  # best effort: the claimed row is the guarantee, its lease hands it to the relay
            log.warning("confirmation not handed to the sender", exc_info=True,
                        extra={"event": "notification_error", "order_id": job.order_id})
    return _done(runner, job.order_id, outcome, "order moved" if moved else "order was moved by someone else")


def _give_up(
    runner: PaymentJobRunner, job: ClaimedJob, result: CaptureResult, reason: FailureReason, outcome: str
) -> str:
    """Every give-up is the ledger's to decide: an attempt that timed out or was answered with an error may
    still have captured. A capture found confirms the order; none, the dead letter; a ledger that cannot be
    asked is not a "no": the job runs again later."""
    captures = _ledger(runner, job.order_id)
    if captures is None:
        return _ledger_unreachable(runner, job, result, give_up=reason is FailureReason.RETRIES_EXHAUSTED)
    if captures:
        return _settle(runner, job, result, OrderStatus.CONFIRMED, "succeeded", payment_id=_payment_id(captures))
    return _dead_letter(runner, job, result, reason, outcome)


def _ledger(runner: PaymentJobRunner, order_id: str) -> list[dict[str, object]] | None:
    try:
        return runner.gateway.lookup_captures(order_id, deadline=runner.monotonic() + runner.config.attempt_timeout)
    except Exception:  # the gateway promises not to raise; a bug there is an unreachable ledger, not a "no"
        log.exception("payment ledger lookup raised", extra={"event": "ledger_error", "order_id": order_id})
        return None


def _payment_id(captures: list[dict[str, object]]) -> str | None:
    found = captures[0].get("id")
    return str(found) if found is not None else None


def _ledger_unreachable(runner: PaymentJobRunner, job: ClaimedJob, result: CaptureResult, *,
                        give_up: bool) -> str:
    """Run the job again after a backoff. `give_up`: its retries are spent, so the next run makes no call and
    only asks the ledger again; otherwise it asks before it captures."""
    delay = runner.retry_delay(min(job.retries, runner.config.max_retries))
    retries = max(job.retries, runner.config.max_retries) + 1 if give_up else job.retries + 1
    now = runner.now()
    with runner.uow() as uow:
        uow.orders.record_attempts(job.order_id, result.attempts, now=now)
        uow.outbox.payments.reschedule(job, due_at=now + timedelta(seconds=delay), retries=retries, now=now,
                                       ledger_first=not give_up)
        uow.commit()
    return _done(runner, job.order_id, "retried",
                 f"payment ledger unreachable, asked again in {delay:.3f}s: {_error(result)}")


def _past_retries(job: ClaimedJob) -> str:
    return f"no retry left after {job.retries} runs (worker lost or payment ledger unreachable)"


def _dead_letter(
    runner: PaymentJobRunner,
    job: ClaimedJob,
    result: CaptureResult,
    reason: FailureReason,
    outcome: str,
    *,
    last_error: str | None = None,
) -> str:
    """The dead letter, the failed order and the dead job in one transaction; the message after the commit.

    Only while this run still holds the job's claim: a run that outlived its lease (a frozen process) may
    find that another run has since captured, and must not fail the order under it."""
    now = runner.now()
    dead_letter_id: int | None = None
    with runner.uow() as uow:
        held = uow.outbox.payments.hold_claim(job, now=now)
        uow.orders.record_attempts(job.order_id, result.attempts, now=now)
        if not held:
            pass
        elif uow.orders.move(job.order_id, from_status=OrderStatus.PAYMENT_PENDING,
                             to_status=OrderStatus.PAYMENT_FAILED, now=now, failure_reason=reason):
            dead_letter_id = uow.dead_letters.add(
                job.order_id, history=uow.orders.attempts_since_last_dead_letter(job.order_id),
                last_error=last_error or _error(result), now=now,
            )
            uow.outbox.payments.finish(job, state="dead", now=now)
            # The dead-letter consumer hears of it after the commit; the row is the record.
            uow.publish(DeadLettered(dead_letter_id, job.order_id))
        else:
            uow.outbox.payments.finish(job, state="done", now=now)
        uow.commit()
    if dead_letter_id is None:
        return _done(runner, job.order_id, "skipped",
                     "order was moved by someone else" if held else "the job's lease was taken over")
    return _done(runner, job.order_id, outcome, f"dead letter {dead_letter_id}: {last_error or _error(result)}")


def _error(result: CaptureResult) -> str:
    if result.error:
        return result.error
    if result.http_status is not None:
        return f"HTTP {result.http_status}"
    for attempt in reversed(result.attempts):
        if attempt.error or attempt.http_status:
            return attempt.error or f"HTTP {attempt.http_status}"
    return result.outcome


__all__ = ["DEFAULT_LEASE_MARGIN", "ORDER_CONFIRMED", "ConfirmationSender", "PaymentJobRunner", "count_backlog",
           "process_payment_job"]
