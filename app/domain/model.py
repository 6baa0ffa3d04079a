"""Orders and their payment state: pure data and rules, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any


class OrderStatus(enum.StrEnum):
    PAYMENT_PENDING = "PaymentPending"
    CONFIRMED = "Confirmed"
    PAYMENT_FAILED = "PaymentFailed"


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    FAILED = "failed"


class FailureReason(enum.StrEnum):
    DECLINED = "declined"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"


class InventorySource(enum.StrEnum):
    LIVE = "live"
    CACHE = "cache"
    UNAVAILABLE = "unavailable"


# The only moves an order may make. Confirmed is final: a captured payment is never undone here.
ALLOWED_TRANSITIONS: frozenset[tuple[OrderStatus, OrderStatus]] = frozenset(
    {
        (OrderStatus.PAYMENT_PENDING, OrderStatus.CONFIRMED),
        (OrderStatus.PAYMENT_PENDING, OrderStatus.PAYMENT_FAILED),
        (OrderStatus.PAYMENT_FAILED, OrderStatus.PAYMENT_PENDING),
    }
)


class InvalidTransition(Exception):
    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"an order cannot move from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return (current, target) in ALLOWED_TRANSITIONS


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(current, target)


# Which payment state goes with each order state; the two always change together.
PAYMENT_STATUS_FOR: dict[OrderStatus, PaymentStatus] = {
    OrderStatus.PAYMENT_PENDING: PaymentStatus.PENDING,
    OrderStatus.CONFIRMED: PaymentStatus.CAPTURED,
    OrderStatus.PAYMENT_FAILED: PaymentStatus.FAILED,
}

PENDING_MESSAGE = "Order created. Payment will be processed shortly."

CENTS = Decimal("0.01")


def money(value: Decimal) -> str:
    return str(value.quantize(CENTS))


@dataclass(frozen=True)
class OrderLine:
    product_id: int
    quantity: int
    unit_price: Decimal

    @property
    def line_total(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENTS)


@dataclass(frozen=True)
class Payment:
    status: PaymentStatus = PaymentStatus.PENDING
    attempts: int = 0
    payment_id: str | None = None
    failure_reason: FailureReason | None = None


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: int
    status: OrderStatus
    currency: str
    lines: tuple[OrderLine, ...]
    payment: Payment
    inventory_source: InventorySource
    created_at: datetime
    updated_at: datetime
    message: str | None = None

    def moved(self, to_status: OrderStatus, *, now: datetime, payment_id: str | None = None,
              failure_reason: FailureReason | None = None, message: str | None = None) -> Order:
        """The order as a move to `to_status` leaves it (what the orders repository's `move` stores)."""
        check_transition(self.status, to_status)
        return replace(self, status=to_status, message=message, updated_at=now,
                       payment=replace(self.payment, status=PAYMENT_STATUS_FOR[to_status], payment_id=payment_id,
                                       failure_reason=failure_reason))

    def with_attempts(self, attempts: int, *, now: datetime) -> Order:
        return replace(self, updated_at=now, payment=replace(self.payment, attempts=attempts))

    @property
    def total(self) -> Decimal:
        return sum((line.line_total for line in self.lines), Decimal("0")).quantize(CENTS)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "status": str(self.status),
            "currency": self.currency,
            "lines": [
                {
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_price": money(line.unit_price),
                    "line_total": money(line.line_total),
                }
                for line in self.lines
            ],
            "total": money(self.total),
            "payment": {
                "status": str(self.payment.status),
                "attempts": self.payment.attempts,
                "payment_id": self.payment.payment_id,
                "failure_reason": str(self.payment.failure_reason) if self.payment.failure_reason else None,
            },
            "inventory_source": str(self.inventory_source),
            "message": self.message,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _iso_or_none(moment: datetime | None) -> str | None:
    return _iso(moment) if moment is not None else None


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    unit_price: Decimal


@dataclass(frozen=True)
class AttemptRecord:
    """One HTTP call made to the payment service for an order, by the API or a worker."""

    source: str  # "api" | "worker"
    started_at: datetime
    duration_ms: int
    outcome: str
    http_status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "started_at": self.started_at.isoformat(),
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "error": self.error,
        }


@dataclass(frozen=True)
class DeadLetter:
    """A payment the workers gave up on, with the attempts of the run that failed."""

    id: int
    order_id: str
    attempts: int
    last_error: str | None
    history: list[dict[str, Any]]
    dead_lettered_at: datetime
    replayed_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "dead_lettered_at": _iso(self.dead_lettered_at),
            "replayed_at": _iso_or_none(self.replayed_at),
        }


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool
    description: str
    updated_at: datetime
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "description": self.description,
            "updated_at": _iso(self.updated_at),
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class StockRequest:
    """Quantities summed per distinct product: stock is checked per product, never per line."""

    quantities: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, lines: list[tuple[int, int]]) -> StockRequest:
        summed: dict[int, int] = {}
        for product_id, quantity in lines:
            summed[product_id] = summed.get(product_id, 0) + quantity
        return cls(summed)


def worst_source(sources: list[InventorySource]) -> InventorySource:
    """The order reports the least trustworthy source any of its products was checked with."""
    rank = {InventorySource.LIVE: 0, InventorySource.CACHE: 1, InventorySource.UNAVAILABLE: 2}
    return max(sources, key=rank.__getitem__, default=InventorySource.LIVE)


def payment_key(order_id: str) -> str:
    """The payment service's idempotency key: derived from the order, never from the client's header."""
    return f"order-{order_id}-payment"


class DomainError(Exception):
    """A business rule said no; the API maps each subclass to a problem type."""


class UnknownProduct(DomainError):
    def __init__(self, product_ids: list[int]) -> None:
        super().__init__(f"unknown product(s): {', '.join(map(str, product_ids))}")
        self.product_ids = product_ids


class OutOfStock(DomainError):
    def __init__(self, shortages: dict[int, tuple[int, int]]) -> None:
        detail = ", ".join(f"product {pid}: requested {req}, available {avail}"
                           for pid, (req, avail) in sorted(shortages.items()))
        super().__init__(f"not enough stock: {detail}")
        self.shortages = shortages


class PaymentDeclined(DomainError):
    def __init__(self, order: Order) -> None:
        super().__init__("the payment was declined")
        self.order = order
