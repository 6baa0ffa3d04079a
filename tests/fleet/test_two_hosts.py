"""Two OrderFlow hosts on one PostgreSQL, one Redis and one broker, as a fleet behind a load balancer runs.

Host A and host B each run an order API and a Celery worker with the outbox relay on; the simulators and the
chaos proxy are shared, with a payment proxy per host so one host's path to the payment service can fail or
slow down alone. The test checks what a fleet relies on:

- a circuit that host A's calls open is open on host B: B's admin API shows it, B's orders make no call;
- clients spread over both APIs; host A dies whole (SIGKILL of its API and its worker) while its worker's
  payments are in flight; the clients go on against B (the same Idempotency-Key where a request died);
- host B's relay takes back the jobs A's worker had claimed once their lease runs out, and its worker
  confirms them: every order ends Confirmed with exactly one capture at the payment service.

PostgreSQL only: a fleet cannot share a SQLite file (CI runs this with DATABASE_URL on PostgreSQL).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import Engine, select

from app.adapters.db import make_engine
from app.adapters.sql.tables import orders as orders_table
from app.adapters.sql.tables import payment_jobs
from tests.fleet.hosts import Fleet, Host, fleet, wait_until
from tests.support import fresh_database

pytestmark = pytest.mark.timeout(90)

# Short enough to run in seconds: a job claimed by a dead worker is taken back 4 + 1 s after its claim
# (jobs.payment.attempt_timeout + ORDERFLOW_LEASE_MARGIN). The payment circuit opens on 4 calls, half failed.
POLICIES = """
[api]
request_deadline = 3.0

[dependencies.payment]
attempt_timeout = 1.0
total_timeout = 1.5
retry = { max_retries = 0 }
circuit_breaker = { failure_ratio = 0.5, sampling_duration = 10.0, minimum_throughput = 4, break_duration = 5.0 }

[dependencies.inventory]
attempt_timeout = 2.0
total_timeout = 2.0

[jobs.payment]
attempt_timeout = 4.0
max_retries = 30
backoff_base = 0.1
backoff_max = 0.5
"""
LEASE_MARGIN = "1"
# A job runs in well under a second on host B's healthy path: a claim held this long is one of host A's worker,
# whose path to the payment service hangs (and which gives up on it only after attempt_timeout, 4 s).
HELD = 2.0


@pytest.fixture
def two_hosts(tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str) -> Iterator[Fleet]:
    url = os.environ.get("DATABASE_URL") or ""
    if not url or url.startswith("sqlite"):
        pytest.skip("a fleet shares one PostgreSQL: set DATABASE_URL to PostgreSQL (CI does)")
    with (
        fresh_database() as database,
        fleet(tmp_path, database, redis_url, key_prefix, policies=POLICIES, hosts=("a", "b"),
              extra_env={"ORDERFLOW_LEASE_MARGIN": LEASE_MARGIN, "ORDERFLOW_REPUBLISH_AFTER": "3"}) as running,
    ):
        yield running


@pytest.fixture
def engine(two_hosts: Fleet) -> Iterator[Engine]:
    """The fleet's database, read by the test."""
    database = make_engine(two_hosts.env["DATABASE_URL"], schema=two_hosts.env.get("DATABASE_SCHEMA"), pool_size=2)
    yield database
    database.dispose()


@dataclass
class Clients:
    """Threads placing orders one after another, each on the next host in turn; a request whose host is gone
    (connection refused or cut) is sent again to the other host with the same Idempotency-Key and body."""

    hosts: list[Host]
    placed: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    created_on: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> the host that answered
    answered_by: dict[str, int] = field(default_factory=dict)
    failovers: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, first: int) -> None:
        turn = first
        while not self.stop.is_set():
            key = f"fleet-{uuid.uuid4().hex}"
            try:
                order_id, host = self._place(key, turn)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                with self._lock:
                    self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                return
            with self._lock:
                self.placed[key] = order_id
                self.created_on[key] = host
                self.answered_by[host] = self.answered_by.get(host, 0) + 1
            turn += 1

    def _place(self, key: str, turn: int) -> tuple[str, str]:
        deadline = time.monotonic() + 20
        attempt = 0
        while time.monotonic() < deadline:
            host = self.hosts[(turn + attempt) % len(self.hosts)]
            try:
                response = host.order(key=key)
            except requests.ConnectionError:
                with self._lock:
                    self.failovers += 1
                attempt += 1
                continue
            if response.status_code == 409 and response.json()["type"].endswith("/idempotency-key-in-use"):
                time.sleep(0.2)  # the dead host's claim on the key lapses after the request deadline
                continue
            assert response.status_code == 201, f"{host.name}: {response.status_code} {response.text}"
            return str(response.json()["id"]), host.name
        raise AssertionError(f"no host took the order {key}")

    def count(self) -> int:
        with self._lock:
            return len(self.placed)


def claims_held(engine: Engine, seen: dict[str, tuple[datetime, float]]) -> set[str]:
    """Orders whose job has been running under one claim (one lease) for HELD seconds or more. `seen` keeps
    each running claim's lease and when it was first seen, across calls."""
    with engine.connect() as conn:
        rows = conn.execute(select(payment_jobs.c.order_id, payment_jobs.c.lease_until)
                            .where(payment_jobs.c.state == "running")).all()
    now = time.monotonic()
    held = set()
    for order_id, lease_until in rows:
        first = seen.get(order_id)
        if first is None or first[0] != lease_until:
            seen[order_id] = (lease_until, now)
        elif now - first[1] >= HELD:
            held.add(order_id)
    return held


