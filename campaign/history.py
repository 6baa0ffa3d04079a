"""What the clients asked for and every answer they got: the checker's first witness."""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

_LOCATION = re.compile(r"/api/orders/([^/?#\s]+)$")


@dataclass(frozen=True)
class Intent:
    """One order a client wants placed, under its own Idempotency-Key, with a body no other intent has."""

    key: str
    client: int
    kind: str  # valid | declined | out_of_stock
    body: dict[str, Any]
    started: float  # seconds since the campaign started
    # Sent twice on purpose: "after" the first answer, or "concurrent" while the first request is in flight.
    duplicate: str = ""

    @property
    def signature(self) -> tuple[int, tuple[tuple[int, int], ...]]:
        """What its order looks like in the database: the customer and the lines, in order."""
        return signature(self.body["customer_id"], [(ln["product_id"], ln["quantity"]) for ln in self.body["lines"]])


def signature(customer_id: int, lines: list[tuple[int, int]]) -> tuple[int, tuple[tuple[int, int], ...]]:
    return int(customer_id), tuple((int(p), int(q)) for p, q in lines)


@dataclass(frozen=True)
class Attempt:
    """One POST /api/orders and what came back (a status and body, or the error that came instead)."""

    key: str
    client: int
    attempt: int  # 0 for the first request of the intent
    sent: float  # seconds since the campaign started
    elapsed: float
    wall: float  # unix time it was sent, to compare with the database's timestamps
    status: int | None
    body: Any = None  # parsed JSON, or text
    location: str | None = None
    replayed: bool = False
    retry_after: float | None = None
    error: str | None = None
    phase: str = "faults"  # faults | settle
    copy: str = ""  # "" for the intent's own requests; "after" or "concurrent" for those of its duplicate

    @property
    def answered_wall(self) -> float:
        return self.wall + self.elapsed

    def named_orders(self) -> set[str]:
        """Every order id this answer names: a 201 body, a problem's order_id, the Location header."""
        names: set[str] = set()
        if isinstance(self.body, dict):
            if self.status in (200, 201) and isinstance(self.body.get("id"), str):
                names.add(self.body["id"])
            order_id = self.body.get("order_id")
            if isinstance(order_id, str | int) and not isinstance(order_id, bool):
                names.add(str(order_id))
            order = self.body.get("order")
            if isinstance(order, dict) and isinstance(order.get("id"), str):
                names.add(order["id"])
        if self.location:
            match = _LOCATION.search(self.location)
            if match:
                names.add(match.group(1))
        return names

    def problem_type(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("type"), str):
            return str(self.body["type"])
        return ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Replay:
    """One POST /admin/dead-letters/{id}/replay and what came back."""

    dead_letter: int
    order_id: str
    origin: str  # the scheduled action ("#12") or "final", the replay after everything healed
    sent: float  # seconds since the campaign started
    wall: float
    elapsed: float
    status: int | None
    body: Any = None
    error: str | None = None

    def problem_type(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("type"), str):
            return str(self.body["type"])
        return ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Appended to by every client thread; read once they have all stopped."""

    intents: dict[str, Intent] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    gave_up: set[str] = field(default_factory=set)
    replays: list[Replay] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_intent(self, intent: Intent) -> None:
        with self._lock:
            self.intents[intent.key] = intent

    def add_attempt(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def add_replay(self, replay: Replay) -> None:
        with self._lock:
            self.replays.append(replay)

    def give_up(self, key: str) -> None:
        with self._lock:
            self.gave_up.add(key)

    def snapshot(self) -> tuple[list[Intent], list[Attempt]]:
        with self._lock:
            return list(self.intents.values()), list(self.attempts)

    def replayed(self) -> list[Replay]:
        with self._lock:
            return list(self.replays)

    def to_json(self) -> dict[str, Any]:
        intents, attempts = self.snapshot()
        return {
            "intents": [asdict(i) for i in intents],
            "attempts": [a.to_json() for a in attempts],
            "gave_up": sorted(self.gave_up),
            "replays": [r.to_json() for r in self.replayed()],
        }
