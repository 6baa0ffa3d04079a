"""The Celery tasks: one-liners around the services. They take ids, never objects."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_process_shutdown
from prometheus_client import Counter

from app.adapters.broker import DEAD_LETTER, PROCESS_PAYMENT, SEND_NOTIFICATION
from app.services.notifications import send_notification_job
from app.services.payment_jobs import process_payment_job
from workers.context import current_context, worker_context

log = logging.getLogger("orderflow.dead_letters")

# How long an exiting pool process gives its sender thread to send the confirmations it still holds.
CONFIRMATIONS_FLUSH_SECONDS = 2.0

DEAD_LETTER_MESSAGES = Counter(
    "payment_dead_letter_messages_total", "Dead-letter messages consumed from the dead_letter queue."
)


@shared_task(name=PROCESS_PAYMENT)
def process_payment(order_id: str) -> str:
    return process_payment_job(order_id, runner=worker_context().payments)


@shared_task(name=SEND_NOTIFICATION)
def send_notification(job_id: int) -> str:
    return send_notification_job(job_id, runner=worker_context().notifications)


@shared_task(name=DEAD_LETTER)
def dead_letter(dead_letter_id: int, order_id: str) -> None:
    DEAD_LETTER_MESSAGES.inc()
    log.error("payment dead-lettered", extra={"event": "payment_dead_lettered",
                                              "dead_letter_id": dead_letter_id, "order_id": order_id})


@worker_process_shutdown.connect
def send_held_confirmations(**_: Any) -> None:
    """A pool process about to exit sends the confirmations its sender thread still holds, for a bounded
    time, instead of leaving them to their leases (the relay would send them once those run out)."""
    context = current_context()
    if context is not None:
        context.confirmations.flush(CONFIRMATIONS_FLUSH_SECONDS)
