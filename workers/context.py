"""What a worker process works with, built by the composition root on first use in that process.

Prefork children are forked from the main process; a database pool or socket shared across a fork is
corrupted by whichever process uses it second. So every process (the main one for the relay and metrics,
each pool child for the tasks) builds its own, keyed by pid.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from app.adapters.publisher import CeleryPublisher
from app.bootstrap import Services, bootstrap
from app.config import Settings
from app.metrics import count_payment_job
from app.services.notifications import BackgroundConfirmations, NotificationRunner
from app.services.payment_jobs import PaymentJobRunner


@dataclass
class WorkerContext:
    services: Services
    publisher: CeleryPublisher
    payments: PaymentJobRunner
    notifications: NotificationRunner
    confirmations: BackgroundConfirmations
    republish_after: float


_contexts: dict[int, WorkerContext] = {}
_lock = threading.Lock()


def build_context(services: Services) -> WorkerContext:
    policies = services.policies
    if services.notifier is None or services.job_payments is None:
        raise ValueError("a worker needs the real payment and notification clients")
    publisher = services.publisher
    if not isinstance(publisher, CeleryPublisher):
        publisher = CeleryPublisher(services.settings)
    lease_margin = services.settings.lease_margin
    notification_policy = policies.dependencies["notification"]
    notifications = NotificationRunner(
        uow=services.uow, sender=services.notifier, flags=services.flags,
        send_timeout=notification_policy.total_timeout, lease_margin=lease_margin,
    )
    confirmations = BackgroundConfirmations(notifications)
    return WorkerContext(
        services=services,
        publisher=publisher,
        payments=PaymentJobRunner(
            uow=services.uow, gateway=services.job_payments, config=policies.jobs_payment,
            confirmations=confirmations, lease_margin=lease_margin, on_outcome=count_payment_job,
        ),
        notifications=notifications,
        confirmations=confirmations,
        republish_after=services.settings.republish_after,
    )


def worker_context() -> WorkerContext:
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        with _lock:
            context = _contexts.get(pid)
            if context is None:
                # A context inherited from the parent stays referenced, never used nor closed: closing a
                # SQLite connection the parent may hold inside a transaction would write to the shared
                # WAL index from this process and can leave the database locked for everyone.
                context = _contexts[pid] = build_context(bootstrap(Settings.from_env()))
    return context


def current_context() -> WorkerContext | None:
    """This process's context if it has built one (nothing is built)."""
    return _contexts.get(os.getpid())


__all__ = ["WorkerContext", "build_context", "current_context", "worker_context"]
