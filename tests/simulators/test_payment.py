"""The payment simulator: idempotent captures, declines, the ledger, and faults around a capture."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import pytest

from simulators import SimulatorServer
from simulators.payment import PaymentLedger

from .client import Reply, call


def charge(
    server: SimulatorServer,
    *,
    key: str | None = "key-1",
    order_id: str | int = "order-1",
    customer_id: int = 7,
    amount: str = "12.50",
    timeout: float = 5.0,
) -> Reply:
    body = {"order_id": order_id, "customer_id": customer_id, "amount": amount, "currency": "USD"}
    headers = {} if key is None else {"Idempotency-Key": key}
    return call(server, "POST", "/payments", json_body=body, headers=headers, timeout=timeout)


def ledger(server: SimulatorServer, query: str = "") -> list[dict[str, Any]]:
    reply = call(server, "GET", f"/payments{query}")
    assert reply.status == 200
    items: list[dict[str, Any]] = reply.body["items"]
    return items


def test_a_capture_answers_201_with_the_payment(payment: SimulatorServer) -> None:
    reply = charge(payment)
    assert reply.status == 201
    assert set(reply.body) == {"id", "order_id", "amount", "status"}
    assert re.fullmatch(r"pay_[0-9a-f]+", reply.body["id"])
    assert reply.body["order_id"] == "order-1"
    assert reply.body["status"] == "captured"


@pytest.mark.parametrize("amount", ["12.50", "10", "0.1000", "123456789.99"])
def test_the_amount_is_kept_exactly_as_given(payment: SimulatorServer, amount: str) -> None:
    assert charge(payment, amount=amount).body["amount"] == amount
    assert ledger(payment)[0]["amount"] == amount


def test_the_same_key_returns_the_same_payment_and_charges_once(payment: SimulatorServer) -> None:
    first = charge(payment, key="same")
    again = charge(payment, key="same")
    assert (again.status, again.body) == (first.status, first.body)
    assert [item["id"] for item in ledger(payment)] == [first.body["id"]]


def test_distinct_keys_make_distinct_captures(payment: SimulatorServer) -> None:
    first = charge(payment, key="a")
    second = charge(payment, key="b")
    assert first.body["id"] != second.body["id"]
    assert len(ledger(payment)) == 2


def test_concurrent_requests_with_one_key_make_one_capture(payment: SimulatorServer) -> None:
    # The latency makes every request wait before capturing, so all of them race for the key together.
    call(payment, "PUT", "/faults", json_body={"latency_ms": 100})
    replies: list[Reply] = []
    lock = threading.Lock()
    start_together = threading.Barrier(20)

    def pay() -> None:
        start_together.wait(timeout=5)
        reply = charge(payment, key="contended")
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=pay) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(replies) == 20
    assert {reply.status for reply in replies} == {201}
    assert len({reply.body["id"] for reply in replies}) == 1
    assert len(ledger(payment)) == 1


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_missing_idempotency_key_is_a_400(payment: SimulatorServer, key: str | None) -> None:
    reply = charge(payment, key=key)
    assert reply.status == 400
    assert "Idempotency-Key" in reply.body["error"]
    assert ledger(payment) == []


_GOOD = {"order_id": "order-1", "customer_id": 7, "amount": "12.50", "currency": "USD"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"order_id": None}, "order_id"),
        ({"order_id": ""}, "order_id"),
        ({"order_id": True}, "order_id"),
        ({"order_id": ["o"]}, "order_id"),
        ({"customer_id": None}, "customer_id"),
        ({"customer_id": False}, "customer_id"),
        ({"amount": 12.5}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": "-1.00"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"currency": None}, "currency"),
    ],
)
def test_a_bad_payment_body_is_a_400_naming_the_field(
    payment: SimulatorServer, change: dict[str, Any], field: str
) -> None:
    body = {name: value for name, value in {**_GOOD, **change}.items() if value is not None}
    reply = call(payment, "POST", "/payments", json_body=body, headers={"Idempotency-Key": "k"})
    assert reply.status == 400
    assert reply.body["field"] == field
    assert ledger(payment) == []


@pytest.mark.parametrize("raw", [b"[]", b"not json", b""])
def test_a_payment_body_that_is_not_a_json_object_is_a_400(payment: SimulatorServer, raw: bytes) -> None:
    reply = call(payment, "POST", "/payments", raw=raw, headers={"Idempotency-Key": "k"})
    assert reply.status == 400
    assert "error" in reply.body


def test_customer_402_is_declined_and_nothing_is_captured(payment: SimulatorServer) -> None:
    for key in ("d-1", "d-1", "d-2"):
        reply = charge(payment, key=key, customer_id=402)
        assert (reply.status, reply.body) == (402, {"error": "card_declined"})
    assert ledger(payment) == []
    assert isinstance(payment.state, PaymentLedger)
    assert payment.state.declines == 3


def test_the_ledger_lists_captures_per_order_or_all(payment: SimulatorServer) -> None:
    charge(payment, key="a1", order_id="A")
    charge(payment, key="a2", order_id="A")
    charge(payment, key="b1", order_id="B")
    charge(payment, key="n1", order_id=7)
    assert [item["idempotency_key"] for item in ledger(payment, "?order_id=A")] == ["a1", "a2"]
    assert [item["order_id"] for item in ledger(payment, "?order_id=B")] == ["B"]
    assert [item["order_id"] for item in ledger(payment, "?order_id=7")] == [7]
    assert ledger(payment, "?order_id=nobody") == []
    everything = ledger(payment)
    assert len(everything) == 4
    assert {"id", "order_id", "amount", "status", "customer_id", "currency"} <= set(everything[0])


def test_fail_after_capture_captures_then_answers_the_error(payment: SimulatorServer) -> None:
    call(payment, "PUT", "/faults", json_body={"fail_after_capture": True, "error_status": 503})
    failed = charge(payment, key="k")
    assert (failed.status, failed.body) == (503, {"error": "injected fault"})
    assert failed.headers["Retry-After"] == "1"
    captured = ledger(payment, "?order_id=order-1")
    assert len(captured) == 1
    # The caller's retry with the same key finds the capture instead of charging again.
    assert charge(payment, key="k").status == 503
    call(payment, "DELETE", "/faults")
    retried = charge(payment, key="k")
    assert (retried.status, retried.body["id"]) == (201, captured[0]["id"])
    assert len(ledger(payment)) == 1


def test_fail_after_capture_still_declines_customer_402(payment: SimulatorServer) -> None:
    call(payment, "PUT", "/faults", json_body={"fail_after_capture": True})
    assert charge(payment, customer_id=402).status == 402
    assert ledger(payment) == []


def test_an_injected_error_captures_nothing(payment: SimulatorServer) -> None:
    call(payment, "PUT", "/faults", json_body={"error_rate": 1.0, "error_status": 502})
    assert charge(payment).status == 502
    assert ledger(payment) == []


def test_a_payment_whose_caller_gave_up_is_still_captured(payment: SimulatorServer) -> None:
    call(payment, "PUT", "/faults", json_body={"latency_ms": 500})
    with pytest.raises(TimeoutError):
        charge(payment, key="abandoned", timeout=0.1)
    deadline = time.monotonic() + 3
    while not ledger(payment) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [item["idempotency_key"] for item in ledger(payment)] == ["abandoned"]


def test_a_payment_whose_caller_hung_up_is_still_captured(payment: SimulatorServer) -> None:
    call(payment, "PUT", "/faults", json_body={"latency_ms": 300})
    body = b'{"order_id": "gone", "customer_id": 1, "amount": "1.00", "currency": "USD"}'
    head = b"POST /payments HTTP/1.1\r\nIdempotency-Key: gone\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", payment.port), timeout=5) as sock:
        sock.sendall(head + body)
        time.sleep(0.05)  # let the server read the request before the connection goes
    deadline = time.monotonic() + 3
    while not ledger(payment) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [item["order_id"] for item in ledger(payment)] == ["gone"]
