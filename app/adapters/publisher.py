"""Handing due jobs to the workers through the broker.

`send_*` publish now and raise when the broker cannot take the message (the relay uses them and keeps the
job for its next pass). `payment_due` and `dead_lettered` are hints: they queue the message for a background
thread and return at once, never raising, so an API request never waits on a broker that is down; a hint that
never arrives only means the relay hands the job out a moment later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from app.adapters.broker import (
    DEAD_LETTER,
    PROCESS_PAYMENT,
    PUBLISH_RETRY_POLICY,
    PUBLISH_SOCKET_TIMEOUT,
    QUEUES,
    SEND_NOTIFICATION,
    publisher_celery,
)
from app.config import Settings

log = logging.getLogger("orderflow.publisher")

# Hints waiting for the broker; beyond this the oldest work is the relay's to deliver.
MAX_PENDING_HINTS = 1000
# After a failed publish, hints are dropped for this long instead of each paying a connect timeout.
FAILURE_COOLDOWN = 1.0


class CeleryPublisher:
    """Implements `JobPublisher`. Cheap to build: the Celery app and the sender thread start on first use,
    once per process (a fork gets its own)."""

    def __init__(
        self,
        settings: Settings,
        *,
        celery_app: Any | None = None,
        max_pending: int = MAX_PENDING_HINTS,
        cooldown: float = FAILURE_COOLDOWN,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._app = celery_app
        self._max_pending = max_pending
        self._cooldown = cooldown
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.Queue[tuple[str, list[Any]]] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._quiet_until = float("-inf")

    # --- synchronous sends (raise on failure) -----------------------------------------------------------

    def send_payment(self, order_id: str) -> None:
        self._send(PROCESS_PAYMENT, [order_id])

    def send_notification(self, job_id: int) -> None:
        self._send(SEND_NOTIFICATION, [job_id])

    def send_dead_letter(self, dead_letter_id: int, order_id: str) -> None:
        self._send(DEAD_LETTER, [dead_letter_id, order_id])

    # --- hints (never raise, never block) -------------------------------------------------------------

    def payment_due(self, order_id: str) -> None:
        self._hint(PROCESS_PAYMENT, [order_id])

    def dead_lettered(self, dead_letter_id: int, order_id: str) -> None:
        self._hint(DEAD_LETTER, [dead_letter_id, order_id])

    def waiting(self, queue_name: str) -> int | None:
        """Messages waiting in a broker queue (not yet taken by a worker); None when the broker cannot say."""
        try:
            app = self._celery()
            # Declared as the workers declare it (its broker name, durable, its type): RabbitMQ refuses a
            # declaration that differs from the queue's, and this one creates it if no worker did yet.
            queue = app.amqp.queues[queue_name]
            with app.pool.acquire(block=True, timeout=1.0) as connection:
                return int(queue.bind(connection.default_channel).queue_declare().message_count)
        except Exception:
            log.debug("queue length unknown", exc_info=True)
            return None

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until queued hints went out (for short-lived processes such as the CLI)."""
        deadline = self._monotonic() + timeout
        while self._monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    def close(self) -> None:
        """Close the broker connections (RabbitMQ logs a connection dropped without a goodbye as an error)."""
        if self._app is not None:
            self._app.close()

    # --- internals ------------------------------------------------------------------------------------

    def _celery(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = publisher_celery(self._settings)
        return self._app

    def _send(self, task: str, args: list[Any]) -> None:
        # `confirm_timeout` bounds the wait for RabbitMQ's publisher confirm (Redis has none).
        self._celery().send_task(task, args=args, queue=QUEUES[task], retry=True, retry_policy=PUBLISH_RETRY_POLICY,
                                 confirm_timeout=PUBLISH_SOCKET_TIMEOUT)

    def _hint(self, task: str, args: list[Any]) -> None:
        try:
            if self._monotonic() < self._quiet_until:
                return
            self._ensure_thread()
            self._queue.put_nowait((task, args))
        except queue.Full:
            pass
        except Exception:  # a hint must never fail the caller
            log.debug("hint not queued", exc_info=True)

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._pid == pid and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == pid and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != pid:
                # A forked child inherits the parent's queue object but not its thread: start clean.
                self._queue = queue.Queue(maxsize=self._max_pending)
                self._pid = pid
            self._thread = threading.Thread(target=self._drain, name="orderflow-publisher", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        while True:
            task, args = self._queue.get()
            try:
                if self._monotonic() >= self._quiet_until:
                    self._send(task, args)
            except Exception as exc:
                self._quiet_until = self._monotonic() + self._cooldown
                log.warning("broker unavailable, hint dropped (the outbox relay will deliver it)",
                            extra={"event": "publish_failed", "task": task, "error": type(exc).__name__})
            finally:
                self._queue.task_done()


__all__ = ["CeleryPublisher"]
