"""A full payment outage under a burst of orders: retries stay inside the fleet-wide retry budget, and the
API's /metrics counts the orders of every gunicorn process; the workers' endpoint counts their jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.chaos.helpers import (
    CONFIRMED,
    PENDING,
    api_worker_pids,
    burst,
    created,
    log_events,
    log_size,
    scrape,
    set_faults,
    timed_order,
    total,
)
from tests.stack import RunningStack, running_stack
from tests.support import wait_until

MAX_RETRIES = 3
RATIO = 0.1
MIN_PER_SECOND = 1.0
BUDGET_WINDOW = 10.0  # the budget's sliding window (app/resilience/budget.py)
ORDERS = 40
EXTRA_ORDERS = 16  # per extra outage burst, sent while the bursts so far landed on one gunicorn process
SPREAD_DEADLINE = 60.0
FLAG_DELAY = 2.1  # every process obeys a flag change within 2 s

POLICIES = f"""
[dependencies.payment]
attempt_timeout = 1.0
total_timeout = 2.0
retry = {{ max_retries = {MAX_RETRIES}, base_delay = 0.01, max_delay = 0.02 }}
# The circuit must not open: this module measures what the budget alone lets through.
circuit_breaker = {{ minimum_throughput = 100000 }}
retry_budget = {{ ratio = {RATIO}, min_per_second = {MIN_PER_SECOND} }}

[jobs.payment]
attempt_timeout = 1.0
max_retries = 10
backoff_base = 0.1
backoff_max = 0.5
"""


@dataclass(frozen=True)
class Outage:
    orders: list[dict[str, object]]
    elapsed: float
    before: list[tuple[str, dict[str, str], float]]
    after: list[tuple[str, dict[str, str], float]]
    worker_after: list[tuple[str, dict[str, str], float]]
    api_pids: set[int]
    log_offset: int


pytestmark = pytest.mark.usefixtures("calm_dependencies")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("budget"), policies=POLICIES) as running:
        yield running


@pytest.fixture(scope="module")
def outage(stack: RunningStack) -> Iterator[Outage]:
    """ORDERS orders on fresh connections while every capture fails with a 500 (no Retry-After to wait on)."""
    metrics = f"{stack.api}/metrics"
    before, offset = scrape(metrics), log_size(stack)
    set_faults(stack, "payment", error_rate=1.0, error_status=500)
    try:
        started = time.monotonic()
        orders = created(burst(stack, ORDERS, parallel=8))
        elapsed = time.monotonic() - started
        after = scrape(metrics)
        worker_after = scrape(stack.worker_metrics)
    finally:
        set_faults(stack, "payment")
    yield Outage(orders, elapsed, before, after, worker_after, api_worker_pids(stack), offset)


def test_every_order_of_the_outage_is_taken_pending(outage: Outage) -> None:
    assert len(outage.orders) == ORDERS
    assert {o["status"] for o in outage.orders} == {PENDING}


def test_retries_during_a_full_outage_stay_within_the_retry_budget(outage: Outage) -> None:
    def delta(name: str) -> float:
        return total(outage.after, name, service="payment") - total(outage.before, name, service="payment")

    retries = delta("resilience_retry_attempts_total")
    # Calls since the stack started, by the API and by the workers' payment jobs (the budget is fleet-wide,
    # so a job's call earns retries for the API too): at least every call the budget's window can hold.
    calls = sum(total(samples, "http_client_requests_total", service="payment")
                for samples in (outage.after, outage.worker_after))
    bound = RATIO * calls + MIN_PER_SECOND * (BUDGET_WINDOW + outage.elapsed) + 1
    assert bound < MAX_RETRIES * ORDERS, "the budget would not bind: every order could retry in full"
    assert 0 < retries <= bound, f"{retries} retries for {calls} calls in {outage.elapsed:.1f} s"
    assert delta("http_client_requests_total") == ORDERS + retries


def test_api_metrics_count_the_orders_of_every_gunicorn_process(stack: RunningStack, outage: Outage) -> None:
    created_before = total(outage.before, "orders_created_total")
    assert total(outage.after, "orders_created_total") - created_before == ORDERS
    assert total(outage.after, "orders_created_total", status=PENDING) >= ORDERS

    # Every failed capture logs a retry or a spent budget, with the pid of the process that served it;
    # the workers never retry in a call, so these lines come from the API alone. Which process accepts a
    # connection is the kernel's choice (and a process still loading the app accepts none), so a burst can
    # land on one process: more bursts follow until two processes have served, and the aggregate must
    # still count every order of every burst.
    def served_by() -> set[int]:
        return {e["pid"] for e in log_events(stack, since=outage.log_offset)
                if e.get("event") in ("RetryScheduled", "BudgetExhausted") and e.get("service") == "payment"}

    sent = ORDERS
    deadline = time.monotonic() + SPREAD_DEADLINE
    while len(served_by()) < 2 and time.monotonic() < deadline:
        set_faults(stack, "payment", error_rate=1.0, error_status=500)
        try:
            created(burst(stack, EXTRA_ORDERS, parallel=8))
        finally:
            set_faults(stack, "payment")
        sent += EXTRA_ORDERS
    pids = served_by()
    assert pids <= outage.api_pids, (pids, outage.api_pids)
    assert len(pids) >= 2, f"one process served every burst: {pids}"
    assert total(scrape(f"{stack.api}/metrics"), "orders_created_total") - created_before == sent


def test_worker_metrics_count_the_job_that_confirmed_a_flag_off_order(stack: RunningStack) -> None:
    def succeeded() -> float:
        return total(scrape(stack.worker_metrics), "payment_jobs_total", outcome="succeeded")

    before = succeeded()
    stack.set_flag("RealTimePayments", False)
    try:
        time.sleep(FLAG_DELAY)
        response, elapsed = timed_order(stack)
    finally:
        stack.set_flag("RealTimePayments", True)
        enabled_at = time.monotonic()
    order = created([response])[0]
    assert order["status"] == PENDING and order["payment"]["attempts"] == 0
    assert elapsed < 0.25 + 0.5

    confirmed = stack.wait_for_status(order["id"], CONFIRMED, timeout=45)
    assert confirmed["status"] == CONFIRMED, stack.tail()
    assert confirmed["payment"]["attempts"] == 1
    # The job counts its outcome once it has settled the order, a moment after the order reads Confirmed.
    assert wait_until(lambda: succeeded() >= before + 1, timeout=10), (before, succeeded())
    time.sleep(max(0.0, enabled_at + FLAG_DELAY - time.monotonic()))
