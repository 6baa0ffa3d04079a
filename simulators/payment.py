"""The payment service double: idempotent captures, one always-declined customer, and a ledger."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from . import _fields
from ._routing import HttpError, Request, Response, Simulator, route
from .faults import FaultInjector, injected_error

DECLINED_CUSTOMER = 402
_AMOUNT = re.compile(r"\d{1,30}(\.\d{1,30})?")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class Charge:
    order_id: str | int
    customer_id: int | str
    amount: str
    currency: str

    @property
    def declined(self) -> bool:
        return str(self.customer_id) == str(DECLINED_CUSTOMER)


@dataclass(frozen=True)
class Payment:
    id: str
    order_id: str | int
    customer_id: int | str
    amount: str
    currency: str
    idempotency_key: str
    captured_at: str

    def receipt(self) -> dict[str, object]:
        return {"id": self.id, "order_id": self.order_id, "amount": self.amount, "status": "captured"}

    def ledger_entry(self) -> dict[str, object]:
        return {
            **self.receipt(),
            "customer_id": self.customer_id,
            "currency": self.currency,
            "idempotency_key": self.idempotency_key,
            "captured_at": self.captured_at,
        }


class PaymentLedger:
    """Every capture, at most one per idempotency key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, Payment] = {}
        self._captures: list[Payment] = []
        self.declines = 0

    def capture(self, charge: Charge, *, idempotency_key: str) -> Payment:
        # Lookup and insert under one lock: two concurrent requests with one key make one capture.
        with self._lock:
            existing = self._by_key.get(idempotency_key)
            if existing is not None:
                return existing
            payment = Payment(
                id=f"pay_{secrets.token_hex(12)}",
                order_id=charge.order_id,
                customer_id=charge.customer_id,
                amount=charge.amount,
                currency=charge.currency,
                idempotency_key=idempotency_key,
                captured_at=datetime.now(UTC).isoformat(),
            )
            self._by_key[idempotency_key] = payment
            self._captures.append(payment)
            return payment

    def decline(self) -> None:
        with self._lock:
            self.declines += 1

    def payments(self, *, order_id: str | None = None) -> list[Payment]:
        with self._lock:
            captures = list(self._captures)
        return [p for p in captures if _fields.matches_order(p.order_id, order_id)]


def parse_charge(body: Mapping[str, object]) -> Charge:
    customer_id = _fields.identifier(body, "customer_id")
    amount = body.get("amount")
    # A string, never a JSON number: money must not pass through a float.
    if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount):
        raise HttpError(400, 'amount must be a decimal string such as "12.50"', field="amount")
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise HttpError(400, 'currency must be a three-letter code such as "USD"', field="currency")
    return Charge(_fields.identifier(body, "order_id"), customer_id, amount, currency)


def build(faults: FaultInjector) -> Simulator:
    ledger = PaymentLedger()

    def create_payment(request: Request) -> Response:
        active, injected = faults.before_work()
        if injected is not None:
            return injected
        key = request.header("Idempotency-Key")
        if key is None or not key.strip():
            raise HttpError(400, "the Idempotency-Key header is required", field="Idempotency-Key")
        charge = parse_charge(request.json_object())
        if charge.declined:
            ledger.decline()
            return Response(402, {"error": "card_declined"})
        payment = ledger.capture(charge, idempotency_key=key)
        if active.fail_after_capture:
            return injected_error(active)
        return Response(201, payment.receipt())

    def list_payments(request: Request) -> Response:
        payments = ledger.payments(order_id=request.query_value("order_id"))
        return Response(200, {"items": [p.ledger_entry() for p in payments]})

    return Simulator("payment", ledger, (route("/payments", POST=create_payment, GET=list_payments),))
