"""The notification service double: accepts every notification and remembers each delivery."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from . import _fields
from ._routing import Request, Response, Simulator, route
from .faults import FaultInjector


@dataclass(frozen=True)
class Notification:
    id: str
    order_id: str | int
    kind: str
    idempotency_key: str | None
    received_at: str

    def receipt(self) -> dict[str, object]:
        return {
            "id": self.id,
            "order_id": self.order_id,
            "kind": self.kind,
            "idempotency_key": self.idempotency_key,
        }

    def log_entry(self) -> dict[str, object]:
        return {**self.receipt(), "received_at": self.received_at}


class NotificationLog:
    """Every notification received, duplicates included, so tests can count deliveries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Notification] = []

    def record(self, *, order_id: str | int, kind: str, idempotency_key: str | None) -> Notification:
        notification = Notification(
            id=f"ntf_{secrets.token_hex(12)}",
            order_id=order_id,
            kind=kind,
            idempotency_key=idempotency_key,
            received_at=datetime.now(UTC).isoformat(),
        )
        with self._lock:
            self._received.append(notification)
        return notification

    def notifications(self, *, order_id: str | None = None) -> list[Notification]:
        with self._lock:
            received = list(self._received)
        return [n for n in received if _fields.matches_order(n.order_id, order_id)]


def build(faults: FaultInjector) -> Simulator:
    log = NotificationLog()

    def send(request: Request) -> Response:
        _, injected = faults.before_work()
        if injected is not None:
            return injected
        body = request.json_object()
        notification = log.record(
            order_id=_fields.identifier(body, "order_id"),
            kind=_fields.text(body, "kind"),
            idempotency_key=request.header("Idempotency-Key"),
        )
        return Response(202, notification.receipt())

    def list_notifications(request: Request) -> Response:
        received = log.notifications(order_id=request.query_value("order_id"))
        return Response(200, {"items": [n.log_entry() for n in received]})

    return Simulator("notification", log, (route("/notifications", POST=send, GET=list_notifications),))
