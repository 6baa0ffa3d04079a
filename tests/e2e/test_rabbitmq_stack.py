"""`make run` with BROKER_URL naming RabbitMQ: the workers pay the orders the API leaves pending and consume
the dead letters through RabbitMQ, while Redis keeps the caches and the circuit state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.broker import rabbitmq_url
from tests.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(180)

# A failing payment gives up at once, so a dead letter comes within a second or two.
FAST_DEAD_LETTERS = """
[jobs.payment]
attempt_timeout = 2.0
max_retries = 0
backoff_base = 0.1
backoff_max = 0.2
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    broker = rabbitmq_url()
    with running_stack(tmp_path_factory.mktemp("rabbitmq-stack"), extra_env={"BROKER_URL": broker},
                       policies=FAST_DEAD_LETTERS) as running:
        yield running


@pytest.fixture(scope="module")
def workers_pay(stack: RunningStack) -> Iterator[None]:
    stack.set_flag("RealTimePayments", False)
    yield
    stack.set_flag("RealTimePayments", True)


def pending_orders(stack: RunningStack, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """`count` orders the API left PaymentPending. An API process that has not yet seen the flag change (it has
    2 s) still pays in real time; such an order is checked like the others, but not counted."""
    pending: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(pending) < count and time.monotonic() < deadline:
        response = stack.order()
        assert response.status_code == 201, response.text
        order = response.json()
        if order["status"] == "PaymentPending":
            pending.append(order)
        else:
            assert order["status"] == "Confirmed" and len(stack.captures(order["id"])) == 1
    assert len(pending) == count, f"only {len(pending)} orders left pending within {timeout} s"
    return pending


def test_the_stack_is_ready_with_rabbitmq_as_its_broker(stack: RunningStack) -> None:
    ready = requests.get(f"{stack.api}/health/ready", timeout=5).json()
    assert ready["checks"]["broker"] == [{"status": "pass"}], ready
    assert "Connected to amqp://" in stack.log.read_text(errors="replace")


@pytest.mark.usefixtures("workers_pay")
def test_orders_left_pending_are_confirmed_by_the_workers_with_one_capture_each(stack: RunningStack) -> None:
    orders = pending_orders(stack, 3)
    for order in orders:
        confirmed = stack.wait_for_status(order["id"], "Confirmed", timeout=30)
        assert confirmed["status"] == "Confirmed", stack.tail()
        assert confirmed["payment"]["attempts"] == 1
        assert [c["id"] for c in stack.captures(order["id"])] == [confirmed["payment"]["payment_id"]]


@pytest.mark.usefixtures("workers_pay")
def test_a_payment_that_keeps_failing_is_dead_lettered_and_the_message_consumed(stack: RunningStack) -> None:
    faults = f"{stack.simulators['payment']}/faults"
    requests.put(faults, json={"error_rate": 1.0, "error_status": 503}, timeout=5).raise_for_status()
    try:
        [order] = pending_orders(stack, 1)
        failed = stack.wait_for_status(order["id"], "PaymentFailed", timeout=30)
    finally:
        requests.delete(faults, timeout=5).raise_for_status()
    assert failed["payment"]["failure_reason"] == "retries_exhausted", stack.tail()
    letters = requests.get(f"{stack.api}/admin/dead-letters", headers=stack.admin(), timeout=5).json()["items"]
    assert [d["order_id"] for d in letters if d["order_id"] == order["id"]] == [order["id"]]

    def consumed() -> bool:
        return any("payment_dead_lettered" in line and order["id"] in line
                   for line in stack.log.read_text(errors="replace").splitlines())

    deadline = time.monotonic() + 15
    while not consumed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert consumed(), stack.tail()
