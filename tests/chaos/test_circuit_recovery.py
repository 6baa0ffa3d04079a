"""Every circuit closes once its half-open probe succeeds, whichever call path runs the probe: a single stock
read, the fan-out of an order's stock check, a hedged read, the API's real-time payment and a worker's. The
circuit is opened by the simulator's 503s, seen open, then half-open once its break ends; after the probe's
success the admin API, readiness and the gauge of the API and of the workers show it closed within 1 s."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.chaos.helpers import CONFIRMED, PENDING, circuit_state, created, scrape, set_faults
from tests.stack import RunningStack, running_stack
from tests.support import wait_until

MINIMUM_THROUGHPUT = 4
INVENTORY_BREAK = 1.0
# Longer than a flag change takes to reach every process (2 s): the probe order of the workers' scenario is
# placed after a whole break, so no API process still pays in real time.
PAYMENT_BREAK = 2.5
HEDGE_DELAY = 0.1
PROBE_LATENCY_MS = 400  # well over the hedging delay: a hedge is asked for while the probe runs
SHOWN_WITHIN = 1.0  # CONTRACT section 4: admin API, gauge and readiness show `closed` within 1 s
PAYMENT_FAILED = "PaymentFailed"

POLICIES = f"""
[dependencies.payment]
attempt_timeout = 1.0
total_timeout = 2.0
retry = {{ max_retries = 0 }}
circuit_breaker = {{ minimum_throughput = {MINIMUM_THROUGHPUT}, break_duration = {PAYMENT_BREAK} }}

[dependencies.inventory]
attempt_timeout = 1.0
total_timeout = 2.0
retry = {{ max_retries = 0 }}
circuit_breaker = {{ minimum_throughput = {MINIMUM_THROUGHPUT}, break_duration = {INVENTORY_BREAK} }}
hedging = {{ max_hedged_attempts = 1, delay = {HEDGE_DELAY} }}

