"""The default stack (`make run`: SQLite and the embedded Redis) answers every valid order with a 2xx under
64 concurrent connections, with the real-time payment and with the flag `RealTimePayments` off.

A bounded number of orders, no timing assertion: the writers queue for SQLite's single write lock, and a
queue that keeps moving is not an unreachable database (a 503 is for that alone).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.stack import RunningStack, running_stack

pytestmark = pytest.mark.timeout(300)

CONNECTIONS = 64
ORDERS_PER_CONNECTION = 10
ORDER = {"customer_id": 7, "lines": [{"product_id": 1, "quantity": 1}]}
FLAG_PROPAGATION = 2.5  # every process obeys a flag change within 2 s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    url = os.environ.get("DATABASE_URL", "")
    if url and not url.startswith("sqlite"):
        pytest.skip("the SQLite default: DATABASE_URL names another database")
    with running_stack(Path(tmp_path_factory.mktemp("sqlite-load"))) as running:
        yield running


def place_concurrently(stack: RunningStack) -> tuple[Counter[int], list[str]]:
    """CONNECTIONS keep-alive connections, each posting ORDERS_PER_CONNECTION orders one after the other."""
    local = threading.local()

    def one(_: int) -> tuple[int, str]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(f"{stack.api}/api/orders", json=ORDER, timeout=60)
        return response.status_code, response.text[:300]

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        answers = list(pool.map(one, range(CONNECTIONS * ORDERS_PER_CONNECTION)))
    return Counter(status for status, _ in answers), [body for status, body in answers if status >= 300][:5]


def test_every_valid_order_is_answered_2xx_with_the_real_time_payment(stack: RunningStack) -> None:
    statuses, failures = place_concurrently(stack)
    assert set(statuses) <= {200, 201}, (statuses, failures, stack.tail(30))


def test_every_valid_order_is_answered_2xx_with_real_time_payments_off(stack: RunningStack) -> None:
    stack.set_flag("RealTimePayments", False)
    try:
        time.sleep(FLAG_PROPAGATION)
        statuses, failures = place_concurrently(stack)
    finally:
        stack.set_flag("RealTimePayments", True)
    assert set(statuses) <= {200, 201}, (statuses, failures, stack.tail(30))
