"""What the services need from the outside world, as protocols; the adapters implement them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.adapters.repository import AttemptRecord
from app.domain import InventorySource


@dataclass(frozen=True)
class StockLevel:
    available: int | None  # None: nobody could say
    source: InventorySource


class InventoryChecker(Protocol):
    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]: ...


@dataclass(frozen=True)
class CaptureResult:
    """How one payment call ended, with every HTTP attempt it made."""

    outcome: str  # captured | declined | rejected | failed | not_attempted
    payment_id: str | None = None
    attempts: tuple[AttemptRecord, ...] = field(default_factory=tuple)
    error: str | None = None
    http_status: int | None = None


class PaymentGateway(Protocol):
    def circuit_allows_calls(self) -> bool: ...

    def capture(
        self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float, source: str
    ) -> CaptureResult: ...


class FlagReader(Protocol):
    def is_enabled(self, name: str) -> bool: ...


class JobPublisher(Protocol):
    """Hands a due job to the workers at once; best effort, the outbox relay covers any miss."""

    def payment_due(self, order_id: str) -> None: ...
