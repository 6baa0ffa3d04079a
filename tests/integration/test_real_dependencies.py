"""The app with its real clients and pipelines against the real simulators and a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from simulators import SimulatorServer, serve
from tests.integration.conftest import ADMIN_TOKEN
from tests.support import DatabaseHandle

FAST_POLICIES = """
[api]
request_deadline = 3.0
[dependencies.payment]
attempt_timeout = 0.5
total_timeout = 1.5
retry = { max_retries = 1, base_delay = 0.01, max_delay = 0.05 }
circuit_breaker = { failure_ratio = 0.5, sampling_duration = 5.0, minimum_throughput = 4, break_duration = 1.0 }
[dependencies.inventory]
attempt_timeout = 0.3
total_timeout = 0.8
retry = { max_retries = 1, base_delay = 0.01, max_delay = 0.05 }
circuit_breaker = { failure_ratio = 0.5, sampling_duration = 5.0, minimum_throughput = 4, break_duration = 1.0 }
hedging = { max_hedged_attempts = 1, delay = 0.2 }
cache_ttl = 60.0
[dependencies.notification]
attempt_timeout = 0.5
total_timeout = 0.5
"""

ORDER = {"customer_id": 5, "lines": [{"product_id": 2, "quantity": 3}]}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Live:
    def __init__(self, client: FlaskClient, sims: dict[str, SimulatorServer], services: Any) -> None:
        self.client = client
        self.sims = sims
        self.services = services

    def order(self, body: dict[str, Any] | None = None) -> Any:
        return self.client.post("/api/orders", data=json.dumps(body or ORDER), content_type="application/json")

    def faults(self, kind: str, **faults: Any) -> None:
        requests.put(f"{self.sims[kind].url}/faults", json=faults, timeout=2).raise_for_status()

    def captures(self, order_id: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.sims['payment'].url}/payments", params={"order_id": order_id}, timeout=2)
        return response.json()["items"]  # type: ignore[no-any-return]


@pytest.fixture
def live(database: DatabaseHandle, redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Live]:
    sims = {kind: serve(kind) for kind in ("payment", "inventory", "notification")}
    policy_file = tmp_path / "resilience.toml"
    policy_file.write_text(FAST_POLICIES)
    settings = Settings(
        database_url=database.url, database_schema=database.schema, redis_url=redis_url, redis_prefix=key_prefix,
        admin_token=ADMIN_TOKEN, resilience_file=policy_file, payment_url=sims["payment"].url,
        inventory_url=sims["inventory"].url, notification_url=sims["notification"].url,
    )
    app = create_app(settings, redis=redis.Redis.from_url(redis_url))
    try:
        yield Live(app.test_client(), sims, app.extensions["orderflow"])
    finally:
        app.extensions["orderflow"].engine.dispose()
        for sim in sims.values():
            sim.shutdown()


def test_healthy_payment_confirms_with_one_capture_under_the_derived_key(live: Live) -> None:
    response = live.order()
    assert response.status_code == 201
    order = response.get_json()
    assert order["status"] == "Confirmed" and order["inventory_source"] == "live"
    captures = live.captures(order["id"])
    assert len(captures) == 1 and captures[0]["id"] == order["payment"]["payment_id"]
    assert captures[0]["amount"] == order["total"] == "13.50"


def test_customer_402_is_declined_and_not_retried(live: Live) -> None:
    response = live.order({**ORDER, "customer_id": 402})
    assert response.status_code == 402
    stored = live.client.get(f"/api/orders/{response.get_json()['order_id']}").get_json()
    assert stored["status"] == "PaymentFailed" and stored["payment"]["attempts"] == 1


def test_failing_payment_is_retried_then_left_pending_with_every_attempt_counted(live: Live) -> None:
    live.faults("payment", error_rate=1.0, error_status=503)
    response = live.order()
    assert response.status_code == 201
    order = response.get_json()
    assert order["status"] == "PaymentPending"
    assert order["payment"]["attempts"] == 2  # the first try and max_retries = 1


def test_capture_that_answers_an_error_is_left_pending_and_captured_once(live: Live) -> None:
    live.faults("payment", fail_after_capture=True, error_status=500)
    order = live.order().get_json()
    assert order["status"] == "PaymentPending"
    assert len(live.captures(order["id"])) == 1  # both attempts used the same key


def test_slow_payment_is_cut_at_the_total_timeout(live: Live) -> None:
    live.faults("payment", latency_ms=3000)
    started = time.monotonic()
    order = live.order().get_json()
    elapsed = time.monotonic() - started
    assert order["status"] == "PaymentPending"
    assert elapsed < 1.5 + 0.5  # payment total_timeout plus a margin for everything else


def test_inventory_down_uses_the_cached_level(live: Live) -> None:
    assert live.client.get("/api/inventory/4").get_json() == {"product_id": 4, "available": 1000, "source": "live"}
    live.faults("inventory", error_rate=1.0, error_status=503)
    assert live.client.get("/api/inventory/4").get_json()["source"] == "cache"
    response = live.order({"customer_id": 1, "lines": [{"product_id": 4, "quantity": 1}]})
    assert response.status_code == 201 and response.get_json()["inventory_source"] == "cache"


def test_inventory_down_without_cache_accepts_the_order_and_503s_the_level(live: Live) -> None:
    live.faults("inventory", error_rate=1.0, error_status=503)
    assert live.client.get("/api/inventory/9").status_code == 503
    response = live.order({"customer_id": 1, "lines": [{"product_id": 9, "quantity": 1}]})
    assert response.status_code == 201 and response.get_json()["inventory_source"] == "unavailable"


def test_product_13_is_out_of_stock_live(live: Live) -> None:
    response = live.order({"customer_id": 1, "lines": [{"product_id": 13, "quantity": 1}]})
    assert response.status_code == 422 and response.get_json()["type"].endswith("/out-of-stock")


def test_isolated_payment_circuit_skips_the_call_and_reset_restores_it(live: Live) -> None:
    circuit = live.client.post("/admin/circuits/payment/isolate", headers=ADMIN).get_json()
    assert circuit["state"] == "isolated" and circuit["name"] == "payment"
    started = time.monotonic()
    order = live.order().get_json()
    assert time.monotonic() - started < 0.25
    assert order["status"] == "PaymentPending" and order["payment"]["attempts"] == 0
    ready = live.client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "warn"
    assert body["checks"]["circuit-breakers"][0]["output"].startswith("Open circuits: payment")
    assert live.client.post("/admin/circuits/payment/reset", headers=ADMIN).get_json()["state"] == "closed"
    assert live.order().get_json()["status"] == "Confirmed"


def test_repeated_failures_open_the_shared_circuit(live: Live) -> None:
    live.faults("payment", error_rate=1.0, error_status=503)
    for _ in range(3):
        live.order()
    circuits = {c["name"]: c for c in live.client.get("/admin/circuits", headers=ADMIN).get_json()["circuits"]}
    assert circuits["payment"]["state"] == "open" and circuits["payment"]["break_until"]
    started = time.monotonic()
    order = live.order().get_json()
    assert time.monotonic() - started < 0.25 and order["payment"]["attempts"] == 0


def test_readiness_passes_with_everything_up_and_names_every_check(live: Live) -> None:
    response = live.client.get("/health/ready")
    body = response.get_json()
    assert response.status_code == 200 and response.content_type == "application/health+json"
    assert set(body["checks"]) == {"database", "broker", "payment-service", "inventory-service",
                                   "notification-service", "circuit-breakers"}
    assert body["status"] == "pass"


def test_readiness_warns_when_a_service_is_down(live: Live) -> None:
    live.sims["notification"].shutdown()
    body = live.client.get("/health/ready").get_json()
    assert body["status"] == "warn"
    assert body["checks"]["notification-service"][0]["status"] == "warn"


def test_metrics_show_dependency_calls(live: Live) -> None:
    live.order()
    text = live.client.get("/metrics").get_data(as_text=True)
    assert 'http_client_requests_total{service="payment",status="success"}' in text
    assert "resilience_circuitbreaker_state{service=\"payment\"} 0.0" in text
    assert 'orders_created_total{status="Confirmed"}' in text


def test_a_full_payment_bulkhead_leaves_the_order_pending_at_once(database: DatabaseHandle, redis_url: str,
                                                                     key_prefix: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    payment = serve("payment")
    inventory = serve("inventory")
    policy_file = tmp_path / "resilience.toml"
    policy_file.write_text(FAST_POLICIES.replace(
        "[dependencies.inventory]", "bulkhead = { max_concurrency = 1, max_queue = 0 }\n[dependencies.inventory]"))
    settings = Settings(
        database_url=database.url, database_schema=database.schema, redis_url=redis_url, redis_prefix=key_prefix,
        admin_token=ADMIN_TOKEN, resilience_file=policy_file, payment_url=payment.url,
        inventory_url=inventory.url, notification_url=payment.url,
    )
    app = create_app(settings, redis=redis.Redis.from_url(redis_url))
    try:
        requests.put(f"{payment.url}/faults", json={"latency_ms": 400}, timeout=2).raise_for_status()

        def place(_: int) -> tuple[float, Any]:
            started = time.monotonic()
            response = app.test_client().post("/api/orders", data=json.dumps(ORDER), content_type="application/json")
            return time.monotonic() - started, response.get_json()

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(place, 0)
            time.sleep(0.15)  # the first order holds the only slot, waiting on the slow payment
            second = pool.submit(place, 1)
            (slow, held), (fast, rejected) = first.result(), second.result()
        assert held["status"] == "Confirmed" and slow >= 0.4
        assert rejected["status"] == "PaymentPending" and rejected["payment"]["attempts"] == 0
        assert fast < 0.3
        metrics = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'resilience_bulkhead_rejections_total{service="payment"}' in metrics
    finally:
        app.extensions["orderflow"].engine.dispose()
        payment.shutdown()
        inventory.shutdown()
