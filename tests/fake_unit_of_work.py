"""The services' unit of work in memory: the same rules as `app.adapters.sql`, for millisecond tests.

A writing unit holds the store's lock from its start to its end (as SQLite's BEGIN IMMEDIATE does) and works
on a copy that its commit makes the store's; a read-only unit reads a copy. Every conditional change answers
as the SQL one does, so a service test passes on this fake exactly when it passes on a database (the worker
tests run on both).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from app.domain import (
    AttemptRecord,
    DeadLetter,
    FailureReason,
    Flag,
    Order,
    OrderStatus,
    Payment,
    Product,
    check_transition,
)
from app.services.unit_of_work import (
    ClaimedJob,
    ClaimedNotification,
    CommitOutcomeUnknown,
    Conflict,
    KeyClaim,
    PaymentJobRow,
    Publish,
    Settlement,
    StorageError,
    StoredResponse,
)

PRODUCTS = {pid: Product(pid, f"Product {pid}", Decimal("12.50")) for pid in range(1, 21)}
FLAGS = ("RealTimePayments", "Notifications")


@dataclass
class _Data:
    orders: dict[str, Order] = field(default_factory=dict)
    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    payment_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notification_jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    flags: dict[str, Flag] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=lambda: {"notification": 0, "dead_letter": 0})

    def next_id(self, kind: str) -> int:
        self.ids[kind] += 1
        return self.ids[kind]


class MemoryStore:
    """What the fake keeps between units: the data, and its write lock."""

    def __init__(self, *, now: datetime | None = None) -> None:
        self.data = _Data()
        self.lock = threading.RLock()
        moment = now or datetime(2026, 1, 1)
        self.data.flags = {name: Flag(name, True, name, moment, "migration") for name in FLAGS}
        # Faults a test can set: the next commit fails (before or after applying), or every unit fails.
        self.fail_next_commit: str | None = None  # "before" | "after"
        self.down = False


class _Repo:
    def __init__(self, data: _Data) -> None:
        self._d = data


class MemoryCatalog(_Repo):
    def products(self) -> list[Product]:
        return [PRODUCTS[pid] for pid in sorted(PRODUCTS)]

    def products_by_id(self, ids: Iterable[int]) -> dict[int, Product]:
        return {pid: PRODUCTS[pid] for pid in set(ids) if pid in PRODUCTS}


class MemoryOrders(_Repo):
    def add(self, order: Order) -> None:
        if order.id in self._d.orders:
            raise Conflict(f"order {order.id} exists")
        self._d.orders[order.id] = order

    def exists(self, order_id: str) -> bool:
        return order_id in self._d.orders

    def get(self, order_id: str) -> Order | None:
        return self._d.orders.get(order_id)

    def status_of(self, order_id: str) -> str | None:
        order = self._d.orders.get(order_id)
        return str(order.status) if order else None

    def latest(self, *, status: OrderStatus | None, limit: int) -> list[Order]:
        found = [o for o in self._d.orders.values() if status is None or o.status is status]
        return sorted(found, key=lambda o: (o.created_at, o.id), reverse=True)[:limit]

    def count_by_status(self) -> dict[str, int]:
        counts = {str(s): 0 for s in OrderStatus}
        for order in self._d.orders.values():
            counts[str(order.status)] += 1
        return counts

    def move(self, order_id: str, *, from_status: OrderStatus, to_status: OrderStatus, now: datetime,
             payment_id: str | None = None, failure_reason: FailureReason | None = None,
             message: str | None = None) -> bool:
        check_transition(from_status, to_status)
        order = self._d.orders.get(order_id)
        if order is None or order.status is not from_status:
            return False
        self._d.orders[order_id] = order.moved(to_status, now=now, payment_id=payment_id,
                                               failure_reason=failure_reason, message=message)
        return True

    def record_attempts(self, order_id: str, attempts: Sequence[AttemptRecord], *, now: datetime) -> int | None:
        if not attempts or order_id not in self._d.orders:
            return None
        self._d.attempts.setdefault(order_id, []).extend(attempts)
        order = self._d.orders[order_id]
        self._d.orders[order_id] = order.with_attempts(order.payment.attempts + len(attempts), now=now)
        return order.payment.attempts + len(attempts)

    def attempts_since_last_dead_letter(self, order_id: str) -> list[dict[str, Any]]:
        earlier = sum(d.attempts for d in self._d.dead_letters.values() if d.order_id == order_id)
        return [a.to_dict() for a in self._d.attempts.get(order_id, [])[earlier:]]


class _MemoryOutboxTable(_Repo):
    _table: str

    def _rows(self) -> dict[Any, dict[str, Any]]:
        return getattr(self._d, self._table)  # type: ignore[no-any-return]

    def _awaiting(self, row: dict[str, Any], now: datetime, republish_before: datetime) -> bool:
        return row["state"] == "pending" and row["next_attempt_at"] <= now and (
            row["published_at"] is None or row["published_at"] < republish_before)

    def due(self, *, now: datetime, republish_before: datetime, limit: int) -> list[Any]:
        rows = [(row["next_attempt_at"], key) for key, row in self._rows().items()
                if self._awaiting(row, now, republish_before)]
        return [key for _, key in sorted(rows)[:limit]]

    def mark_published(self, job: Any, *, now: datetime, republish_before: datetime) -> bool:
        row = self._rows().get(job)
        if row is None or not self._awaiting(row, now, republish_before):
            return False
        row["published_at"] = now
        return True

    def unmark_published(self, job: Any) -> None:
        row = self._rows().get(job)
        if row is not None and row["state"] == "pending":
            row["published_at"] = None


class MemoryPaymentJobs(_MemoryOutboxTable):
    _table = "payment_jobs"

    def add(self, order_id: str, *, due_at: datetime, now: datetime) -> None:
        if order_id in self._d.payment_jobs:
            raise Conflict(f"job of {order_id} exists")
        self._d.payment_jobs[order_id] = {"state": "pending", "retries": 0, "next_attempt_at": due_at,
                                          "lease_until": None, "published_at": None, "claim_token": None,
                                          "ledger_first": False}

    def get(self, order_id: str) -> PaymentJobRow | None:
        row = self._d.payment_jobs.get(order_id)
        if row is None:
            return None
        return PaymentJobRow(order_id, row["state"], row["retries"], row["next_attempt_at"], row["lease_until"],
                             row["published_at"])

    def set_due(self, order_id: str, *, due_at: datetime, now: datetime) -> None:
        row = self._d.payment_jobs.get(order_id)
        if row is not None and row["state"] == "pending":
            row.update(next_attempt_at=due_at, published_at=None)

    def close(self, order_id: str, *, now: datetime) -> None:
        row = self._d.payment_jobs.get(order_id)
        if row is not None:
            row.update(state="done", lease_until=None, claim_token=None)

    def claim(self, order_id: str, *, now: datetime, lease_until: datetime, token: str) -> ClaimedJob | None:
        row = self._d.payment_jobs.get(order_id)
        if row is None or row["state"] != "pending" or row["next_attempt_at"] > now:
            return None
        row.update(state="running", lease_until=lease_until, claim_token=token)
        order = self._d.orders[order_id]
        return ClaimedJob(order_id, row["retries"], token, order_status=str(order.status),
                          customer_id=order.customer_id, total=order.total, currency=order.currency,
                          ledger_first=row["ledger_first"])

    def _mine(self, job: ClaimedJob) -> dict[str, Any] | None:
        row = self._d.payment_jobs.get(job.order_id)
        return row if row is not None and row["claim_token"] == job.claim_token else None

    def hold_claim(self, job: ClaimedJob, *, now: datetime) -> bool:
        return self._mine(job) is not None

    def finish(self, job: ClaimedJob, *, state: str, now: datetime) -> bool:
        row = self._mine(job)
        if row is None:
            return False
        row.update(state=state, lease_until=None, claim_token=None)
        return True

    def reschedule(self, job: ClaimedJob, *, due_at: datetime, retries: int, now: datetime,
                   ledger_first: bool = False) -> bool:
        row = self._mine(job)
        if row is None:
            return False
        row.update(state="pending", retries=retries, next_attempt_at=due_at, lease_until=None, claim_token=None,
                   published_at=None, ledger_first=ledger_first)
        return True

    def settle(self, job: ClaimedJob, settlement: Settlement) -> tuple[bool, int | None]:
        orders = MemoryOrders(self._d)
        orders.record_attempts(job.order_id, settlement.attempts, now=settlement.now)
        moved = orders.move(job.order_id, from_status=OrderStatus.PAYMENT_PENDING, to_status=settlement.to_status,
                            now=settlement.now, payment_id=settlement.payment_id,
                            failure_reason=settlement.failure_reason)
        self.finish(job, state="done", now=settlement.now)
        notification = None
        if moved and settlement.notification_kind is not None:
            notification = MemoryNotificationJobs(self._d).add(
                job.order_id, settlement.notification_kind, now=settlement.now,
                claimed_until=settlement.notification_claimed_until)
        return moved, notification

    def restart(self, order_id: str, *, now: datetime) -> bool:
        row = self._d.payment_jobs.get(order_id)
        if row is None:
            return False
        row.update(state="pending", retries=0, next_attempt_at=now, lease_until=None, claim_token=None,
                   published_at=None, ledger_first=True)
        return True

    def reclaim_expired(self, *, now: datetime) -> int:
        count = 0
        for row in self._d.payment_jobs.values():
            if row["state"] == "running" and row["lease_until"] is not None and row["lease_until"] < now:
                row.update(state="pending", retries=row["retries"] + 1, next_attempt_at=now, lease_until=None,
                           claim_token=None, published_at=None)
                count += 1
        return count

    def count_open(self) -> int:
        return sum(1 for row in self._d.payment_jobs.values() if row["state"] in ("pending", "running"))


class MemoryNotificationJobs(_MemoryOutboxTable):
    _table = "notification_jobs"

    def add(self, order_id: str, kind: str, *, now: datetime, claimed_until: datetime | None = None) -> int | None:
        if any(r["order_id"] == order_id and r["kind"] == kind for r in self._d.notification_jobs.values()):
            return None
        job_id = self._d.next_id("notification")
        self._d.notification_jobs[job_id] = {
            "order_id": order_id, "kind": kind, "state": "pending" if claimed_until is None else "running",
            "attempts": 0, "next_attempt_at": now, "lease_until": claimed_until, "published_at": None}
        return job_id

    def claim(self, job_id: int, *, now: datetime, lease_until: datetime) -> ClaimedNotification | None:
        row = self._d.notification_jobs.get(job_id)
        if row is None or row["state"] != "pending" or row["next_attempt_at"] > now:
            return None
        row.update(state="running", lease_until=lease_until)
        return ClaimedNotification(job_id, row["order_id"], row["kind"], row["attempts"])

    def finish(self, job_ids: Sequence[int], *, state: str, attempts: int, now: datetime) -> None:
        for job_id in job_ids:
            row = self._d.notification_jobs.get(job_id)
            if row is not None and row["state"] == "running":
                row.update(state=state, attempts=attempts, lease_until=None)

    def retry(self, job_id: int, *, attempts: int, due_at: datetime, now: datetime) -> None:
        row = self._d.notification_jobs.get(job_id)
        if row is not None and row["state"] == "running":
            row.update(state="pending", attempts=attempts, next_attempt_at=due_at, lease_until=None,
                       published_at=None)

    def state_of(self, order_id: str, kind: str) -> str | None:
        for row in self._d.notification_jobs.values():
            if row["order_id"] == order_id and row["kind"] == kind:
                return str(row["state"])
        return None

    def reclaim_expired(self, *, now: datetime) -> int:
        count = 0
        for row in self._d.notification_jobs.values():
            if row["state"] == "running" and row["lease_until"] is not None and row["lease_until"] < now:
                row.update(state="pending", next_attempt_at=now, lease_until=None, published_at=None)
                count += 1
        return count


class MemoryOutbox:
    def __init__(self, data: _Data) -> None:
        self.payments = MemoryPaymentJobs(data)
        self.notifications = MemoryNotificationJobs(data)
        self.payment_relay = self.payments
        self.notification_relay = self.notifications


class MemoryDeadLetters(_Repo):
    def add(self, order_id: str, *, history: Sequence[dict[str, Any]], last_error: str | None,
            now: datetime) -> int:
        letter_id = self._d.next_id("dead_letter")
        self._d.dead_letters[letter_id] = DeadLetter(letter_id, order_id, len(history), last_error, list(history),
                                                     now, None)
        return letter_id

    def get(self, dead_letter_id: int) -> DeadLetter | None:
        return self._d.dead_letters.get(dead_letter_id)

    def latest(self, *, limit: int = 500) -> list[DeadLetter]:
        letters = sorted(self._d.dead_letters.values(), key=lambda d: (d.dead_lettered_at, d.id), reverse=True)
        return letters[:limit]

    def mark_replayed(self, dead_letter_id: int, *, now: datetime) -> bool:
        letter = self._d.dead_letters.get(dead_letter_id)
        if letter is None or letter.replayed_at is not None:
            return False
        self._d.dead_letters[dead_letter_id] = replace(letter, replayed_at=now)
        return True

    def count_unreplayed(self) -> int:
        return sum(1 for d in self._d.dead_letters.values() if d.replayed_at is None)


class MemoryFlags(_Repo):
    def all(self) -> list[Flag]:
        return [self._d.flags[name] for name in sorted(self._d.flags)]

    def set(self, name: str, *, enabled: bool, by: str, now: datetime) -> Flag | None:
        flag = self._d.flags.get(name)
        if flag is None:
            return None
        self._d.flags[name] = flag = replace(flag, enabled=enabled, updated_by=by, updated_at=now)
        return flag


class MemoryIdempotencyKeys(_Repo):
    def claim(self, key: str, fingerprint: str, *, now: datetime, lock_for: timedelta, keep_for: timedelta,
              token: str) -> KeyClaim:
        row = self._d.keys.get(key)
        if row is not None and row["expires_at"] <= now:
            del self._d.keys[key]
            row = None
        if row is None:
            self._d.keys[key] = {"fingerprint": fingerprint, "state": "running", "locked_until": now + lock_for,
                                 "expires_at": now + keep_for, "claim_token": token, "order_id": None,
                                 "response": None}
            return KeyClaim("claimed", token=token)
        if row["fingerprint"] != fingerprint:
            return KeyClaim("mismatch")
        if row["state"] == "done":
            return KeyClaim("replay", row["response"])
        if row["locked_until"] > now:
            return KeyClaim("in_use")
        if row["order_id"] is not None:
            return KeyClaim("bound", order_id=row["order_id"])
        row.update(locked_until=now + lock_for, claim_token=token)
        return KeyClaim("claimed", token=token)

    def bind(self, key: str, token: str, order_id: str) -> bool:
        row = self._d.keys.get(key)
        if row is None or row["claim_token"] != token or row["order_id"] is not None:
            return False
        row["order_id"] = order_id
        return True

    def complete(self, key: str, token: str, response: StoredResponse) -> None:
        row = self._d.keys.get(key)
        if row is not None and row["claim_token"] == token and row["state"] == "running":
            row.update(state="done", response=response)

    def release(self, key: str, token: str, *, now: datetime) -> None:
        row = self._d.keys.get(key)
        if row is None or row["claim_token"] != token or row["state"] != "running":
            return
        if row["order_id"] is None:
            del self._d.keys[key]
        else:
            row["locked_until"] = now

    def purge_expired(self, *, now: datetime, limit: int) -> int:
        expired = sorted((row["expires_at"], key) for key, row in self._d.keys.items() if row["expires_at"] <= now)
        expired = [key for _, key in expired[:limit]]
        for key in expired:
            del self._d.keys[key]
        return len(expired)


class MemoryUnitOfWork:
    def __init__(self, store: MemoryStore, publish: Publish, *, read_only: bool) -> None:
        self._store = store
        self._publish = publish
        self._read_only = read_only
        self._messages: list[Any] = []
        self._committed = False
        self._locked = False

    def __enter__(self) -> MemoryUnitOfWork:
        if self._store.down:
            raise StorageError("the store is down")
        if not self._read_only:
            self._store.lock.acquire()
            self._locked = True
        self._data = copy.deepcopy(self._store.data)
        self.catalog = MemoryCatalog(self._data)
        self.orders = MemoryOrders(self._data)
        self.outbox = MemoryOutbox(self._data)
        self.dead_letters = MemoryDeadLetters(self._data)
        self.flags = MemoryFlags(self._data)
        self.idempotency = MemoryIdempotencyKeys(self._data)
        return self

    def commit(self) -> None:
        if self._read_only:
            return
        failure, self._store.fail_next_commit = self._store.fail_next_commit, None
        if failure == "before":
            raise CommitOutcomeUnknown("the commit never reached the store")
        self._store.data = self._data
        self._committed = True
        if failure == "after":
            raise CommitOutcomeUnknown("the commit's answer was lost")

    def publish(self, message: Any) -> None:
        self._messages.append(message)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._locked:
            self._locked = False
            self._store.lock.release()
        if exc is None and self._committed:
            for message in self._messages:
                self._publish(message)


class MemoryUnitOfWorkFactory:
    """Implements `UnitOfWorkFactory` over a `MemoryStore`; `published` keeps what committed units sent."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self.published: list[Any] = []

    def __call__(self, *, read_only: bool = False, wait: float | None = None,
                 single_statement: bool = False) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self.store, self.published.append, read_only=read_only)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        yield


def new_order(order_id: str, *, now: datetime, customer_id: int = 1) -> Order:
    from app.domain import PENDING_MESSAGE, InventorySource, OrderLine

    return Order(id=order_id, customer_id=customer_id, status=OrderStatus.PAYMENT_PENDING, currency="USD",
                 lines=(OrderLine(1, 2, Decimal("12.50")),), payment=Payment(),
                 inventory_source=InventorySource.LIVE, created_at=now, updated_at=now, message=PENDING_MESSAGE)
