"""The naive baseline of benchmark 2: a Flask endpoint with no policies, served like the order API.

`POST /healthy` makes the real-time path's dependency calls with plain `requests` (inventory GET, payment
POST, through the same chaos-proxy ports) and the same database writes as `place_order` (the repositories'
own statements, so the comparison is about everything around them). `POST /deferred` is the flag-off path:
inventory GET, the same INSERTs, one synchronous Celery enqueue. No validation beyond reading the JSON, no
idempotency keys, no timeouts beyond requests', no circuit, no metrics.

Served by `gunicorn -k gthread -w 2 --threads 8 'bench.baseline_app:create_app()'`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from flask import Flask, jsonify, request

NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench_noop"


def create_app() -> Flask:
    from app.adapters.db import make_engine
    from app.adapters.sql import SqlUnitOfWorkFactory
    from app.domain import (
        PENDING_MESSAGE,
        AttemptRecord,
        InventorySource,
        Order,
        OrderLine,
        OrderStatus,
        Payment,
        money,
        payment_key,
    )

    engine = make_engine(os.environ["DATABASE_URL"], schema=os.environ.get("DATABASE_SCHEMA") or None)
    uow = SqlUnitOfWorkFactory(engine)
    inventory_url = os.environ["INVENTORY_URL"].rstrip("/")
    payment_url = os.environ["PAYMENT_URL"].rstrip("/")
    local = threading.local()
    celery_lock = threading.Lock()
    celery_app: list[Any] = []
    app = Flask("orderflow-bench-baseline")

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session  # type: ignore[no-any-return]

    def celery() -> Any:
        with celery_lock:
            if not celery_app:
                from app.config import Settings
                from workers.celery_app import make_celery

                celery_app.append(make_celery(Settings.from_env(), role="publisher"))
        return celery_app[0]

    def new_order(body: dict[str, Any], *, real_time: bool) -> tuple[Order, datetime]:
        lines = [(int(line["product_id"]), int(line["quantity"])) for line in body["lines"]]
        with uow(read_only=True) as unit:
            catalog = unit.catalog.products_by_id(pid for pid, _ in lines)
        for pid, _ in lines:
            stock = session().get(f"{inventory_url}/stock/{pid}", timeout=5)
            stock.raise_for_status()
        now = datetime.now(UTC)
        order = Order(
            id=uuid.uuid4().hex,
            customer_id=int(body["customer_id"]),
            status=OrderStatus.PAYMENT_PENDING,
            currency="USD",
            lines=tuple(OrderLine(pid, qty, catalog[pid].unit_price) for pid, qty in lines),
            payment=Payment(),
            inventory_source=InventorySource.LIVE,
            created_at=now,
            updated_at=now,
            message=PENDING_MESSAGE,
        )
        due = now + timedelta(seconds=10) if real_time else now
        with uow() as unit:
            unit.orders.add(order)
            unit.outbox.payments.add(order.id, due_at=due, now=now)
            unit.commit()
        return order, now

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "pass"})

    @app.post("/healthy")
    def healthy() -> Any:
        order, _ = new_order(request.get_json(), real_time=True)
        started_at, started = datetime.now(UTC), time.monotonic()
        payment = session().post(
            f"{payment_url}/payments",
            timeout=5,
            headers={"Idempotency-Key": payment_key(order.id)},
            json={
                "order_id": order.id,
                "customer_id": order.customer_id,
                "amount": money(order.total),
                "currency": "USD",
            },
        )
        now = datetime.now(UTC)
        attempt = AttemptRecord(
            "api",
            started_at,
            int((time.monotonic() - started) * 1000),
            "captured" if payment.status_code == 201 else "error",
            payment.status_code,
        )
        with uow() as unit:
            unit.orders.record_attempts(order.id, [attempt], now=now)
            if payment.status_code == 201:
                unit.orders.move(
                    order.id,
                    from_status=OrderStatus.PAYMENT_PENDING,
                    to_status=OrderStatus.CONFIRMED,
                    now=now,
                    payment_id=payment.json()["id"],
                )
                unit.outbox.payments.close(order.id, now=now)
                unit.outbox.notifications.add(order.id, "order_confirmed", now=now)
            unit.commit()
        status = "Confirmed" if payment.status_code == 201 else "PaymentPending"
        return jsonify({"id": order.id, "status": status}), 201

    @app.post("/deferred")
    def deferred() -> Any:
        order, _ = new_order(request.get_json(), real_time=False)
        celery().send_task(NOOP_TASK, args=[order.id], queue=NOOP_QUEUE)
        return jsonify({"id": order.id, "status": "PaymentPending"}), 201

    return app