def statuses(engine: Engine, order_ids: list[str]) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(orders_table.c.id, orders_table.c.status)
                            .where(orders_table.c.id.in_(order_ids))).all()
    return {str(order_id): str(status) for order_id, status in rows}


def test_two_hosts_share_circuits_and_the_survivor_finishes_the_dead_hosts_payments(
    two_hosts: Fleet, engine: Engine
) -> None:
    a, b = two_hosts.hosts["a"], two_hosts.hosts["b"]
    orders: list[str] = []

    # 1. Host A's path to the payment service resets every connection: A's calls open the shared circuit.
    two_hosts.toxic("payment-a", "reset_peer", {"timeout": 0}, name="broken")

    def opened_by_a() -> bool:
        response = a.order()
        assert response.status_code == 201, response.text
        orders.append(response.json()["id"])
        return a.circuit("payment") == "open"

    wait_until(opened_by_a, timeout=15, what="host A's calls to open the payment circuit", on_timeout=a.tails)
    # Host B sees it open: in its admin API, in its readiness, and in its orders, which make no call.
    assert b.circuit("payment") == "open"
    readiness = b.session.get(f"{b.api}/health/ready", timeout=5).json()
    assert "payment" in readiness["checks"]["circuit-breakers"][0]["output"]
    response = b.order()
    assert response.status_code == 201, response.text
    assert (response.json()["status"], response.json()["payment"]["attempts"]) == ("PaymentPending", 0)
    orders.append(response.json()["id"])
    # Reset on B is seen by A.
    two_hosts.remove_toxic("payment-a", "broken")
    assert b.admin("POST", "/admin/circuits/payment/reset").json()["state"] == "closed"
    assert a.circuit("payment") == "closed"

    # 2. Payments by the workers only (flag off, obeyed by each host within 2 s)...
    assert b.admin("PUT", "/admin/flags/RealTimePayments", json={"enabled": False}).status_code == 200
    for host in (a, b):
        def obeyed(host: Host = host) -> bool:
            response = host.order()
            assert response.status_code == 201, response.text
            orders.append(response.json()["id"])
            return response.json()["payment"]["attempts"] == 0
        wait_until(obeyed, timeout=10, what=f"host {host.name} to obey the flag")
    # ...and host A's path to the payment service answers after a minute: A's worker holds its jobs, claimed.
    two_hosts.toxic("payment-a", "latency", {"latency": 60000}, name="slow")

    clients = Clients([a, b])
    threads = [threading.Thread(target=clients.run, args=(first,), daemon=True) for first in (0, 1)]
    for thread in threads:
        thread.start()
    seen: dict[str, tuple[datetime, float]] = {}
    held: set[str] = set()

    def a_holds_claims() -> bool:
        held.update(claims_held(engine, seen))
        return bool(held) and clients.answered_by.get("a", 0) > 0

    wait_until(a_holds_claims, timeout=20, what="host A's worker to hold claimed jobs",
               on_timeout=lambda: f"{clients.answered_by}\n{a.tails()}")
    assert not clients.errors, clients.errors
    placed_before = clients.count()
    a.kill()  # mid-payment: its worker's calls are still waiting on the payment service

    # The clients go on against B alone; orders keep being taken.
    wait_until(lambda: clients.count() >= placed_before + 6 or bool(clients.errors), timeout=20,
               what="orders after host A died", on_timeout=b.tails)
    clients.stop.set()
    for thread in threads:
        thread.join(timeout=20)
    assert not clients.errors, clients.errors
    assert clients.failovers >= 1  # requests meant for A went to B
    assert clients.answered_by.get("a", 0) > 0 and clients.answered_by.get("b", 0) > 0
    orders += clients.placed.values()

    # An order host A took is the same order on host B for the same key.
    key = next(k for k, host in clients.created_on.items() if host == "a")
    replay = b.order(key=key)
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (201, "true")
    assert replay.json()["id"] == clients.placed[key]

    # 3. Host B's relay takes the dead worker's jobs back once their lease runs out; B's worker confirms them.
    wait_until(lambda: set(statuses(engine, orders).values()) == {"Confirmed"}, timeout=30,
               what="every order Confirmed", on_timeout=lambda: f"{statuses(engine, orders)}\n{b.tails()}")
    assert len(statuses(engine, orders)) == len(set(orders))
    assert "lease_expired" in b.worker_log()
    with engine.connect() as conn:
        jobs = {row.order_id: row for row in conn.execute(
            select(payment_jobs).where(payment_jobs.c.order_id.in_(held))).all()}
    for order in held:
        # Done, with the dead worker's lost run counted as a retry: taken back by the relay, not finished by A.
        assert (jobs[order].state, jobs[order].retries >= 1) == ("done", True), (order, jobs[order])
    for order in set(orders):
        captures = two_hosts.captures(order)
        assert len(captures) == 1, (order, captures)
        stored = b.session.get(f"{b.api}/api/orders/{order}", timeout=5).json()
        assert stored["payment"]["payment_id"] == captures[0]["id"]
