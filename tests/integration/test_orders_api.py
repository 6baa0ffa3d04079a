"""POST /api/orders, row by row of the contract's outcome table, over the app's HTTP interface."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.adapters.sql.tables import payment_jobs
from app.domain import InventorySource
from tests.integration.conftest import Stack

ORDER = {"customer_id": 7, "lines": [{"product_id": 1, "quantity": 2}, {"product_id": 15, "quantity": 1}]}


def post(stack: Stack, body: object, **headers: str):  # type: ignore[no-untyped-def]
    return stack.client.post("/api/orders", data=json.dumps(body), content_type="application/json", headers=headers)


def count_orders(stack: Stack) -> int:
    return len(stack.client.get("/api/orders?limit=500").get_json()["items"])


def test_captured_payment_confirms_the_order_in_real_time(stack: Stack) -> None:
    response = post(stack, ORDER)
    assert response.status_code == 201
    order = response.get_json()
    assert response.headers["Location"] == f"/api/orders/{order['id']}"
    assert order["status"] == "Confirmed"
    assert order["payment"] == {"status": "captured", "attempts": 1, "payment_id": f"pay_{order['id'][:8]}",
                                "failure_reason": None}
    assert order["total"] == "62.30" and order["lines"][0]["line_total"] == "49.80"
    assert order["lines"][0]["unit_price"] == "24.90"
    assert order["currency"] == "USD" and order["inventory_source"] == "live" and order["message"] is None
    assert stack.client.get(response.headers["Location"]).get_json() == order


def test_failed_payment_leaves_the_order_pending_and_hands_it_to_the_workers(stack: Stack) -> None:
    stack.payments.outcome = "failed"
    response = post(stack, ORDER)
    assert response.status_code == 201
    order = response.get_json()
    assert order["status"] == "PaymentPending"
    assert order["message"] == "Order created. Payment will be processed shortly."
    assert order["payment"]["status"] == "pending" and order["payment"]["attempts"] == 1
    assert stack.publisher.due == [order["id"]]


@pytest.mark.parametrize("reason", ["flag", "circuit"])
def test_flag_off_or_open_circuit_skips_the_payment_call(stack: Stack, reason: str) -> None:
    if reason == "flag":
        assert stack.client.put("/admin/flags/RealTimePayments", json={"enabled": False},
                                headers=stack.admin()).status_code == 200
    else:
        stack.payments.open_circuit = True
    try:
        response = post(stack, ORDER)
    finally:
        stack.client.put("/admin/flags/RealTimePayments", json={"enabled": True}, headers=stack.admin())
    assert response.status_code == 201
    order = response.get_json()
    assert order["status"] == "PaymentPending" and order["payment"]["attempts"] == 0
    assert stack.payments.calls == []
    if reason == "flag":
        assert stack.publisher.due == [order["id"]]
    else:  # no hint for a job a worker could only defer: it is due when the break ends
        assert stack.publisher.due == []
        assert job_due_in(stack, order["id"]) > 25


def job_due_in(stack: Stack, order_id: str) -> float:
    """Seconds from now until the order's payment job is due."""
    with stack.services.engine.connect() as conn:
        due = conn.execute(
            select(payment_jobs.c.next_attempt_at).where(payment_jobs.c.order_id == order_id)
        ).scalar_one()
    due = due if due.tzinfo is not None else due.replace(tzinfo=UTC)
    return float((due - datetime.now(UTC)).total_seconds())


def test_declined_payment_is_402_and_the_order_is_stored_failed(stack: Stack) -> None:
    response = post(stack, {**ORDER, "customer_id": 402})
    assert response.status_code == 402
    problem = response.get_json()
    assert response.content_type == "application/problem+json"
    assert problem["type"].endswith("/payment-declined") and problem["status"] == 402
    stored = stack.client.get(f"/api/orders/{problem['order_id']}").get_json()
    assert stored["status"] == "PaymentFailed"
    assert stored["payment"]["failure_reason"] == "declined" and stored["payment"]["status"] == "failed"


def test_unknown_product_is_422_and_stores_nothing(stack: Stack) -> None:
    before = count_orders(stack)
    response = post(stack, {"customer_id": 1, "lines": [{"product_id": 21, "quantity": 1}]})
    assert response.status_code == 422
    assert response.get_json()["type"].endswith("/unknown-product")
    assert count_orders(stack) == before


def test_out_of_stock_counts_quantities_summed_per_product(stack: Stack) -> None:
    stack.inventory.available[3] = 5
    before = count_orders(stack)
    response = post(stack, {"customer_id": 1, "lines": [{"product_id": 3, "quantity": 3},
                                                         {"product_id": 3, "quantity": 3}]})
    assert response.status_code == 422
    assert response.get_json()["type"].endswith("/out-of-stock")
    assert stack.inventory.calls[-1] == {3: 6}
    assert count_orders(stack) == before
    ok = post(stack, {"customer_id": 1, "lines": [{"product_id": 3, "quantity": 5}]})
    assert ok.status_code == 201


