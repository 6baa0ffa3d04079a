"""One purchase intent is one order and at most one capture, under the faults that happen every week: the
database stalling after the order is stored, and API processes killed while their captures are in flight.

Both scenarios are black-box against `make run`'s real processes: the client only sees HTTP, and retries a
request whose answer it did not get with the same Idempotency-Key, as a careful client does."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url

from chaosproxy.client import ToxiproxyClient
from tests.chaos.helpers import CONFIRMED, PENDING, api_worker_pids, set_faults, wait_all_confirmed
from tests.stack import RunningStack, running_stack
from tests.support import wait_until

REQUEST_DEADLINE = 4.0
POLICIES = f"""
[api]
request_deadline = {REQUEST_DEADLINE}

[dependencies.payment]
attempt_timeout = 3.0
total_timeout = 3.5
retry = {{ max_retries = 0 }}

[dependencies.inventory]
attempt_timeout = {REQUEST_DEADLINE}
total_timeout = {REQUEST_DEADLINE}

[jobs.payment]
attempt_timeout = 3.0
max_retries = 10
backoff_base = 0.1
backoff_max = 0.5
"""
# The claim of a request that never finished lapses after the request deadline; then a retry is answered.
RETRY_FOR = REQUEST_DEADLINE * 3 + 10.0
SETTLE = 45.0

pytestmark = pytest.mark.usefixtures("calm_dependencies")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("charge-once"), policies=POLICIES) as running:
        yield running


def body(customer_id: int) -> dict[str, Any]:
    return {"customer_id": customer_id, "lines": [{"product_id": 2, "quantity": 1}]}


def place(stack: RunningStack, key: str, customer_id: int, *, timeout: float = 20.0) -> requests.Response:
    return requests.post(f"{stack.api}/api/orders", json=body(customer_id), headers={"Idempotency-Key": key},
                         timeout=timeout)


def retry_until_answered(stack: RunningStack, key: str, customer_id: int) -> requests.Response:
    """The careful client: a 409 in-use, a 5xx or no answer is sent again later with the same key."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            response = place(stack, key, customer_id)
            if response.status_code != 409 and response.status_code < 500:
                return response
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"key {key} never answered"
        time.sleep(0.5)


def orders_of(stack: RunningStack, customer_id: int) -> list[dict[str, Any]]:
    items = requests.get(f"{stack.api}/api/orders", params={"limit": 500}, timeout=5).json()["items"]
    return [o for o in items if o["customer_id"] == customer_id]


def new_customer() -> int:
    return random.randint(100_000, 2_000_000_000)


@contextmanager
def database_stalled(stack: RunningStack) -> Iterator[None]:
    """Another writer holds the database: SQLite's write lock, or PostgreSQL table locks that let reads
    through and make every write of the API wait (and give up after its lock timeout)."""
    assert stack.database is not None
    url = make_url(stack.database.url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database or "", isolation_level=None, timeout=5)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as pg:
        pg.execute(f'SET search_path TO "{stack.database.schema}"')
        pg.execute("LOCK TABLE orders, payment_attempts, payment_jobs, idempotency_keys IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def test_a_database_stall_after_the_order_is_stored_never_makes_a_second_order(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    customer = new_customer()
    set_faults(stack, "payment", latency_ms=1500)  # the capture is in flight while the database stalls
    answers: list[requests.Response | BaseException] = []
    started = time.monotonic()

    def first_request() -> None:
        try:
            answers.append(place(stack, "stall-1", customer))
        except BaseException as exc:  # noqa: BLE001 - the test reads it below
            answers.append(exc)

    client = threading.Thread(target=first_request)
    client.start()
    assert wait_until(lambda: bool(orders_of(stack, customer)), timeout=10, interval=0.05)
    with database_stalled(stack):
        client.join(REQUEST_DEADLINE + 5)
        took = time.monotonic() - started
    set_faults(stack, "payment")

    [first] = answers
    assert isinstance(first, requests.Response), first
    # The order was stored before the stall: whatever failed after, the answer must not deny it.
    assert first.status_code == 201, first.text
    assert first.json()["status"] == PENDING
    assert took <= REQUEST_DEADLINE + 1.0, took
    order_id = first.json()["id"]

    again = retry_until_answered(stack, "stall-1", customer)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == order_id
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert [o["id"] for o in orders_of(stack, customer)] == [order_id]
    assert not wait_all_confirmed(stack, [order_id], timeout=SETTLE), stack.tail()
    assert len(stack.captures(order_id)) == 1


def test_api_processes_killed_mid_request_leave_one_order_and_one_capture_per_key(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    customer = new_customer()
    keys = [f"killed-{customer}-{i}" for i in range(6)]
    set_faults(stack, "payment", latency_ms=2000)

    def first_try(key: str) -> int | None:
        try:
            return place(stack, key, customer).status_code
        except requests.RequestException:
            return None  # the process serving it was killed: no answer

    with ThreadPoolExecutor(len(keys)) as pool:
        firsts = [pool.submit(first_try, key) for key in keys]
        # Every order stored and its capture on its way to the payment service: now the API processes die.
        assert wait_until(lambda: len(orders_of(stack, customer)) == len(keys), timeout=15, interval=0.05), \
            stack.tail()
        victims = api_worker_pids(stack)
        assert victims
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        lost = [f.result() for f in firsts]
    set_faults(stack, "payment")
    assert lost.count(None) >= 1, lost  # at least some clients never got their answer

    answers = {key: retry_until_answered(stack, key, customer) for key in keys}
    assert all(r.status_code == 201 for r in answers.values()), {k: r.text for k, r in answers.items()}
    order_ids = {key: r.json()["id"] for key, r in answers.items()}
    assert len(set(order_ids.values())) == len(keys)
    stored = orders_of(stack, customer)
    assert sorted(o["id"] for o in stored) == sorted(order_ids.values())

    assert not wait_all_confirmed(stack, list(order_ids.values()), timeout=SETTLE), stack.tail()
    for order_id in order_ids.values():
        assert len(stack.captures(order_id)) == 1, order_id
        assert stack.get_order(order_id)["status"] == CONFIRMED
