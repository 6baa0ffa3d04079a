"""Hostile and malformed requests: each gets a 4xx problem, none stores an order, none gets a 500."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from app.api.validation import MAX_BODY
from bench.stack import free_ports, stop_process
from simulators import serve
from tests.integration.conftest import ADMIN_TOKEN, Stack
from tests.support import DatabaseHandle

GOOD_LINE = {"product_id": 1, "quantity": 1}

BAD_BODIES: list[tuple[str, object, str]] = [
    ("array body", [], "body"),
    ("string body", "order", "body"),
    ("null body", None, "body"),
    ("missing customer", {"lines": [GOOD_LINE]}, "customer_id"),
    ("customer zero", {"customer_id": 0, "lines": [GOOD_LINE]}, "customer_id"),
    ("customer too big", {"customer_id": 2_147_483_648, "lines": [GOOD_LINE]}, "customer_id"),
    ("customer negative", {"customer_id": -5, "lines": [GOOD_LINE]}, "customer_id"),
    ("customer bool", {"customer_id": True, "lines": [GOOD_LINE]}, "customer_id"),
    ("customer float", {"customer_id": 1.0, "lines": [GOOD_LINE]}, "customer_id"),
    ("customer string", {"customer_id": "1", "lines": [GOOD_LINE]}, "customer_id"),
    ("customer huge", {"customer_id": 10**40, "lines": [GOOD_LINE]}, "customer_id"),
    ("no lines", {"customer_id": 1, "lines": []}, "lines"),
    ("lines not list", {"customer_id": 1, "lines": {"0": GOOD_LINE}}, "lines"),
    ("101 lines", {"customer_id": 1, "lines": [GOOD_LINE] * 101}, "lines"),
    ("line not object", {"customer_id": 1, "lines": [1]}, "lines[0]"),
    ("product zero", {"customer_id": 1, "lines": [{"product_id": 0, "quantity": 1}]}, "lines[0].product_id"),
    ("product bool", {"customer_id": 1, "lines": [{"product_id": False, "quantity": 1}]}, "lines[0].product_id"),
    ("product too big", {"customer_id": 1, "lines": [{"product_id": 2**31, "quantity": 1}]}, "lines[0].product_id"),
    ("quantity zero", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 0}]}, "lines[0].quantity"),
    ("quantity 1001", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1001}]}, "lines[0].quantity"),
    ("quantity bool", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": True}]}, "lines[0].quantity"),
    ("quantity float", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 2.5}]}, "lines[0].quantity"),
    ("quantity missing", {"customer_id": 1, "lines": [{"product_id": 1}]}, "lines[0].quantity"),
    ("second line bad", {"customer_id": 1, "lines": [GOOD_LINE, {"product_id": 1, "quantity": -1}]},
     "lines[1].quantity"),
    ("currency EUR", {"customer_id": 1, "lines": [GOOD_LINE], "currency": "EUR"}, "currency"),
    ("currency lower", {"customer_id": 1, "lines": [GOOD_LINE], "currency": "usd"}, "currency"),
    ("currency null", {"customer_id": 1, "lines": [GOOD_LINE], "currency": None}, "currency"),
]

RAW_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("truncated", b'{"customer_id": 1, "lines": ['),
    ("trailing garbage", b'{"customer_id": 1} x'),
    ("NaN", b'{"customer_id": NaN, "lines": []}'),
    ("Infinity", b'{"customer_id": Infinity, "lines": []}'),
    ("not utf-8", b'{"customer_id": "\xff\xfe"}'),
    ("deep nesting", b"[" * 100_00 + b"]" * 100_00),
    ("huge integer", b'{"customer_id": ' + b"9" * 5000 + b', "lines": []}'),
    ("lone surrogate", b'{"customer_id": 1, "lines": [], "x": "\\ud800"}'),
]


def _orders(stack: Stack) -> int:
    return len(stack.client.get("/api/orders?limit=500").get_json()["items"])


@pytest.mark.parametrize(("name", "body", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_schema_violations_are_400_naming_the_field(stack: Stack, name: str, body: object, field: str) -> None:
    before = _orders(stack)
    response = stack.client.post("/api/orders", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, name
    problem = response.get_json()
    assert response.content_type == "application/problem+json"
    assert {"type", "title", "status", "detail", "errors"} <= problem.keys()
    assert field in [e["field"] for e in problem["errors"]]
    assert _orders(stack) == before


@pytest.mark.parametrize(("name", "raw"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_malformed_json_is_400_or_a_problem_never_500(stack: Stack, name: str, raw: bytes) -> None:
    before = _orders(stack)
    response = stack.client.post("/api/orders", data=raw, content_type="application/json")
    assert 400 <= response.status_code < 500, name
    assert response.content_type == "application/problem+json"
    assert _orders(stack) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/xml"])
def test_non_json_media_types_are_415(stack: Stack, content_type: str) -> None:
    response = stack.client.post("/api/orders", data=b'{"customer_id": 1}', content_type=content_type)
    assert response.status_code == 415


def test_json_with_charset_and_vendor_suffix_are_accepted(stack: Stack) -> None:
    body = json.dumps({"customer_id": 1, "lines": [GOOD_LINE], "extra": {"ignored": True}})
    assert stack.client.post("/api/orders", data=body,
                             content_type="application/json; charset=utf-8").status_code == 201
    assert stack.client.post("/api/orders", data=body, content_type="application/vnd.api+json").status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("DELETE", "/api/orders"), ("PUT", "/api/orders/x"), ("GET", "/api/inventory/abc"),
     ("GET", "/api/inventory/0"), ("GET", "/api/inventory/99999999999"), ("GET", "/api/orders/" + "x" * 5000),
     ("POST", "/api/products")],
)
def test_odd_routes_and_methods_are_problems(stack: Stack, method: str, path: str) -> None:
    response = stack.client.open(path, method=method)
    assert 400 <= response.status_code < 500
    assert response.content_type == "application/problem+json"


def test_admin_routes_need_the_bearer_token(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        response = stack.client.get("/admin/flags", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = stack.client.put("/admin/flags/RealTimePayments", json={"enabled": False})
    assert response.status_code == 401
    assert stack.client.get("/admin/flags", headers=stack.admin()).get_json()["flags"][1]["enabled"] is True


def test_admin_page_is_served_without_a_token(stack: Stack) -> None:
    response = stack.client.get("/admin/")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")


def test_admin_page_may_not_be_framed_by_another_site(stack: Stack) -> None:
    response = stack.client.get("/admin/")
    policy = {name: values for name, *values in
              (directive.split() for directive in response.headers["Content-Security-Policy"].split(";"))}
    assert policy["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Frame-Options"] == "DENY"
    # The page still loads its own script and style and talks to its own origin only.
    assert policy["default-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    assert "'self'" in policy["script-src"] and "'self'" in policy["style-src"]


@pytest.mark.parametrize("body", [{"enabled": "no"}, {"enabled": 0}, {}, [], {"enabled": None}])
def test_bad_flag_bodies_are_400_and_change_nothing(stack: Stack, body: object) -> None:
    response = stack.client.put("/admin/flags/Notifications", json=body, headers=stack.admin())
    assert response.status_code == 400
    flags = {f["name"]: f for f in stack.client.get("/admin/flags", headers=stack.admin()).get_json()["flags"]}
    assert flags["Notifications"]["enabled"] is True


def test_unknown_flag_is_404(stack: Stack) -> None:
    assert stack.client.put("/admin/flags/Nope", json={"enabled": True}, headers=stack.admin()).status_code == 404


def test_flag_change_is_listed_with_who_and_when(stack: Stack) -> None:
    response = stack.client.put("/admin/flags/Notifications", json={"enabled": False}, headers=stack.admin())
    try:
        assert response.status_code == 200
        flag = response.get_json()
        assert flag["name"] == "Notifications" and flag["enabled"] is False
        assert flag["updated_by"] == "admin-api" and flag["updated_at"].endswith("Z")
        assert set(flag) == {"name", "enabled", "description", "updated_at", "updated_by"}
    finally:
        stack.client.put("/admin/flags/Notifications", json={"enabled": True}, headers=stack.admin())


# -- through gunicorn: a chunked body has no Content-Length, so only the server's own reading can bound it ----

ORDER_JSON = json.dumps({"customer_id": 3, "lines": [GOOD_LINE]}).encode()


@dataclass(frozen=True)
class Served:
    host: str
    port: int

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def orders(self) -> int:
        return len(requests.get(self.url("/api/orders?limit=500"), timeout=5).json()["items"])

    def send_chunked(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None,
                     ) -> tuple[int, str, dict[str, object]]:
        """`body` as 8 KiB chunks with Transfer-Encoding: chunked and no Content-Length."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))
            conn.request(method, path, body=chunks, encode_chunked=True,
                         headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served(database: DatabaseHandle, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The order API under gunicorn, as `make run` starts it (one process), over the real simulators."""
    sims = {kind: serve(kind) for kind in ("payment", "inventory", "notification")}
    tmp = tmp_path_factory.mktemp("gunicorn")
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_SCHEMA")}
    env.update(database.env())
    env.update({
        "API_PORT": str(port), "API_PROCESSES": "1", "API_THREADS": "4", "REDIS_URL": redis_url,
        "ORDERFLOW_REDIS_PREFIX": f"oftest:{uuid.uuid4().hex[:12]}", "ORDERFLOW_VAR": str(tmp),
        "ADMIN_TOKEN": ADMIN_TOKEN, **{f"{kind.upper()}_URL": sim.url for kind, sim in sims.items()},
    })
    log = tmp / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--config", "python:app.gunicorn_config",
             "app:create_app()"], cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
            stderr=subprocess.STDOUT)
    served = Served("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"gunicorn exited with {process.returncode}:\n{log.read_text()}"
            try:
                if requests.get(served.url("/health/live"), timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"gunicorn did not answer within 30 s:\n{log.read_text()}"
            time.sleep(0.1)
        yield served
    finally:
        stop_process(process, grace=10)
        for sim in sims.values():
            sim.shutdown()


def test_chunked_body_over_64_kib_is_413_and_stores_nothing(served: Served) -> None:
    before = served.orders()
    status, content_type, problem = served.send_chunked("POST", "/api/orders", ORDER_JSON + b" " * 70_000)
    assert status == 413
    assert content_type == "application/problem+json"
    assert problem["status"] == 413
    assert served.orders() == before


def test_chunked_body_of_exactly_64_kib_is_accepted(served: Served) -> None:
    before = served.orders()
    body = ORDER_JSON + b" " * (MAX_BODY - len(ORDER_JSON))
    status, _, order = served.send_chunked("POST", "/api/orders", body)
    assert status == 201, order
    assert order["customer_id"] == 3
    assert served.orders() == before + 1


def test_chunked_admin_body_over_64_kib_is_413_and_changes_nothing(served: Served) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = json.dumps({"enabled": False}).encode() + b" " * 70_000
    try:
        status, content_type, _ = served.send_chunked("PUT", "/admin/flags/Notifications", body, admin)
        assert status == 413
        assert content_type == "application/problem+json"
        flags = requests.get(served.url("/admin/flags"), headers=admin, timeout=5).json()["flags"]
        assert {f["name"]: f["enabled"] for f in flags}["Notifications"] is True
    finally:
        requests.put(served.url("/admin/flags/Notifications"), json={"enabled": True}, headers=admin, timeout=5)


@pytest.mark.parametrize("framing", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n"],
                         ids=["bad chunk size", "bad chunk terminator"])
def test_broken_chunked_framing_is_400_and_stores_nothing(served: Served, framing: bytes) -> None:
    before = served.orders()
    with socket.create_connection((served.host, served.port), timeout=15) as sock:
        sock.sendall(b"POST /api/orders HTTP/1.1\r\nHost: orderflow\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + framing)
        response = http.client.HTTPResponse(sock)
        response.begin()
        problem = json.loads(response.read())
    assert response.status == 400
    assert response.getheader("Content-Type") == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == ["body"]
    assert served.orders() == before
