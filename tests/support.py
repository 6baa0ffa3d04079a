"""Helpers shared by the test layers: a migrated database of the test's own, fakes of the dependencies."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from app.adapters.migrate import scratch_schema, upgrade
from app.domain import InventorySource
from app.services.ports import CaptureResult, StockLevel


@dataclass(frozen=True)
class DatabaseHandle:
    url: str
    schema: str | None

    def env(self) -> dict[str, str]:
        env = {"DATABASE_URL": self.url}
        if self.schema:
            env["DATABASE_SCHEMA"] = self.schema
        return env


@contextmanager
def fresh_database() -> Iterator[DatabaseHandle]:
    """PostgreSQL when DATABASE_URL is set (a schema of this test's own), otherwise a SQLite file."""
    url = os.environ.get("DATABASE_URL")
    if url and not url.startswith("sqlite"):
        with scratch_schema(url, prefix="t_") as schema:
            yield DatabaseHandle(url, schema)
        return
    with tempfile.TemporaryDirectory(prefix="orderflow-db-") as tmp:
        sqlite_url = f"sqlite:///{tmp}/orderflow.db"
        upgrade(sqlite_url)
        yield DatabaseHandle(sqlite_url, None)


class FakeInventory:
    def __init__(self, levels: Mapping[int, int] | None = None, source: InventorySource = InventorySource.LIVE):
        self.available = dict(levels or {})
        self.source = source
        self.calls: list[dict[int, int]] = []

    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]:
        self.calls.append(dict(quantities))
        if self.source is InventorySource.UNAVAILABLE:
            return {pid: StockLevel(None, InventorySource.UNAVAILABLE) for pid in quantities}
        return {pid: StockLevel(self.available.get(pid, 1000), self.source) for pid in quantities}

    def level(self, product_id: int) -> StockLevel:
        return self.levels({product_id: 1}, deadline=0)[product_id]


@dataclass
class FakePayments:
    outcome: str = "captured"
    open_circuit: bool = False
    break_until: float = 0.0  # unix time the open circuit's break ends (0: 30 s from the question)
    calls: list[str] = field(default_factory=list)

    def circuit_allows_calls(self) -> bool:
        return not self.open_circuit

    def circuit_break_until(self) -> float | None:
        import time

        if not self.open_circuit:
            return None
        return self.break_until or time.time() + 30.0

    def capture(self, *, order_id: str, customer_id: int, amount: str, currency: str, deadline: float,
                source: str) -> CaptureResult:
        from datetime import UTC, datetime

        from app.domain import AttemptRecord

        self.calls.append(order_id)
        outcome = "declined" if customer_id == 402 else self.outcome
        status = {"captured": 201, "declined": 402, "failed": 503}.get(outcome)
        attempt = AttemptRecord(source, datetime.now(UTC), 1, outcome, status, None)
        return CaptureResult(outcome, f"pay_{order_id[:8]}" if outcome == "captured" else None, (attempt,))


@dataclass
class FakePublisher:
    due: list[str] = field(default_factory=list)
    dead_letters: list[tuple[int, str]] = field(default_factory=list)

    def payment_due(self, order_id: str) -> None:
        self.due.append(order_id)

    def dead_lettered(self, dead_letter_id: int, order_id: str) -> None:
        self.dead_letters.append((dead_letter_id, order_id))


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> bool:
    """True as soon as `predicate()` is; False once `timeout` seconds passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
