"""Small synthetic runs for the checker's and the report's tests: a clean one, and pieces to break it with."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from campaign.history import Attempt, Intent, Replay
from campaign.snapshot import DeadLetterRow, JobRow, OrderRow, Snapshot

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
WALL0 = T0.timestamp()
DEADLINE = 10.0

VALID = Intent("k-valid", 0, "valid", {"customer_id": 1_000_001, "lines": [{"product_id": 3, "quantity": 2}]}, 0.0,
               duplicate="after")
DECLINED = Intent("k-declined", 0, "declined",
                  {"customer_id": 402, "lines": [{"product_id": 1, "quantity": 1}, {"product_id": 2, "quantity": 7}]},
                  1.0)
NO_STOCK = Intent("k-stock", 1, "out_of_stock",
                  {"customer_id": 1_100_002, "lines": [{"product_id": 13, "quantity": 1}]}, 2.0)


def attempt(key: str, status: int | None, *, n: int = 0, sent: float = 0.0, elapsed: float = 0.2,
            body: Any = None, location: str | None = None, error: str | None = None, replayed: bool = False,
            copy: str = "") -> Attempt:
    return Attempt(key, 0, n, sent, elapsed, WALL0 + sent, status, body, location, replayed=replayed, error=error,
                   copy=copy)


def replay(dead_letter: int, order_id: str, status: int | None, *, sent: float = 30.0, body: Any = None,
           error: str | None = None) -> Replay:
    return Replay(dead_letter, order_id, "#9", sent, WALL0 + sent, 0.1, status, body, error)


def letter(letter_id: int, order_id: str, *, written: float = 20.0, replayed: float | None = None) -> DeadLetterRow:
    """A dead letter written `written` seconds into the run, replayed at `replayed` if given."""
    return DeadLetterRow(letter_id, order_id, 3, "HTTP 503",
                         T0 + timedelta(seconds=replayed) if replayed is not None else None,
                         T0 + timedelta(seconds=written))


def order(order_id: str, intent: Intent, status: str, *, failure_reason: str | None = None,
          created: float = 0.1) -> OrderRow:
    lines = tuple((ln["product_id"], ln["quantity"]) for ln in intent.body["lines"])
    return OrderRow(order_id, intent.body["customer_id"], status, lines, failure_reason=failure_reason,
                    created_at=T0 + timedelta(seconds=created), updated_at=T0 + timedelta(seconds=created))


def capture(order_id: str, number: int = 1, *, at: float = 3.0) -> dict[str, Any]:
    """A capture `at` seconds into the run."""
    return {"id": f"pay_{order_id}_{number}", "order_id": order_id, "amount": "10.00",
            "idempotency_key": f"order-{order_id}-payment", "status": "captured",
            "captured_at": (T0 + timedelta(seconds=at)).isoformat()}


def clean_run() -> dict[str, Any]:
    """A valid order confirmed (after one retried 503) and sent again after its answer (which replays it), one
    declined, one out of stock: nothing wrong."""
    return {
        "intents": [VALID, DECLINED, NO_STOCK],
        "attempts": [
            attempt("k-valid", 503, body={"type": "/problems/database-unavailable", "status": 503}, elapsed=2.0),
            attempt("k-valid", 201, n=1, sent=2.5, body={"id": "o1", "status": "Confirmed"},
                    location="/api/orders/o1"),
            attempt("k-valid", 201, sent=3.0, body={"id": "o1", "status": "Confirmed"},
                    location="/api/orders/o1", replayed=True, copy="after"),
            attempt("k-declined", 402, sent=1.0, body={"type": "/problems/payment-declined", "order_id": "o2"},
                    location="/api/orders/o2"),
            attempt("k-stock", 422, sent=2.0, body={"type": "/problems/out-of-stock"}),
        ],
        "snapshot": Snapshot(
            taken_at=T0 + timedelta(minutes=5),
            orders={
                "o1": order("o1", VALID, "Confirmed", created=2.6),
                "o2": order("o2", DECLINED, "PaymentFailed", failure_reason="declined", created=1.1),
            },
            jobs=(JobRow("o1", "done"), JobRow("o2", "done")),
        ),
        "ledger": [capture("o1")],
        "circuits": [{"name": "payment", "state": "closed"}, {"name": "inventory", "state": "closed"}],
        "request_deadline": DEADLINE,
        "replays": [],
        "ledger_outages": [],
    }


def with_orders(run: dict[str, Any], *orders: OrderRow, **changes: Any) -> dict[str, Any]:
    snapshot = run["snapshot"]
    return {**run, "snapshot": replace(snapshot, orders={**snapshot.orders, **{o.id: o for o in orders}}, **changes)}
