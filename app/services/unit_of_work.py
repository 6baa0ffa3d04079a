"""The unit of work: how services read and change what is stored, without knowing how it is stored.

A service opens one (`with uow_factory() as uow:`), reads and writes through its repositories, calls
`uow.commit()`, and leaves the block; leaving it without a commit rolls everything back. Messages a service
hands to `uow.publish` are sent only after the commit (an outbox row is the guarantee; the message only
tells a worker early). `app/adapters/sql` implements it over SQLAlchemy; `tests/unit/fakes.py` in memory.

Every change a repository makes that two processes could race for is conditional (a status, a claim token,
"not yet"), and says whether it won: the callers decide on that answer, never on an earlier read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from app.domain import FailureReason, Order, OrderStatus
from app.domain.model import AttemptRecord, DeadLetter, Flag, Product


class StorageError(Exception):
    """The store could not be reached or failed: nothing of the unit of work was committed."""


class CommitOutcomeUnknown(StorageError):
    """The COMMIT itself failed: the unit of work may or may not have been committed."""


class Conflict(StorageError):
    """Another writer inserted the same unique row first; the unit of work was rolled back (try again)."""


# --- what the repositories hand back ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class KeyClaim:
    """What claiming an Idempotency-Key found.

    `claimed`: this request holds the key (`token`); `replay`: a finished response (`response`); `bound`: an
    order is bound to the key but no response was stored and nobody holds it any more (`order_id`);
    `in_use`: another request holds it; `mismatch`: it was first used with another body."""

    outcome: str  # "claimed" | "replay" | "bound" | "in_use" | "mismatch"
    response: StoredResponse | None = None
    token: str | None = None
    order_id: str | None = None


@dataclass(frozen=True)
class ClaimedJob:
    """A payment job this run holds (pending & due -> running, under a lease and a claim token)."""

    order_id: str
    retries: int
    claim_token: str
    # The order as the claim found it: what the payment call needs, read with the claim.
    order_status: str = "PaymentPending"
    customer_id: int = 0
    total: Decimal = Decimal("0")
    currency: str = "USD"
    # A replayed job: the ledger is asked before the capture.
    ledger_first: bool = False


@dataclass(frozen=True)
class PaymentJobRow:
    order_id: str
    state: str  # pending | running | done | dead
    retries: int
    next_attempt_at: datetime
    lease_until: datetime | None
    published_at: datetime | None


@dataclass(frozen=True)
class ClaimedNotification:
    id: int
    order_id: str
    kind: str
    attempts: int


@dataclass(frozen=True)
class Settlement:
    """The end of a payment run that settles its order (see `PaymentJobs.settle`)."""

    to_status: OrderStatus
    attempts: Sequence[AttemptRecord]
    now: datetime
    payment_id: str | None = None
    failure_reason: FailureReason | None = None
    notification_kind: str | None = None  # queued with the move (Confirmed)
    notification_claimed_until: datetime | None = None  # the notification is written claimed until then


# --- repositories ---------------------------------------------------------------------------------------


class Catalog(Protocol):
    def products(self) -> list[Product]: ...
    def products_by_id(self, ids: Iterable[int]) -> dict[int, Product]: ...


class Orders(Protocol):
    def add(self, order: Order) -> None: ...
    def exists(self, order_id: str) -> bool: ...
    def get(self, order_id: str) -> Order | None: ...
    def status_of(self, order_id: str) -> str | None: ...
    def latest(self, *, status: OrderStatus | None, limit: int) -> list[Order]:
        """Newest first."""
    def count_by_status(self) -> dict[str, int]: ...

    def move(self, order_id: str, *, from_status: OrderStatus, to_status: OrderStatus, now: datetime,
             payment_id: str | None = None, failure_reason: FailureReason | None = None,
             message: str | None = None) -> bool:
        """A conditional move: of two processes moving one order, exactly one wins."""

    def record_attempts(self, order_id: str, attempts: Sequence[AttemptRecord], *, now: datetime) -> int | None:
        """Every HTTP call made to the payment service for the order, counted on it (never reset).
        The order's count after them; None when there were none or no such order."""

    def attempts_since_last_dead_letter(self, order_id: str) -> list[dict[str, Any]]:
        """The payment attempts of the run since the order's last replay (all of them if never replayed)."""


class PaymentJobs(Protocol):
    """The payment outbox: one job per order, written with the order."""

    def add(self, order_id: str, *, due_at: datetime, now: datetime) -> None: ...
    def get(self, order_id: str) -> PaymentJobRow | None: ...
    def set_due(self, order_id: str, *, due_at: datetime, now: datetime) -> None: ...
    def close(self, order_id: str, *, now: datetime) -> None:
        """The order was settled outside a worker's run (the real-time path): nothing left to pay."""

    def claim(self, order_id: str, *, now: datetime, lease_until: datetime, token: str) -> ClaimedJob | None:
        """pending & due -> running: of two messages for one job exactly one runs it."""

    def hold_claim(self, job: ClaimedJob, *, now: datetime) -> bool:
        """True while the claim is still this run's, keeping others off the job until the commit."""

    def finish(self, job: ClaimedJob, *, state: str, now: datetime) -> bool: ...
    def reschedule(self, job: ClaimedJob, *, due_at: datetime, retries: int, now: datetime,
                   ledger_first: bool = False) -> bool: ...

    def settle(self, job: ClaimedJob, settlement: Settlement) -> tuple[bool, int | None]:
        """Attempts recorded, the order moved if still PaymentPending, the job done, and with the move the
        notification queued: (moved, the new notification job's id)."""

    def restart(self, order_id: str, *, now: datetime) -> bool:
        """A replayed job: pending, a fresh retry count, due now, the ledger asked first."""

    def reclaim_expired(self, *, now: datetime) -> int: ...
    def count_open(self) -> int: ...


