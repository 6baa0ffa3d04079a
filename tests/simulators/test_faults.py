"""Fault controls: the /faults resource, and its effect on business routes only."""

from __future__ import annotations

import time
from typing import Any

import pytest

from simulators import SimulatorServer, serve

from .client import Reply, call

DEFAULTS = {"error_rate": 0.0, "error_status": 503, "latency_ms": 0, "fail_after_capture": False}


def business_call(server: SimulatorServer, *, timeout: float = 5.0) -> Reply:
    """The one route of each simulator that faults touch."""
    if server.kind == "payment":
        body = {"order_id": "o-1", "customer_id": 1, "amount": "12.50", "currency": "USD"}
        headers = {"Idempotency-Key": "k-1"}
        return call(server, "POST", "/payments", json_body=body, headers=headers, timeout=timeout)
    if server.kind == "inventory":
        return call(server, "GET", "/stock/1", timeout=timeout)
    body = {"order_id": "o-1", "kind": "order_confirmed"}
    return call(server, "POST", "/notifications", json_body=body, timeout=timeout)


def put_faults(server: SimulatorServer, **faults: Any) -> Reply:
    reply = call(server, "PUT", "/faults", json_body=faults)
    assert reply.status == 200, reply.body
    return reply


def test_faults_start_at_their_defaults(simulator: SimulatorServer) -> None:
    assert call(simulator, "GET", "/faults").body == DEFAULTS


def test_a_put_replaces_the_whole_configuration(simulator: SimulatorServer) -> None:
    put_faults(simulator, latency_ms=5, error_status=500, fail_after_capture=True)
    reply = put_faults(simulator, error_rate=0.25)
    assert reply.body == {**DEFAULTS, "error_rate": 0.25}
    assert call(simulator, "GET", "/faults").body == {**DEFAULTS, "error_rate": 0.25}


def test_an_empty_put_turns_every_fault_off(simulator: SimulatorServer) -> None:
    put_faults(simulator, error_rate=1)
    reply = call(simulator, "PUT", "/faults")
    assert (reply.status, reply.body) == (200, DEFAULTS)


def test_delete_restores_the_defaults(simulator: SimulatorServer) -> None:
    put_faults(simulator, error_rate=1, error_status=429, latency_ms=10, fail_after_capture=True)
    reply = call(simulator, "DELETE", "/faults")
    assert (reply.status, reply.body) == (200, DEFAULTS)
    assert business_call(simulator).status < 300


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_every_allowed_error_status_is_accepted(payment: SimulatorServer, status: int) -> None:
    assert put_faults(payment, error_status=status).body["error_status"] == status


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_rate": -0.1}, "error_rate"),
        ({"error_rate": 1.01}, "error_rate"),
        ({"error_rate": "0.5"}, "error_rate"),
        ({"error_rate": True}, "error_rate"),
        ({"error_rate": None}, "error_rate"),
        ({"error_status": 404}, "error_status"),
        ({"error_status": "503"}, "error_status"),
        ({"error_status": 503.0}, "error_status"),
        ({"error_status": True}, "error_status"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": 1.5}, "latency_ms"),
        ({"latency_ms": "100"}, "latency_ms"),
        ({"latency_ms": False}, "latency_ms"),
        ({"latency_ms": 10**12}, "latency_ms"),
        ({"fail_after_capture": 1}, "fail_after_capture"),
        ({"fail_after_capture": "true"}, "fail_after_capture"),
        ({"fail_after_capture": None}, "fail_after_capture"),
        ({"latency": 100}, "latency"),
        ({"error_rate": 0.5, "retry_after": 3}, "retry_after"),
    ],
)
def test_a_bad_fault_value_is_a_400_naming_the_field_and_changes_nothing(
    payment: SimulatorServer, body: dict[str, Any], field: str
) -> None:
    put_faults(payment, latency_ms=7)
    reply = call(payment, "PUT", "/faults", json_body=body)
    assert reply.status == 400
    assert reply.body["field"] == field
    assert field in reply.body["error"]
    assert call(payment, "GET", "/faults").body == {**DEFAULTS, "latency_ms": 7}


@pytest.mark.parametrize("body", [[], "error_rate", 1, None])
def test_a_fault_body_that_is_not_an_object_is_a_400(simulator: SimulatorServer, body: object) -> None:
    reply = call(simulator, "PUT", "/faults", json_body=body, raw=b"null" if body is None else None)
    assert reply.status == 400
    assert "error" in reply.body


def test_latency_delays_the_business_route(simulator: SimulatorServer) -> None:
    put_faults(simulator, latency_ms=300)
    started = time.monotonic()
    reply = business_call(simulator)
    elapsed = time.monotonic() - started
    assert reply.status < 300
    assert 0.3 <= elapsed < 2.0


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, "1"), (429, "1"), (500, None), (502, None), (504, None)]
)
def test_error_rate_one_always_fails_with_the_configured_status(
    simulator: SimulatorServer, status: int, retry_after: str | None
) -> None:
    put_faults(simulator, error_rate=1.0, error_status=status)
    for _ in range(5):
        reply = business_call(simulator)
        assert (reply.status, reply.body) == (status, {"error": "injected fault"})
        assert reply.headers.get("Retry-After") == retry_after


def test_error_rate_zero_never_fails(simulator: SimulatorServer) -> None:
    put_faults(simulator, error_rate=0.0, error_status=500)
    assert all(business_call(simulator).status < 300 for _ in range(20))


def test_a_seeded_error_rate_is_reproducible_and_mixes_outcomes() -> None:
    def outcomes() -> list[int]:
        with serve("inventory", seed=42) as server:
            put_faults(server, error_rate=0.5)
            return [business_call(server).status for _ in range(30)]

    first = outcomes()
    assert first == outcomes()
    assert set(first) == {200, 503}


def test_faults_never_touch_health_faults_or_read_and_admin_routes(simulator: SimulatorServer) -> None:
    put_faults(simulator, error_rate=1.0, error_status=500, latency_ms=400)
    unaffected: list[tuple[str, str, object]] = [("GET", "/health", None), ("GET", "/faults", None)]
    if simulator.kind == "payment":
        unaffected.append(("GET", "/payments", None))
    elif simulator.kind == "inventory":
        unaffected.append(("PUT", "/stock/2", {"available": 5}))
    else:
        unaffected.append(("GET", "/notifications", None))
    for method, path, body in unaffected:
        started = time.monotonic()
        reply = call(simulator, method, path, json_body=body)
        assert reply.status == 200, (path, reply.body)
        assert time.monotonic() - started < 0.39, path  # not held back by the 400 ms of latency
    assert business_call(simulator).status == 500
