"""Placing an order: the degrade-or-confirm decision."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.domain import (
    PENDING_MESSAGE,
    FailureReason,
    InventorySource,
    Order,
    OrderLine,
    OrderStatus,
    OutOfStock,
    Payment,
    PaymentDeclined,
    Product,
    StockRequest,
    UnknownProduct,
    money,
    worst_source,
)
from app.services.idempotency import KeyBinding, KeyLost
from app.services.ports import CaptureResult, FlagReader, InventoryChecker, PaymentGateway
from app.services.unit_of_work import CommitOutcomeUnknown, PaymentDue, StorageError, UnitOfWorkFactory

log = logging.getLogger("orderflow.ordering")

REAL_TIME_PAYMENTS = "RealTimePayments"
NOTIFICATIONS = "Notifications"
ORDER_CONFIRMED = "order_confirmed"

# What the request still does once the payment call returns: the attempts' transaction (attempts, order
# status, job, notification, the order read back), then the idempotent response's own transaction and the
# rendering. The payment call ends this much before the request's bound so that work fits inside it too.
# In the degraded benchmark (16 connections with payment hanging, 2 cores shared with PostgreSQL, Redis,
# wrk and the workers) the slowest request ended 120-170 ms after the payment call's end, 310 ms with a load
# average of 9; 0.5 s keeps a margin over that and still leaves a retry 2.3 s of the 8 s total_timeout.
PAYMENT_RESERVE = 0.5
# ... but never more than this share of the bound, so a tight policy (a 1 s total_timeout, say) still leaves its
# attempts the time they were given.
PAYMENT_RESERVE_SHARE = 0.1
# Prices are read from a per-process copy of the catalog at most this old. The catalog changes only with a
# migration or an operator's SQL, while reading it costs every order a pooled checkout (with its ping) and a
# transaction: about a tenth of the API's CPU on the fast path of an open payment circuit.
CATALOG_SECONDS = 5.0
# A payment call with less time than this left is not started: it could only end in a timeout, and a timeout
# counts as a failure against the payment circuit. The order stays PaymentPending, as after any timeout.
MIN_PAYMENT_WINDOW = 0.1


@dataclass(frozen=True)
class PlaceOrder:
    customer_id: int
    lines: tuple[tuple[int, int], ...]
    currency: str = "USD"


class OrderMayBeStored(Exception):
    """The database failed while committing the order: it may have been stored, and no one can tell yet."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} may have been stored")
        self.order_id = order_id


class CatalogCache:
    """Products by id, read through a per-process copy that is at most `ttl` old; unknown ids are always
    looked up, and never remembered, so a product added to the catalog is seen at once."""

    def __init__(self, uow: UnitOfWorkFactory, *, ttl: float, monotonic: Callable[[], float]) -> None:
        self._uow = uow
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._products: dict[int, Product] = {}
        self._since = float("-inf")

    def products(self, ids: Iterable[int]) -> dict[int, Product]:
        wanted = set(ids)
        now = self._monotonic()
        with self._lock:
            if now - self._since >= self._ttl:
                self._products, self._since = {}, now
            known, since = self._products, self._since
        missing = [pid for pid in wanted if pid not in known]
        if missing:
            with self._uow(read_only=True) as uow:
                found = uow.catalog.products_by_id(missing)
            with self._lock:
                if self._since == since:  # not started over meanwhile: what was read is as fresh
                    self._products = known = {**self._products, **found}
                else:
                    known = {**known, **found}
        return {pid: known[pid] for pid in wanted if pid in known}