# A failed job is dead-lettered at once: no job is left over from opening the circuit to take the probe.
[jobs.payment]
attempt_timeout = 1.0
max_retries = 0
backoff_base = 0.1
backoff_max = 0.5
"""


pytestmark = pytest.mark.usefixtures("calm_dependencies")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("circuits"), policies=POLICIES) as running:
        yield running


def inventory(stack: RunningStack, product_id: int) -> requests.Response:
    return requests.get(f"{stack.api}/api/inventory/{product_id}", timeout=5)


def gauge(url: str, name: str) -> float | None:
    for sample, labels, value in scrape(url):
        if sample == "resilience_circuitbreaker_state" and labels.get("service") == name:
            return value
    return None


def breakers_check(stack: RunningStack) -> dict[str, str]:
    response = requests.get(f"{stack.api}/health/ready", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["checks"]["circuit-breakers"][0]  # type: ignore[no-any-return]


def open_until_the_break_ends(stack: RunningStack, name: str, fail_once: Callable[[], int], break_: float) -> None:
    """Fails calls until the circuit must be open (`fail_once` answers how many calls it made), sees it open,
    then half-open when its break ends."""
    set_faults(stack, name, error_rate=1, error_status=503)  # each circuit is named after its simulator
    calls = 0
    while calls < MINIMUM_THROUGHPUT:
        calls += fail_once()
    assert wait_until(lambda: circuit_state(stack, name) == "open", timeout=1.0, interval=0.05), \
        f"{name}: still {circuit_state(stack, name)} after {calls} failed calls"
    assert wait_until(lambda: circuit_state(stack, name) == "half_open", timeout=break_ + 2.0, interval=0.05), \
        f"{name}: {circuit_state(stack, name)} after its break"


def assert_shown_closed(stack: RunningStack, name: str, *, since: float) -> None:
    """The admin API, readiness and both gauges show the circuit closed in an answer asked for within
    SHOWN_WITHIN of `since` (the probe's success); polled side by side, so a slow answer delays no other."""
    views: dict[str, Callable[[], bool]] = {
        "admin API": lambda: circuit_state(stack, name) == "closed",
        "readiness": lambda: breakers_check(stack)["status"] == "pass",
        "API gauge": lambda: gauge(f"{stack.api}/metrics", name) == 0,
        "worker gauge": lambda: gauge(stack.worker_metrics, name) == 0,
    }

    def shown(view: Callable[[], bool]) -> bool:
        while time.monotonic() <= since + SHOWN_WITHIN:
            if view():
                return True
            time.sleep(0.05)
        return False

    with ThreadPoolExecutor(len(views)) as pool:
        results = dict(zip(views, pool.map(shown, views.values()), strict=True))
    late = [view for view, ok in results.items() if not ok]
    assert not late, f"{name}: not shown closed within {SHOWN_WITHIN} s by {late}; readiness: {breakers_check(stack)}"


# -- inventory ------------------------------------------------------------------------------------------

def open_inventory(stack: RunningStack) -> None:
    def fail_once() -> int:
        assert inventory(stack, 2).status_code in (200, 503)  # the cache answers if it has the level
        return 1

    open_until_the_break_ends(stack, "inventory", fail_once, INVENTORY_BREAK)


def test_a_single_stock_read_probe_closes_the_inventory_circuit(stack: RunningStack) -> None:
    open_inventory(stack)
    requests.delete(f"{stack.simulators['inventory']}/faults", timeout=5).raise_for_status()

    response = inventory(stack, 3)
    since = time.monotonic()
    assert response.status_code == 200 and response.json()["source"] == "live", response.text
    assert_shown_closed(stack, "inventory", since=since)


def test_a_fanned_out_stock_check_probe_closes_the_inventory_circuit(stack: RunningStack) -> None:
    open_inventory(stack)
    requests.delete(f"{stack.simulators['inventory']}/faults", timeout=5).raise_for_status()

    # Three products looked up in parallel: one of them is the probe, the others are refused meanwhile.
    body = {"customer_id": 11, "lines": [{"product_id": pid, "quantity": 1} for pid in (4, 5, 6)]}
    response = stack.order(body)
    since = time.monotonic()
    assert response.status_code == 201, response.text
    assert_shown_closed(stack, "inventory", since=since)


def test_a_hedged_stock_read_probe_closes_the_inventory_circuit(stack: RunningStack) -> None:
    open_inventory(stack)
    set_faults(stack, "inventory", latency_ms=PROBE_LATENCY_MS)  # healthy again, but slower than the hedge delay

    started = time.monotonic()
    response = inventory(stack, 7)
    since = time.monotonic()
    assert response.status_code == 200 and response.json()["source"] == "live", response.text
    assert since - started >= PROBE_LATENCY_MS / 1000, "the latency was not in the way of the probe"
    assert_shown_closed(stack, "inventory", since=since)


# -- payment --------------------------------------------------------------------------------------------

def open_payment(stack: RunningStack) -> None:
    def fail_once() -> int:
        """One order whose payment fails everywhere; waits until its job is dead-lettered, so that no job is
        left to call the payment service once the break ends."""
        order = created([stack.order()])[0]
        failed = stack.wait_for_status(order["id"], PAYMENT_FAILED, timeout=15)
        assert failed["status"] == PAYMENT_FAILED, failed
        return int(failed["payment"]["attempts"])  # the API's and the workers' calls alike

    open_until_the_break_ends(stack, "payment", fail_once, PAYMENT_BREAK)


def test_the_real_time_payment_probe_closes_the_payment_circuit(stack: RunningStack) -> None:
    open_payment(stack)
    requests.delete(f"{stack.simulators['payment']}/faults", timeout=5).raise_for_status()
    pending = requests.get(f"{stack.api}/api/orders", params={"status": PENDING}, timeout=5).json()["items"]
    assert not pending, "a worker could take the probe with a payment job left over"

    response = stack.order()
    since = time.monotonic()
    order = created([response])[0]
    assert (order["status"], order["payment"]["attempts"]) == (CONFIRMED, 1), order  # the API's call probed
    assert_shown_closed(stack, "payment", since=since)


def test_a_worker_payment_probe_closes_the_payment_circuit(stack: RunningStack) -> None:
    stack.set_flag("RealTimePayments", False)
    try:
        open_payment(stack)
        requests.delete(f"{stack.simulators['payment']}/faults", timeout=5).raise_for_status()

        order = created([stack.order()])[0]
        assert (order["status"], order["payment"]["attempts"]) == (PENDING, 0), order  # left to the workers
        confirmed = wait_until(lambda: stack.get_order(order["id"])["status"] == CONFIRMED, timeout=15,
                               interval=0.05)
        since = time.monotonic()
        assert confirmed, stack.tail()
        assert_shown_closed(stack, "payment", since=since)
    finally:
        stack.set_flag("RealTimePayments", True)
