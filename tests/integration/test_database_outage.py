"""A database that cannot be reached within 2 s is a 503 with Retry-After, never a 500 or a hang."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import redis
from sqlalchemy.engine import make_url

from app import create_app
from app.adapters.migrate import upgrade
from app.config import Settings
from app.policies import parse_policies
from tests.support import FakeInventory, FakePayments, FakePublisher

ORDER = {"customer_id": 3, "lines": [{"product_id": 1, "quantity": 1}]}


def _app(database_url: str, redis_url: str, schema: str | None = None):  # type: ignore[no-untyped-def]
    settings = Settings(database_url=database_url, database_schema=schema, redis_url=redis_url,
                        admin_token="t")
    return create_app(settings, policies=parse_policies(""), redis=redis.Redis.from_url(redis_url),
                      dependencies={"inventory": FakeInventory(), "payments": FakePayments(),
                                    "publisher": FakePublisher()})


def test_unreachable_postgresql_is_503_with_retry_after(redis_url: str) -> None:
    app = _app("postgresql+psycopg://postgres@127.0.0.1:1/test", redis_url)
    client = app.test_client()
    for method, path, body in (("POST", "/api/orders", ORDER), ("GET", "/api/orders", None),
                               ("GET", "/api/products", None), ("GET", "/api/orders/abc", None)):
        started = time.monotonic()
        response = client.open(path, method=method, data=json.dumps(body) if body else None,
                               content_type="application/json")
        assert response.status_code == 503, (method, path)
        assert response.headers["Retry-After"]
        assert response.content_type == "application/problem+json"
        assert time.monotonic() - started < 2.0 + 1.0
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "fail" and body["checks"]["database"][0]["status"] == "fail"
    assert client.get("/health/live").status_code == 200


def test_a_sqlite_write_lock_held_too_long_is_503_and_stores_nothing(tmp_path: Path, redis_url: str) -> None:
    url = f"sqlite:///{tmp_path}/orderflow.db"
    upgrade(url)
    path = make_url(url).database
    assert path and Path(path).exists()
    app = _app(url, redis_url)
    client = app.test_client()
    before = len(client.get("/api/orders?limit=500").get_json()["items"])
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        response = client.post("/api/orders", data=json.dumps(ORDER), content_type="application/json")
        elapsed = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert elapsed < 2.0 + 1.5
    assert len(client.get("/api/orders?limit=500").get_json()["items"]) == before
    assert client.post("/api/orders", data=json.dumps(ORDER), content_type="application/json").status_code == 201
