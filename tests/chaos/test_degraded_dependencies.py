"""Orders keep coming while a dependency is slow, down or trickling: the order is taken, and where the
payment service answers in time it is confirmed with one capture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from chaosproxy.client import ToxiproxyClient
from tests.chaos.helpers import CONFIRMED, PENDING, order_body, scrape, timed_order, total
from tests.stack import RunningStack, running_stack

REQUEST_DEADLINE = 6.0
PAYMENT_ATTEMPT_TIMEOUT = 3.2  # room for 2000 +- 500 ms of latency
PAYMENT_TOTAL_TIMEOUT = 4.0
INVENTORY_TOTAL_TIMEOUT = 1.0
MARGIN = 1.0  # process scheduling on a loaded 2-core machine, not a policy
RECOVERY = 45.0  # a worker retry, plus the relay's republish delay when it loses the relay race

POLICIES = f"""
[api]
request_deadline = {REQUEST_DEADLINE}

[dependencies.payment]
attempt_timeout = {PAYMENT_ATTEMPT_TIMEOUT}
total_timeout = {PAYMENT_TOTAL_TIMEOUT}
retry = {{ max_retries = 1, base_delay = 0.05, max_delay = 0.1 }}
circuit_breaker = {{ minimum_throughput = 1000, break_duration = 1.0 }}

[dependencies.inventory]
attempt_timeout = 0.5
total_timeout = {INVENTORY_TOTAL_TIMEOUT}
retry = {{ max_retries = 1, base_delay = 0.02, max_delay = 0.05 }}
circuit_breaker = {{ break_duration = 1.0 }}

[jobs.payment]
attempt_timeout = 2.0
max_retries = 8
backoff_base = 0.1
backoff_max = 0.5
"""

PRIMED_PRODUCT = 5
NEVER_READ_PRODUCT = 19  # no test of this module reads it while inventory is up: it is never cached


pytestmark = pytest.mark.usefixtures("calm_dependencies")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("degraded"), policies=POLICIES) as running:
        yield running


def inventory(stack: RunningStack, product_id: int) -> requests.Response:
    return requests.get(f"{stack.api}/api/inventory/{product_id}", timeout=5)


def test_order_is_confirmed_through_two_seconds_of_payment_latency(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    chaos.add_toxic("payment", "latency", {"latency": 2000, "jitter": 500})
    response, elapsed = timed_order(stack)

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == CONFIRMED, order
    assert order["payment"]["attempts"] == 1
    assert elapsed >= 1.45, "the latency toxic was not in the way"
    assert elapsed < PAYMENT_TOTAL_TIMEOUT + MARGIN
    assert len(stack.captures(order["id"])) == 1


def test_inventory_down_orders_are_checked_against_cached_levels(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    primed = inventory(stack, PRIMED_PRODUCT)
    assert primed.status_code == 200 and primed.json()["source"] == "live"
    chaos.disable("inventory")

    response, elapsed = timed_order(stack, order_body(product_id=PRIMED_PRODUCT))
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["inventory_source"] == "cache"
    assert order["status"] == CONFIRMED
    assert elapsed < INVENTORY_TOTAL_TIMEOUT + MARGIN

    cached = inventory(stack, PRIMED_PRODUCT)
    assert cached.status_code == 200
    assert cached.json() == {"product_id": PRIMED_PRODUCT, "available": primed.json()["available"],
                             "source": "cache"}


def test_inventory_down_without_a_cached_level_still_takes_the_order(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    chaos.disable("inventory")

    response, elapsed = timed_order(stack, order_body(product_id=NEVER_READ_PRODUCT))
    assert response.status_code == 201, response.text
    assert response.json()["inventory_source"] == "unavailable"
    assert elapsed < INVENTORY_TOTAL_TIMEOUT + MARGIN

    level = inventory(stack, NEVER_READ_PRODUCT)
    assert level.status_code == 503
    assert level.headers["Content-Type"].startswith("application/problem+json")
    assert level.json()["status"] == 503


def test_trickled_payment_answer_is_cut_at_the_attempt_timeout(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    def timeouts() -> float:
        return total(scrape(f"{stack.api}/metrics"), "resilience_timeouts_total", service="payment")

    before = timeouts()
    # One byte every 100 ms: the payment answer would take far longer than any timeout of the policy.
    chaos.add_toxic("payment", "slicer", {"average_size": 1, "size_variation": 0, "delay": 100_000},
                    name="trickle")
    response, elapsed = timed_order(stack)
    chaos.remove_toxic("payment", "trickle")

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == PENDING
    assert order["payment"]["attempts"] >= 1
    assert PAYMENT_ATTEMPT_TIMEOUT - 0.1 <= elapsed <= PAYMENT_TOTAL_TIMEOUT + MARGIN
    assert timeouts() >= before + 1

    # The trickled attempt reached the payment service: the worker's retry finds the same payment.
    confirmed = stack.wait_for_status(order["id"], CONFIRMED, timeout=RECOVERY)
    assert confirmed["status"] == CONFIRMED, stack.tail()
    assert len(stack.captures(order["id"])) == 1