def test_unavailable_inventory_still_accepts_the_order(stack: Stack) -> None:
    stack.inventory.source = InventorySource.UNAVAILABLE
    response = post(stack, ORDER)
    assert response.status_code == 201
    assert response.get_json()["inventory_source"] == "unavailable"


def test_cached_inventory_is_reported(stack: Stack) -> None:
    stack.inventory.source = InventorySource.CACHE
    assert post(stack, ORDER).get_json()["inventory_source"] == "cache"


def test_non_json_content_type_is_415(stack: Stack) -> None:
    response = stack.client.post("/api/orders", data=json.dumps(ORDER), content_type="text/plain")
    assert response.status_code == 415
    assert response.content_type == "application/problem+json"


def test_body_over_64_kib_is_413(stack: Stack) -> None:
    body = json.dumps({**ORDER, "pad": "x" * 70_000})
    response = stack.client.post("/api/orders", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["status"] == 413


def test_idempotent_replay_returns_the_first_response_verbatim(stack: Stack) -> None:
    first = post(stack, ORDER, **{"Idempotency-Key": "replay-1"})
    # Same JSON, other key order and spacing: canonically equal.
    again = stack.client.post(
        "/api/orders",
        data='{"lines":[{"quantity":2,"product_id":1},{"quantity":1,"product_id":15}],  "customer_id":7}',
        content_type="application/json", headers={"Idempotency-Key": "replay-1"},
    )
    assert first.status_code == again.status_code == 201
    assert again.data == first.data
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(stack.payments.calls) == 1


def test_idempotent_replay_of_a_decline_and_of_a_422(stack: Stack) -> None:
    declined = {**ORDER, "customer_id": 402}
    first = post(stack, declined, **{"Idempotency-Key": "decline-1"})
    again = post(stack, declined, **{"Idempotency-Key": "decline-1"})
    assert first.status_code == again.status_code == 402 and first.data == again.data
    unknown = {"customer_id": 1, "lines": [{"product_id": 99, "quantity": 1}]}
    assert post(stack, unknown, **{"Idempotency-Key": "u-1"}).status_code == 422
    assert post(stack, unknown, **{"Idempotency-Key": "u-1"}).headers["Idempotent-Replayed"] == "true"


def test_same_key_other_body_is_409_reused(stack: Stack) -> None:
    assert post(stack, ORDER, **{"Idempotency-Key": "reuse-1"}).status_code == 201
    response = post(stack, {**ORDER, "customer_id": 8}, **{"Idempotency-Key": "reuse-1"})
    assert response.status_code == 409
    assert response.get_json()["type"].endswith("/idempotency-key-reused")


def test_400_responses_are_not_stored_under_the_key(stack: Stack) -> None:
    assert post(stack, {"customer_id": 0, "lines": []}, **{"Idempotency-Key": "k-400"}).status_code == 400
    assert post(stack, ORDER, **{"Idempotency-Key": "k-400"}).status_code == 201


def test_a_running_key_is_409_in_use(stack: Stack) -> None:
    from datetime import timedelta

    from app.api.validation import canonical_fingerprint

    services = stack.services
    with services.uow() as unit:
        unit.idempotency.claim("busy-1", canonical_fingerprint(ORDER), now=services.idempotency.now(),
                               lock_for=timedelta(seconds=30), keep_for=timedelta(hours=1), token="another-request")
        unit.commit()
    response = post(stack, ORDER, **{"Idempotency-Key": "busy-1"})
    assert response.status_code == 409
    assert response.get_json()["type"].endswith("/idempotency-key-in-use")


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there", "caf\u00e9"])
def test_bad_idempotency_key_header_is_400(stack: Stack, key: str) -> None:
    response = stack.client.post("/api/orders", data=json.dumps(ORDER), content_type="application/json",
                                 headers=[("Idempotency-Key", key)])
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["field"] == "Idempotency-Key"


def test_list_orders_newest_first_with_status_filter_and_limit(stack: Stack) -> None:
    ids = [post(stack, ORDER).get_json()["id"] for _ in range(3)]
    items = stack.client.get("/api/orders?status=Confirmed&limit=2").get_json()["items"]
    assert [o["id"] for o in items] == ids[::-1][:2]
    assert all(o["status"] == "Confirmed" for o in items)


@pytest.mark.parametrize("query", ["status=Shipped", "limit=0", "limit=501", "limit=abc", "limit=-1", "limit=1.5"])
def test_list_orders_rejects_bad_query(stack: Stack, query: str) -> None:
    response = stack.client.get(f"/api/orders?{query}")
    assert response.status_code == 400
    assert response.get_json()["errors"]


def test_unknown_order_is_404_problem(stack: Stack) -> None:
    response = stack.client.get("/api/orders/nope")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_products_are_the_seeded_catalog(stack: Stack) -> None:
    items = stack.client.get("/api/products").get_json()["items"]
    assert [p["id"] for p in items] == list(range(1, 21))
    assert items[0]["unit_price"] == "24.90"
