"""The inventory simulator: the starting stock, unknown products, and levels set by tests."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from simulators import SimulatorServer
from simulators.inventory import StockLevels

from .client import call, exchange, parse_raw_response, send


def test_products_1_to_20_start_with_1000_units_except_13_with_none(inventory: SimulatorServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", inventory.port, timeout=5)
    try:
        levels = {}
        for product_id in range(1, 21):
            reply = send(conn, "GET", f"/stock/{product_id}")
            assert reply.status == 200
            assert reply.body["product_id"] == product_id
            levels[product_id] = reply.body["available"]
    finally:
        conn.close()
    assert levels == {product_id: 0 if product_id == 13 else 1000 for product_id in range(1, 21)}


@pytest.mark.parametrize("product_id", ["0", "21", "abc", "-1", "1.5", "%31", "99999999999", ""])
def test_an_unknown_or_non_numeric_product_is_a_404(inventory: SimulatorServer, product_id: str) -> None:
    reply = call(inventory, "GET", f"/stock/{product_id}")
    assert (reply.status, reply.body) == (404, {"error": "unknown product"})


def test_a_digit_outside_ascii_is_an_unknown_product(inventory: SimulatorServer) -> None:
    # Latin-1 "\xb2" is superscript two, which str.isdigit accepts but int() refuses.
    answer = exchange(inventory.port, b"GET /stock/\xb2 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = parse_raw_response(answer)
    assert (status, body) == (404, {"error": "unknown product"})


def test_put_sets_the_level_that_get_then_reports(inventory: SimulatorServer) -> None:
    reply = call(inventory, "PUT", "/stock/5", json_body={"available": 3})
    assert (reply.status, reply.body) == (200, {"product_id": 5, "available": 3})
    assert call(inventory, "GET", "/stock/5").body == {"product_id": 5, "available": 3}
    assert isinstance(inventory.state, StockLevels)
    assert inventory.state.get(5) == 3


def test_put_can_empty_a_product_and_stock_a_new_one(inventory: SimulatorServer) -> None:
    call(inventory, "PUT", "/stock/1", json_body={"available": 0})
    call(inventory, "PUT", "/stock/21", json_body={"available": 9})
    assert call(inventory, "GET", "/stock/1").body["available"] == 0
    assert call(inventory, "GET", "/stock/21").body == {"product_id": 21, "available": 9}


@pytest.mark.parametrize(
    "body", [{"available": -1}, {"available": "3"}, {"available": True}, {"available": 1.5}, {}]
)
def test_a_bad_level_is_a_400_and_changes_nothing(inventory: SimulatorServer, body: dict[str, Any]) -> None:
    reply = call(inventory, "PUT", "/stock/2", json_body=body)
    assert reply.status == 400
    assert reply.body["field"] == "available"
    assert call(inventory, "GET", "/stock/2").body["available"] == 1000


def test_put_on_a_non_numeric_product_is_a_404(inventory: SimulatorServer) -> None:
    assert call(inventory, "PUT", "/stock/abc", json_body={"available": 1}).status == 404


def test_stock_answers_only_get_and_put(inventory: SimulatorServer) -> None:
    reply = call(inventory, "DELETE", "/stock/1")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, PUT"
