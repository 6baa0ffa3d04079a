"""What the database holds at the end of a run, as plain values (the checker's second witness)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .history import signature


@dataclass(frozen=True)
class OrderRow:
    id: str
    customer_id: int
    status: str
    lines: tuple[tuple[int, int], ...]  # (product_id, quantity) in line order
    failure_reason: str | None = None
    payment_id: str | None = None
    payment_attempts: int = 0
    total: str = "0.00"
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def signature(self) -> tuple[int, tuple[tuple[int, int], ...]]:
        return signature(self.customer_id, list(self.lines))


@dataclass(frozen=True)
class JobRow:
    order_id: str
    state: str  # pending | running | done | dead
    retries: int = 0
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None


@dataclass(frozen=True)
class DeadLetterRow:
    id: int
    order_id: str
    attempts: int = 0
    last_error: str | None = None
    replayed_at: datetime | None = None
    dead_lettered_at: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    orders: dict[str, OrderRow] = field(default_factory=dict)
    jobs: tuple[JobRow, ...] = ()
    dead_letters: tuple[DeadLetterRow, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "orders": [_jsonable(asdict(o)) for o in self.orders.values()],
            "jobs": [_jsonable(asdict(j)) for j in self.jobs],
            "dead_letters": [_jsonable(asdict(d)) for d in self.dead_letters],
        }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def row_json(row: OrderRow | JobRow | DeadLetterRow) -> dict[str, Any]:
    return _jsonable(asdict(row))
