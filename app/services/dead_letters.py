"""Dead letters: the payments the workers gave up on, and the replay that sends one round again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from app.domain import PENDING_MESSAGE, DeadLetter, OrderStatus
from app.services.unit_of_work import PaymentDue, UnitOfWorkFactory


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


def list_dead_letters(uow: UnitOfWorkFactory, *, limit: int = 500) -> list[DeadLetter]:
    """Newest first."""
    with uow(read_only=True) as unit:
        return unit.dead_letters.latest(limit=limit)


def count_unreplayed(uow: UnitOfWorkFactory) -> int:
    with uow(read_only=True) as unit:
        return unit.dead_letters.count_unreplayed()


def replay_dead_letter(
    uow: UnitOfWorkFactory, dead_letter_id: int, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> DeadLetter:
    """The order back to PaymentPending and its job pending with a fresh retry count, due now (its worker asks
    the ledger before it captures again), and the dead letter marked replayed, in one transaction; then a
    hint to the workers."""
    moment = now()
    with uow() as unit:
        dead_letter = unit.dead_letters.get(dead_letter_id)
        if dead_letter is None:
            raise DeadLetterNotFound(dead_letter_id)
        if not unit.dead_letters.mark_replayed(dead_letter_id, now=moment):
            raise DeadLetterAlreadyReplayed(dead_letter)
        if not unit.orders.move(dead_letter.order_id, from_status=OrderStatus.PAYMENT_FAILED,
                                to_status=OrderStatus.PAYMENT_PENDING, now=moment, message=PENDING_MESSAGE):
            # Leaving without a commit rolls the replay mark back with it: nothing changed.
            raise OrderNotReplayable(dead_letter, unit.orders.status_of(dead_letter.order_id))
        unit.outbox.payments.restart(dead_letter.order_id, now=moment)
        replayed = unit.dead_letters.get(dead_letter_id)
        unit.publish(PaymentDue(dead_letter.order_id))
        unit.commit()
    assert replayed is not None
    return replayed


__all__ = [
    "DeadLetter",
    "DeadLetterAlreadyReplayed",
    "DeadLetterNotFound",
    "OrderNotReplayable",
    "count_unreplayed",
    "list_dead_letters",
    "replay_dead_letter",
]
