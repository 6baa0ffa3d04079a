"""Dead letters: the payments the workers gave up on, and the replay that sends one round again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

from app.adapters import jobs_repository as jobs
from app.adapters import repository as repo
from app.adapters.db import read, write
from app.adapters.jobs_repository import DeadLetter
from app.domain import PENDING_MESSAGE, OrderStatus
from app.services.ports import JobPublisher


class DeadLetterNotFound(LookupError):
    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(f"There is no dead letter {dead_letter_id}.")


class DeadLetterAlreadyReplayed(Exception):
    def __init__(self, dead_letter: DeadLetter) -> None:
        super().__init__(f"Dead letter {dead_letter.id} was already replayed.")
        self.dead_letter = dead_letter


class OrderNotReplayable(Exception):
    def __init__(self, dead_letter: DeadLetter, status: str | None) -> None:
        super().__init__(f"Order {dead_letter.order_id} is {status}, not PaymentFailed; nothing to replay.")
        self.dead_letter = dead_letter


def list_dead_letters(engine: Engine, *, limit: int = 500) -> list[DeadLetter]:
    """Newest first."""
    with read(engine) as conn:
        return jobs.list_dead_letters(conn, limit=limit)


def replay_dead_letter(
    engine: Engine,
    dead_letter_id: int,
    *,
    publisher: JobPublisher | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DeadLetter:
    """The order back to PaymentPending and its job pending with a fresh retry count, due now, and the dead
    letter marked replayed, in one transaction; then a best-effort hint to the workers."""
    moment = now()
    with write(engine) as conn:
        dead_letter = jobs.get_dead_letter(conn, dead_letter_id)
        if dead_letter is None:
            raise DeadLetterNotFound(dead_letter_id)
        if not jobs.mark_dead_letter_replayed(conn, dead_letter_id, now=moment):
            raise DeadLetterAlreadyReplayed(dead_letter)
        if not repo.move_order(
            conn, dead_letter.order_id, from_status=OrderStatus.PAYMENT_FAILED,
            to_status=OrderStatus.PAYMENT_PENDING, now=moment, message=PENDING_MESSAGE,
        ):
            # Raising rolls the replay mark back with it: nothing changed.
            raise OrderNotReplayable(dead_letter, jobs.order_status(conn, dead_letter.order_id))
        jobs.restart_payment_job(conn, dead_letter.order_id, now=moment)
        replayed = jobs.get_dead_letter(conn, dead_letter_id)
    assert replayed is not None
    if publisher is not None:
        publisher.payment_due(replayed.order_id)
    return replayed


__all__ = [
    "DeadLetter",
    "DeadLetterAlreadyReplayed",
    "DeadLetterNotFound",
    "OrderNotReplayable",
    "list_dead_letters",
    "replay_dead_letter",
]