@dataclass
class OrderPlacement:
    """Everything place_order needs, built once per process by the composition root."""

    uow: UnitOfWorkFactory
    inventory: InventoryChecker
    payments: PaymentGateway
    flags: FlagReader
    request_deadline: float
    inventory_total_timeout: float
    monotonic: Callable[[], float]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    on_order_created: Callable[[Order], None] = lambda order: None
    # The payment's total_timeout bounds the whole request when it is the shorter bound, not only the call.
    payment_total_timeout: float | None = None
    payment_reserve: float = PAYMENT_RESERVE
    payment_reserve_share: float = PAYMENT_RESERVE_SHARE
    catalog_ttl: float = CATALOG_SECONDS
    _catalog: CatalogCache | None = field(default=None, init=False, repr=False)

    @property
    def catalog(self) -> CatalogCache:
        if self._catalog is None:
            self._catalog = CatalogCache(self.uow, ttl=self.catalog_ttl, monotonic=self.monotonic)
        return self._catalog

    def payment_deadline(self, started: float) -> float:
        """When the real-time payment call must end for the request to answer within its bound.

        The bound is the earlier of the request deadline and the payment total_timeout, both counted from
        the request's start, so the order's own work before the call (catalog, stock, the INSERT) is paid
        out of the call's time, and a reserve (`payment_reserve`, at most `payment_reserve_share` of the
        bound) is kept for the work after it.
        """
        bound = self.request_deadline
        if self.payment_total_timeout is not None:
            bound = min(bound, self.payment_total_timeout)
        return started + bound - min(self.payment_reserve, bound * self.payment_reserve_share)

    def place(
        self, command: PlaceOrder, *, started: float | None = None, binding: KeyBinding | None = None
    ) -> Order:
        started = self.monotonic() if started is None else started
        deadline = started + self.request_deadline
        payment_deadline = self.payment_deadline(started)

        catalog = self.catalog.products(pid for pid, _ in command.lines)
        unknown = sorted({pid for pid, _ in command.lines if pid not in catalog})
        if unknown:
            raise UnknownProduct(unknown)

        stock = StockRequest.of(list(command.lines))
        levels = self.inventory.levels(
            stock.quantities, deadline=min(deadline, self.monotonic() + self.inventory_total_timeout)
        )
        shortages = {
            pid: (wanted, level.available)
            for pid, wanted in stock.quantities.items()
            if (level := levels.get(pid)) is not None and level.available is not None and level.available < wanted
        }
        if shortages:
            raise OutOfStock(shortages)
        source = worst_source(
            [levels[pid].source if pid in levels else InventorySource.UNAVAILABLE for pid in stock.quantities]
        )

        # Cheapest test first: the flag is cached in-process, the circuit state is a Redis round trip.
        break_until = None
        real_time = self.flags.is_enabled(REAL_TIME_PAYMENTS) and self._payment_fits(payment_deadline)
        if real_time:
            break_until = self.payments.circuit_break_until()
            real_time = break_until is None
        now = self.now()
        order = Order(
            id=uuid.uuid4().hex,
            customer_id=command.customer_id,
            status=OrderStatus.PAYMENT_PENDING,
            currency=command.currency,
            lines=tuple(OrderLine(pid, qty, catalog[pid].unit_price) for pid, qty in command.lines),
            payment=Payment(),
            inventory_source=source,
            created_at=now,
            updated_at=now,
            message=PENDING_MESSAGE,
        )
        # Stored before any payment call: a crash after a capture can never leave a charge without an order.
        # The job is not due until the request deadline has passed, so no worker races the real-time attempt.
        # With the circuit open it is due when the break ends: a worker could only defer it until then, and
        # handing it over now (a broker message, a claim, a deferral) would cost every order of an outage
        # that much more work while the API has to answer fast.
        if real_time:
            job_due = now + timedelta(seconds=self.request_deadline)
        elif break_until is not None:
            job_due = max(now, datetime.fromtimestamp(break_until, UTC))
        else:
            job_due = now
        # Whenever the job is due now, the workers hear of it at once (after the commit; the relay otherwise).
        # Storing waits for a busy database (a queue of writers) no longer than the request deadline allows.
        self._store(order, job_due, binding, hint=not real_time and break_until is None,
                    wait=deadline - self.monotonic())
        self.on_order_created(order)
        # From here on the order is stored: no failure may answer as if nothing was. Whatever goes wrong, the
        # order is answered PaymentPending, and its job (already in the outbox) finishes the payment.
        try:
            if not real_time:
                return order
            return self._pay_in_real_time(order, payment_deadline, finish_by=deadline)
        except PaymentDeclined:
            raise
        except Exception:
            log.exception("order stored, its placement failed after; the job finishes the payment",
                          extra={"event": "placement_failed_after_store", "order_id": order.id})
            return order

    def _store(self, order: Order, job_due: datetime, binding: KeyBinding | None, *, hint: bool,
               wait: float | None = None) -> None:
        """The order, its payment job and (with a key) the key's binding, in one transaction.

        A failure before the COMMIT stored nothing and is raised as it is (the request may say so). A failed
        COMMIT may have stored the order: it is read back; found, the placement goes on; not found, nothing
        was stored; unreadable, OrderMayBeStored names the order for the client to look up."""
        try:
            with self.uow(wait=wait) as uow:
                if binding is not None and not uow.idempotency.bind(binding.key, binding.token, order.id):
                    raise KeyLost()
                uow.orders.add(order)
                uow.outbox.payments.add(order.id, due_at=job_due, now=order.created_at)
                if hint:
                    uow.publish(PaymentDue(order.id))
                uow.commit()
        except CommitOutcomeUnknown as unknown:
            try:
                with self.uow(read_only=True) as uow:
                    stored = uow.orders.exists(order.id)
            except Exception:
                raise OrderMayBeStored(order.id) from unknown
            if not stored:
                raise StorageError(str(unknown)) from unknown
            log.warning("the order's COMMIT failed but the order was stored",
                        extra={"event": "commit_outcome_found", "order_id": order.id})

    def _payment_fits(self, payment_deadline: float) -> bool:
        return payment_deadline - self.monotonic() >= MIN_PAYMENT_WINDOW

    def _pay_in_real_time(self, order: Order, deadline: float, *, finish_by: float) -> Order:
        if self._payment_fits(deadline):
            result = self.payments.capture(
                order_id=order.id,
                customer_id=order.customer_id,
                amount=money(order.total),
                currency=order.currency,
                deadline=deadline,
                source="api",
            )
        else:  # the INSERT ate the time left: no call, the job is due now, as after a timeout
            result = CaptureResult("not_attempted", error="no time left for a real-time payment")
        now = self.now()
        try:
            # A stalled database may keep this transaction only until the request deadline: the answer must
            # not wait past it (the job settles what could not be written).
            return self._record_payment(order, result, now, wait=finish_by - self.monotonic())
        except StorageError:
            # The call's outcome could not be written: the order stays PaymentPending with its job due at the
            # request deadline, and the job settles it (a capture made here is found again under the same key).
            log.warning("real-time payment outcome not recorded; the job settles the order", exc_info=True,
                        extra={"event": "payment_outcome_unrecorded", "order_id": order.id,
                               "outcome": result.outcome})
            return order

    def _record_payment(self, order: Order, result: CaptureResult, now: datetime, *, wait: float) -> Order:
        """The call's outcome on the order, in one write transaction. When the order moves, it is what this
        request wrote (no read back under the write lock); otherwise it is read as it is now."""
        stored: Order | None = None
        with self.uow(wait=wait) as uow:
            attempts = uow.orders.record_attempts(order.id, result.attempts, now=now)
            if attempts is not None:
                order = order.with_attempts(attempts, now=now)
            if result.outcome == "captured":
                if uow.orders.move(order.id, from_status=OrderStatus.PAYMENT_PENDING,
                                   to_status=OrderStatus.CONFIRMED, now=now, payment_id=result.payment_id):
                    uow.outbox.payments.close(order.id, now=now)
                    uow.outbox.notifications.add(order.id, ORDER_CONFIRMED, now=now)
                    stored = order.moved(OrderStatus.CONFIRMED, now=now, payment_id=result.payment_id)
            elif result.outcome == "declined":
                if uow.orders.move(order.id, from_status=OrderStatus.PAYMENT_PENDING,
                                   to_status=OrderStatus.PAYMENT_FAILED, now=now,
                                   failure_reason=FailureReason.DECLINED):
                    uow.outbox.payments.close(order.id, now=now)
                    stored = order.moved(OrderStatus.PAYMENT_FAILED, now=now, failure_reason=FailureReason.DECLINED)
            else:
                uow.outbox.payments.set_due(order.id, due_at=now, now=now)
                uow.publish(PaymentDue(order.id))
            if stored is None:
                stored = uow.orders.get(order.id)
            uow.commit()
        assert stored is not None
        if result.outcome == "declined":
            raise PaymentDeclined(stored)
        return stored


def get_order(uow: UnitOfWorkFactory, order_id: str) -> Order | None:
    with uow(read_only=True) as unit:
        return unit.orders.get(order_id)


def list_orders(uow: UnitOfWorkFactory, *, status: OrderStatus | None, limit: int) -> list[Order]:
    with uow(read_only=True) as unit:
        return unit.orders.latest(status=status, limit=limit)


def order_counts(uow: UnitOfWorkFactory) -> dict[str, int]:
    """Orders by status, every status named (0 when none)."""
    with uow(read_only=True) as unit:
        return unit.orders.count_by_status()


def products(uow: UnitOfWorkFactory) -> list[Product]:
    with uow(read_only=True) as unit:
        return unit.catalog.products()


def known_products(uow: UnitOfWorkFactory, ids: Iterable[int]) -> set[int]:
    with uow(read_only=True) as unit:
        return set(unit.catalog.products_by_id(ids))