class NotificationJobs(Protocol):
    def add(self, order_id: str, kind: str, *, now: datetime, claimed_until: datetime | None = None) -> int | None:
        """At most one job per order and kind; the new job's id, or None when there was one already."""

    def claim(self, job_id: int, *, now: datetime, lease_until: datetime) -> ClaimedNotification | None: ...
    def finish(self, job_ids: Sequence[int], *, state: str, attempts: int, now: datetime) -> None: ...
    def retry(self, job_id: int, *, attempts: int, due_at: datetime, now: datetime) -> None: ...
    def state_of(self, order_id: str, kind: str) -> str | None: ...
    def reclaim_expired(self, *, now: datetime) -> int: ...


class Relay(Protocol):
    """The relay's view of one outbox: which jobs await a message, and marking one sent."""

    def due(self, *, now: datetime, republish_before: datetime, limit: int) -> list[Any]: ...
    def mark_published(self, job: Any, *, now: datetime, republish_before: datetime) -> bool: ...
    def unmark_published(self, job: Any) -> None: ...


class DeadLetters(Protocol):
    def add(self, order_id: str, *, history: Sequence[dict[str, Any]], last_error: str | None,
            now: datetime) -> int: ...
    def get(self, dead_letter_id: int) -> DeadLetter | None: ...
    def latest(self, *, limit: int = 500) -> list[DeadLetter]:
        """Newest first."""
    def mark_replayed(self, dead_letter_id: int, *, now: datetime) -> bool:
        """Conditional on not replayed yet: of two replays exactly one wins."""

    def count_unreplayed(self) -> int: ...


class Flags(Protocol):
    def all(self) -> list[Flag]: ...
    def set(self, name: str, *, enabled: bool, by: str, now: datetime) -> Flag | None: ...


class IdempotencyKeys(Protocol):
    def claim(self, key: str, fingerprint: str, *, now: datetime, lock_for: timedelta, keep_for: timedelta,
              token: str) -> KeyClaim:
        """Raises Conflict when another first request inserted the key at the same moment."""

    def bind(self, key: str, token: str, order_id: str) -> bool:
        """Bind the order to the key held under `token`; False when the claim was taken over."""

    def complete(self, key: str, token: str, response: StoredResponse) -> None: ...
    def release(self, key: str, token: str, *, now: datetime) -> None: ...
    def purge_expired(self, *, now: datetime, limit: int) -> int:
        """Forget at most `limit` keys kept past their 24 h; how many went."""


class Outbox(Protocol):
    @property
    def payments(self) -> PaymentJobs: ...
    @property
    def notifications(self) -> NotificationJobs: ...
    @property
    def payment_relay(self) -> Relay:
        """Payment jobs as the relay sees them, by order id."""

    @property
    def notification_relay(self) -> Relay:
        """Notification jobs as the relay sees them, by id."""


class UnitOfWork(Protocol):
    @property
    def catalog(self) -> Catalog: ...
    @property
    def orders(self) -> Orders: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def dead_letters(self) -> DeadLetters: ...
    @property
    def flags(self) -> Flags: ...
    @property
    def idempotency(self) -> IdempotencyKeys: ...

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None: ...

    def commit(self) -> None:
        """Raises CommitOutcomeUnknown when the COMMIT failed in a way that leaves its outcome unknown."""

    def publish(self, message: Any) -> None:
        """Sent after the commit, best effort (never when the unit of work is rolled back)."""


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False, wait: float | None = None,
                 single_statement: bool = False) -> UnitOfWork:
        """`read_only`: reads only, never taking a write lock. `wait`: the longest it may wait for a lock (a
        transaction that must end by a deadline). `single_statement`: each statement may commit by itself
        (PostgreSQL autocommit), for units of one statement on the hot path; `commit()` is then harmless."""

    def pinned(self) -> AbstractContextManager[None]:
        """Inside this block every unit of work of this thread uses one connection (a job's statements check
        a connection out once, not once each)."""


# Messages a unit of work publishes after its commit.


@dataclass(frozen=True)
class PaymentDue:
    order_id: str


@dataclass(frozen=True)
class DeadLettered:
    dead_letter_id: int
    order_id: str


Publish = Callable[[Any], None]


class MessageSink(Protocol):
    def payment_due(self, order_id: str) -> None: ...
    def dead_lettered(self, dead_letter_id: int, order_id: str) -> None: ...


def deliver_to(sink: MessageSink) -> Publish:
    """What a unit of work publishes, handed to the broker's publisher."""

    def publish(message: Any) -> None:
        if isinstance(message, PaymentDue):
            sink.payment_due(message.order_id)
        elif isinstance(message, DeadLettered):
            sink.dead_lettered(message.dead_letter_id, message.order_id)
        else:
            raise TypeError(f"no handler for {type(message).__name__}")

    return publish

__all__ = [
    "Catalog",
    "ClaimedJob",
    "ClaimedNotification",
    "CommitOutcomeUnknown",
    "Conflict",
    "DeadLetters",
    "DeadLettered",
    "Flags",
    "IdempotencyKeys",
    "KeyClaim",
    "MessageSink",
    "NotificationJobs",
    "Orders",
    "Outbox",
    "PaymentDue",
    "PaymentJobRow",
    "PaymentJobs",
    "Publish",
    "Relay",
    "Settlement",
    "StorageError",
    "StoredResponse",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "deliver_to",
]
