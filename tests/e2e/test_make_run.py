"""`make run` end to end: the real supervisor, gunicorn, Celery, chaos proxy and simulators."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.stack import STACK_PROCESSES, RunningStack, alive, descendants, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def test_a_healthy_stack_confirms_orders_in_real_time(stack: RunningStack) -> None:
    response = stack.order()
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "Confirmed"
    assert response.headers["Location"] == f"/api/orders/{order['id']}"
    assert len(stack.captures(order["id"])) == 1


def test_customer_402_is_declined(stack: RunningStack) -> None:
    response = stack.order({"customer_id": 402, "lines": [{"product_id": 2, "quantity": 1}]})
    assert response.status_code == 402
    assert response.json()["type"].endswith("/payment-declined")


def test_flag_off_takes_the_order_pending_and_a_worker_confirms_it(stack: RunningStack) -> None:
    stack.set_flag("RealTimePayments", False)
    try:
        time.sleep(2.1)  # every process obeys a flag change within 2 s
        started = time.monotonic()
        response = stack.order()
        assert time.monotonic() - started < 0.25 + 0.5
        order = response.json()
        assert response.status_code == 201 and order["status"] == "PaymentPending"
        assert order["message"] == "Order created. Payment will be processed shortly."
    finally:
        stack.set_flag("RealTimePayments", True)
        time.sleep(2.1)
    confirmed = stack.wait_for_status(order["id"], "Confirmed", timeout=30)
    assert confirmed["status"] == "Confirmed", stack.tail()
    assert confirmed["payment"]["attempts"] == 1
    assert len(stack.captures(order["id"])) == 1


def test_disabling_the_payment_proxy_turns_orders_pending_and_back(stack: RunningStack) -> None:
    pending = order_taken_while_the_payment_proxy_is_down(stack)
    assert stack.wait_for_status(pending["id"], "Confirmed", timeout=40)["status"] == "Confirmed", stack.tail()
    assert stack.order().json()["status"] == "Confirmed"


def test_api_metrics_aggregate_every_gunicorn_process(stack: RunningStack) -> None:
    text = requests.get(f"{stack.api}/metrics", timeout=5).text
    assert "orders_created_total" in text
    assert "resilience_circuitbreaker_state" in text


def test_admin_page_and_readiness(stack: RunningStack) -> None:
    assert requests.get(f"{stack.api}/admin/", timeout=5).status_code == 200
    ready = requests.get(f"{stack.api}/health/ready", timeout=5).json()
    assert ready["status"] == "pass", ready


def test_parallel_requests_with_one_idempotency_key_make_one_order(stack: RunningStack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = {"customer_id": 77, "lines": [{"product_id": 3, "quantity": 1}]}
    key = f"parallel-{time.time_ns()}"

    def send(_: int) -> requests.Response:
        return requests.post(f"{stack.api}/api/orders", json=body, headers={"Idempotency-Key": key}, timeout=15)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if "Idempotent-Replayed" not in r.headers]
    assert len(originals) == 1
    assert {r.json()["id"] for r in created} == {originals[0].json()["id"]}
    assert all(r.json()["type"].endswith("/idempotency-key-in-use") for r in responses if r.status_code == 409)
    orders = requests.get(f"{stack.api}/api/orders?limit=500", timeout=5).json()["items"]
    assert sum(1 for o in orders if o["customer_id"] == 77) == 1
    replay = send(0)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == originals[0].content


def test_a_worker_killed_outright_is_restarted_and_pending_orders_still_confirm(stack: RunningStack) -> None:
    def worker_main() -> int | None:
        supervisor = [pid for pid in descendants(stack.process.pid) if b"app.stack" in _cmdline(pid)]
        for pid in descendants(supervisor[0]) if supervisor else ():
            if b"celery" in _cmdline(pid) and _parent(pid) == supervisor[0] and alive(pid):
                return pid
        return None

    killed = worker_main()
    assert killed is not None, stack.tail()
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (restarted := worker_main()) in (None, killed):
        assert time.monotonic() < deadline, f"no new worker:\n{stack.tail()}"
        time.sleep(0.1)
    assert stack.process.poll() is None, "the stack stopped instead of restarting its worker"

    pending = order_taken_while_the_payment_proxy_is_down(stack)
    assert stack.wait_for_status(pending["id"], "Confirmed", timeout=60)["status"] == "Confirmed", stack.tail()
    assert len(stack.captures(pending["id"])) == 1
    assert worker_main() == restarted
    assert "worker exited with -9; restarting it" in stack.log.read_text(errors="replace")


def test_the_stack_writes_one_stream_of_json_lines_each_naming_its_process(stack: RunningStack) -> None:
    """The log file is no terminal: every line the stack wrote is JSON, gunicorn's and Celery's included."""
    order = stack.order().json()  # confirmed: the worker receives its notification task

    def entries() -> list[dict[str, Any]]:
        lines = stack.log.read_text(errors="replace").splitlines()
        first = next(i for i, line in enumerate(lines) if line.startswith("{"))  # before it: make's own output
        return [json.loads(line) for line in lines[first:]]

    deadline = time.monotonic() + 20
    while not any(e["logger"] == "celery.worker.strategy" for e in entries()):
        assert time.monotonic() < deadline, f"no task received by the worker:\n{stack.tail()}"
        time.sleep(0.2)
    found = entries()
    assert {e["process"] for e in found} <= STACK_PROCESSES
    assert all({"ts", "level", "logger", "msg", "pid"} <= e.keys() for e in found)

    def one(process: str, logger: str, text: str) -> dict[str, Any]:
        matching = [e for e in found
                    if e["process"] == process and e["logger"] == logger and text.lower() in e["msg"].lower()]
        assert matching, f"no line of {process} from {logger} saying {text!r}:\n{stack.tail()}"
        return matching[0]

    one("api", "gunicorn.error", "Booting worker with pid")
    one("api", "gunicorn.access", '"POST /api/orders HTTP/1.1" 201')
    one("worker", "celery.apps.worker", "ready.")
    one("worker", "celery.worker.strategy", "] received")
    one("supervisor", "orderflow.supervisor", "order API       http://")
    one("chaosproxy", "chaosproxy", "populated 3 proxies")
    for kind in ("payment", "inventory", "notification"):
        one(kind, "simulators", f"{kind} simulator listening on")
    if "REDIS_URL" not in os.environ:  # the embedded redis-server, whose lines the supervisor re-emits
        assert one("redis", "redis-server", "ready to accept connections")["level"] == "info"
    assert order["status"] == "Confirmed"


def order_taken_while_the_payment_proxy_is_down(stack: RunningStack) -> dict[str, Any]:
    requests.post(f"{stack.chaos}/proxies/payment", json={"enabled": False}, timeout=5).raise_for_status()
    try:
        pending: dict[str, Any] = stack.order().json()
        assert pending["status"] == "PaymentPending"
        return pending
    finally:
        requests.post(f"{stack.chaos}/proxies/payment", json={"enabled": True}, timeout=5).raise_for_status()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
