"""What the services need from the outside world, as protocols; the adapters implement them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.domain import AttemptRecord, InventorySource


@dataclass(frozen=True)
class StockLevel:
    available: int | None  # None: nobody could say
    source: InventorySource


class InventoryChecker(Protocol):
    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]: ...


@dataclass(frozen=True)
class CaptureResult:
    """How one payment call ended, with every HTTP attempt it made."""

    # captured | declined | rejected (another 4xx) | failed (retryable) |
    # not_attempted (circuit open or bulkhead full: no HTTP call was made, so no retry is used up)
    outcome: str
    payment_id: str | None = None
    attempts: tuple[AttemptRecord, ...] = field(default_factory=tuple)
    error: str | None = None
    http_status: int | None = None
    retry_after: float | None = None  # the service's Retry-After, in seconds, when it sent one


class PaymentGateway(Protocol):
    def circuit_allows_calls(self) -> bool: ...

    def circuit_break_until(self) -> float | None:
        """Unix time when calls may resume if the circuit is open or isolated now, else None."""

    def capture(
        self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float, source: str
    ) -> CaptureResult: ...


class JobPaymentGateway(PaymentGateway, Protocol):
    """The workers' side of the payment service: the same shared circuit, their own attempt timeout."""

    def lookup_captures(self, order_id: str, *, deadline: float) -> list[dict[str, object]] | None:
        """Every capture the payment service's ledger holds for the order; None when it could not be asked."""


class NotificationSender(Protocol):
    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        """True when the notification service accepted it (best effort: never raises)."""


class FlagReader(Protocol):
    def is_enabled(self, name: str) -> bool: ...


class JobPublisher(Protocol):
    """Tells the workers at once of what the outbox holds; best effort, the outbox relay covers any miss."""

    def payment_due(self, order_id: str) -> None: ...

    def dead_lettered(self, dead_letter_id: int, order_id: str) -> None: ...
