"""Order, product and inventory routes: parse, call a service, map the result to HTTP."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, current_app, request

from app.api.problems import Problem, validation_problem
from app.api.validation import (
    MAX_ID,
    canonical_fingerprint,
    parse_idempotency_key,
    parse_order,
    read_json_body,
)
from app.domain import Order, OrderStatus, OutOfStock, PaymentDeclined, UnknownProduct
from app.metrics import ORDERS_CREATED
from app.services import ordering
from app.services.idempotency import KeyBinding, KeyInUse, KeyReused, Replayed
from app.services.ordering import OrderMayBeStored, PlaceOrder
from app.services.unit_of_work import StoredResponse, UnitOfWorkFactory

bp = Blueprint("orders", __name__)

# How far past the request deadline storing an idempotent response may wait for a stalled database: within
# the contract's bound (the deadline plus 1 s), with room left to send the answer.
RESPONSE_STORE_SLACK = 0.5


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["orderflow"]


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(payload), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@bp.post("/api/orders")
def place_order() -> Response:
    started = time.monotonic()
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    document = read_json_body(request)
    order_request = parse_order(document)
    services = _services()
    command = PlaceOrder(order_request.customer_id, order_request.lines, order_request.currency)

    def produce(binding: KeyBinding | None = None) -> StoredResponse:
        return _placement_response(services.placement, command, started, binding)

    if key is None:
        return _stored_to_response(produce())
    try:
        outcome = services.idempotency.run(
            key, canonical_fingerprint(document), produce, lambda order_id: _current_order(services.uow, order_id),
            finish_by=started + services.placement.request_deadline + RESPONSE_STORE_SLACK,
        )
    except KeyReused:
        raise Problem(
            409, "Idempotency key reused", "This Idempotency-Key was used with a different request body.",
            slug="idempotency-key-reused",
        ) from None
    except KeyInUse:
        raise Problem(
            409, "Idempotency key in use", "A request with this Idempotency-Key is still being processed.",
            slug="idempotency-key-in-use", headers={"Retry-After": "1"},
        ) from None
    if isinstance(outcome, Replayed):
        response = _stored_to_response(outcome.response)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    return _stored_to_response(outcome)


def _current_order(uow: UnitOfWorkFactory, order_id: str) -> StoredResponse:
    """The answer for a key whose first request stored its order but no response: the order as it is now."""
    order = ordering.get_order(uow, order_id)
    if order is None:  # bound in the order's own transaction, so this cannot be; never answer "nothing changed"
        raise _may_be_stored(order_id)
    return _created(order)


def _created(order: Order) -> StoredResponse:
    return StoredResponse(
        201,
        json.dumps(order.to_dict()),
        {"Content-Type": "application/json", "Location": f"/api/orders/{order.id}"},
    )


def _may_be_stored(order_id: str) -> Problem:
    return Problem(
        503, "Order outcome unknown",
        f"The database failed while storing order {order_id}; it may have been stored. Look it up at the "
        "Location given, or send the request again with the same Idempotency-Key.",
        slug="order-outcome-unknown", order_id=order_id,
        headers={"Retry-After": "2", "Location": f"/api/orders/{order_id}"},
    )


def _stored_to_response(stored: StoredResponse) -> Response:
    content_type = stored.headers.get("Content-Type", "application/json")
    response = Response(stored.body, status=stored.status, content_type=content_type)
    for name, value in stored.headers.items():
        if name != "Content-Type":
            response.headers[name] = value
    return response


def _placement_response(
    placement: ordering.OrderPlacement, command: PlaceOrder, started: float, binding: KeyBinding | None
) -> StoredResponse:
    """Runs the placement and renders the outcome the way it is stored for replays."""
    try:
        order = placement.place(command, started=started, binding=binding)
    except OrderMayBeStored as exc:
        raise _may_be_stored(exc.order_id) from exc
    except UnknownProduct as exc:
        return _stored_problem(Problem(422, "Unknown product", str(exc), slug="unknown-product",
                                       product_ids=exc.product_ids))
    except OutOfStock as exc:
        shortages = [{"product_id": pid, "requested": req, "available": avail}
                     for pid, (req, avail) in sorted(exc.shortages.items())]
        return _stored_problem(Problem(422, "Out of stock", str(exc), slug="out-of-stock", shortages=shortages))
    except PaymentDeclined as exc:
        ORDERS_CREATED.labels(str(exc.order.status)).inc()
        return _stored_problem(
            Problem(402, "Payment declined", "The payment was declined; the order was not placed.",
                    slug="payment-declined", order_id=exc.order.id,
                    headers={"Location": f"/api/orders/{exc.order.id}"})
        )
    ORDERS_CREATED.labels(str(order.status)).inc()
    return _created(order)


def _stored_problem(problem: Problem) -> StoredResponse:
    return StoredResponse(
        problem.status, json.dumps(problem.body()), {"Content-Type": "application/problem+json", **problem.headers}
    )


@bp.get("/api/orders/<order_id>")
def get_order(order_id: str) -> Response:
    # Ids are short printable text; anything else (a NUL, say) cannot name an order and never reaches the database.
    valid = len(order_id) <= 40 and order_id.isprintable()
    order = ordering.get_order(_services().uow, order_id) if valid else None
    if order is None:
        raise Problem(404, "Order not found", f"There is no order {order_id!r}.", slug="not-found")
    return _json(200, order.to_dict())


@bp.get("/api/orders")
def list_orders() -> Response:
    errors = []
    status: OrderStatus | None = None
    raw_status = request.args.get("status")
    if raw_status is not None:
        try:
            status = OrderStatus(raw_status)
        except ValueError:
            errors.append({"field": "status", "message": "must be one of " + ", ".join(s.value for s in OrderStatus)})
    limit = 50
    raw_limit = request.args.get("limit")
    if raw_limit is not None:
        if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            errors.append({"field": "limit", "message": "must be an integer between 1 and 500"})
        else:
            limit = int(raw_limit)
    if errors:
        raise validation_problem(errors, "The query is not valid.")
    orders: list[Order] = ordering.list_orders(_services().uow, status=status, limit=limit)
    return _json(200, {"items": [o.to_dict() for o in orders]})


@bp.get("/api/products")
def list_products() -> Response:
    products = ordering.products(_services().uow)
    return _json(200, {"items": [{"id": p.id, "name": p.name, "unit_price": str(p.unit_price)} for p in products]})


@bp.get("/api/inventory/<product_id>")
def inventory_level(product_id: str) -> Response:
    if not product_id.isascii() or not product_id.isdigit() or not 1 <= int(product_id) <= MAX_ID:
        raise Problem(404, "Unknown product", f"There is no product {product_id!r}.", slug="unknown-product")
    pid = int(product_id)
    services = _services()
    if pid not in ordering.known_products(services.uow, [pid]):
        raise Problem(404, "Unknown product", f"There is no product {pid}.", slug="unknown-product")
    level = services.inventory.level(pid)
    if level.available is None:
        raise Problem(
            503, "Inventory unavailable", "Neither the inventory service nor the cache could answer.",
            slug="inventory-unavailable", headers={"Retry-After": "5"},
        )
    return _json(200, {"product_id": pid, "available": level.available, "source": str(level.source)})
