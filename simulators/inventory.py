"""The inventory service double: stock levels per product, readable under faults, settable by tests."""

from __future__ import annotations

import threading

from ._routing import HttpError, Request, Response, Simulator, route
from .faults import FaultInjector

CATALOG = range(1, 21)
INITIAL_LEVEL = 1000
EMPTY_PRODUCT = 13
MAX_PRODUCT_ID = 2**31 - 1


class StockLevels:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels = {pid: 0 if pid == EMPTY_PRODUCT else INITIAL_LEVEL for pid in CATALOG}

    def get(self, product_id: int) -> int | None:
        with self._lock:
            return self._levels.get(product_id)

    def set(self, product_id: int, available: int) -> None:
        with self._lock:
            self._levels[product_id] = available


def _product_id(text: str) -> int:
    # ASCII digits only (str.isdigit alone accepts other scripts' digits); the length bound keeps int() cheap.
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not 1 <= int(text) <= MAX_PRODUCT_ID:
        raise HttpError(404, "unknown product")
    return int(text)


def build(faults: FaultInjector) -> Simulator:
    stock = StockLevels()

    def show(request: Request) -> Response:
        _, injected = faults.before_work()
        if injected is not None:
            return injected
        product_id = _product_id(request.params[0])
        available = stock.get(product_id)
        if available is None:
            raise HttpError(404, "unknown product")
        return Response(200, {"product_id": product_id, "available": available})

    def update(request: Request) -> Response:
        # Any valid id may be set, so tests can stock a product the initial catalog lacks.
        product_id = _product_id(request.params[0])
        available = request.json_object().get("available")
        if isinstance(available, bool) or not isinstance(available, int) or available < 0:
            raise HttpError(400, "available must be an integer >= 0", field="available")
        stock.set(product_id, available)
        return Response(200, {"product_id": product_id, "available": available})

    return Simulator("inventory", stock, (route("/stock/([^/]*)", GET=show, PUT=update),))
