"""The payment service fails, hangs or loses its answers: orders are still taken, the shared circuit opens
and then fails fast, and once the service is back every order is confirmed with exactly one capture."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from chaosproxy.client import ToxiproxyClient
from tests.chaos.helpers import (
    CONFIRMED,
    PENDING,
    burst,
    circuit_state,
    created,
    isolate_circuit,
    reset_circuit,
    set_faults,
    timed_order,
    wait_all_confirmed,
)
from tests.stack import RunningStack, running_stack

ATTEMPT_TIMEOUT = 0.6
TOTAL_TIMEOUT = 1.0
BREAK_DURATION = 4.0
FAST = 0.25  # the contract's bound with the payment circuit open
MARGIN = 0.5
# Break end + worker backoff + relay pass; a job that loses the race of test_outbox_relay_race waits out
# the relay's 30 s republish delay on top.
RECOVERY = 45.0

POLICIES = f"""
[api]
request_deadline = 4.0

[dependencies.payment]
attempt_timeout = {ATTEMPT_TIMEOUT}
total_timeout = {TOTAL_TIMEOUT}
retry = {{ max_retries = 1, base_delay = 0.05, max_delay = 0.1 }}
circuit_breaker = {{ sampling_duration = 5.0, minimum_throughput = 4, break_duration = {BREAK_DURATION} }}

[dependencies.inventory]
attempt_timeout = 4.0
total_timeout = 4.0

[jobs.payment]
attempt_timeout = 1.0
max_retries = 10
backoff_base = 0.1
backoff_max = 0.5
"""


pytestmark = pytest.mark.usefixtures("calm_dependencies")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("outage"), policies=POLICIES) as running:
        yield running


def assert_one_capture_each(stack: RunningStack, order_ids: list[str]) -> None:
    charges = {oid: len(stack.captures(oid)) for oid in order_ids}
    assert set(charges.values()) == {1}, charges


def assert_fails_fast(stack: RunningStack) -> str:
    response, elapsed = timed_order(stack)
    order = created([response])[0]
    assert order["status"] == PENDING and order["payment"]["attempts"] == 0, order
    assert elapsed < FAST, f"{elapsed:.3f} s with the circuit open"
    return str(order["id"])


def test_failing_payments_open_the_circuit_then_orders_fail_fast(stack: RunningStack) -> None:
    # Slow failures, so that failing fast is visible.
    set_faults(stack, "payment", error_rate=1.0, error_status=500, latency_ms=300)
    slow = []
    for _ in range(10):
        response, elapsed = timed_order(stack)
        assert created([response])[0]["status"] == PENDING
        slow.append(elapsed)
        if circuit_state(stack, "payment") == "open":
            break
    assert circuit_state(stack, "payment") == "open", f"still closed after {len(slow)} failing orders"
    assert slow[0] >= 0.3

    ready = requests.get(f"{stack.api}/health/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "warn"
    breakers = ready.json()["checks"]["circuit-breakers"][0]
    assert breakers["status"] == "warn" and "Open circuits: payment" in breakers["output"]

    for _ in range(5):
        assert_fails_fast(stack)


def test_hung_payment_service_costs_at_most_the_total_timeout_until_the_circuit_opens(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    # Connections are accepted, requests reach the service, answers never come back.
    chaos.add_toxic("payment", "timeout", {"timeout": 0}, name="hang")
    slow: list[float] = []
    order_ids: list[str] = []
    for _ in range(10):
        response, elapsed = timed_order(stack)
        order = created([response])[0]
        order_ids.append(order["id"])
        assert order["status"] == PENDING
        if order["payment"]["attempts"] == 0:
            assert elapsed < FAST
            break
        assert elapsed <= TOTAL_TIMEOUT + MARGIN
        slow.append(elapsed)
    else:
        pytest.fail("the payment circuit never opened")
    assert slow and slow[0] >= ATTEMPT_TIMEOUT - 0.05, slow
    order_ids += [assert_fails_fast(stack) for _ in range(3)]

    chaos.remove_toxic("payment", "hang")
    not_confirmed = wait_all_confirmed(stack, order_ids, timeout=RECOVERY)
    assert not not_confirmed, stack.tail()
    assert_one_capture_each(stack, order_ids)


def test_isolated_circuit_holds_in_every_api_process(stack: RunningStack) -> None:
    assert isolate_circuit(stack, "payment")["state"] == "isolated"
    # Fresh connections, many at a time: both gunicorn processes serve some of them.
    isolated = created(burst(stack, 24, parallel=8))
    assert {(o["status"], o["payment"]["attempts"]) for o in isolated} == {(PENDING, 0)}
    assert circuit_state(stack, "payment") == "isolated"

    assert reset_circuit(stack, "payment")["state"] == "closed"
    after = created(burst(stack, 8, parallel=4))
    assert {o["status"] for o in after} == {CONFIRMED}

    not_confirmed = wait_all_confirmed(stack, [o["id"] for o in isolated], timeout=RECOVERY)
    assert not not_confirmed, stack.tail()
    assert_one_capture_each(stack, [o["id"] for o in isolated + after])


def test_answers_lost_after_the_capture_never_charge_twice(
    stack: RunningStack, chaos: ToxiproxyClient
) -> None:
    def cut_answers() -> None:  # the status line's first 16 bytes get through, then the connection closes
        chaos.add_toxic("payment", "limit_data", {"bytes": 16}, name="cut")

    def reset_answers() -> None:
        chaos.add_toxic("payment", "reset_peer", {"timeout": 0}, name="cut")

    def error_after_capture() -> None:
        set_faults(stack, "payment", fail_after_capture=True, error_status=500)

    def undo() -> None:
        chaos.reset()
        requests.delete(f"{stack.simulators['payment']}/faults", timeout=5).raise_for_status()
        reset_circuit(stack, "payment")

    order_ids: list[str] = []
    charged_but_pending: dict[str, int] = {}
    for fault in (cut_answers, reset_answers, error_after_capture):
        fault()
        orders = created(burst(stack, 7, parallel=4))
        assert {o["status"] for o in orders} == {PENDING}
        # The service charged these, the API never heard of it. Each fault breaks an answer only once the
        # service sent it, so whatever API attempt was made was charged; the first one is always made, as
        # the circuit was reset and nothing else calls the service then (the orders before are settled).
        charged_but_pending[fault.__name__] = sum(
            1 for o in orders if o["payment"]["attempts"] and stack.captures(o["id"]))
        order_ids += [o["id"] for o in orders]
        undo()
        # The next fault must not meet these orders' jobs: their failures would open the shared circuit
        # before the API's first call under it.
        started = time.monotonic()
        not_confirmed = wait_all_confirmed(stack, [o["id"] for o in orders], timeout=RECOVERY)
        assert not not_confirmed, f"after {time.monotonic() - started:.1f} s: {not_confirmed}\n{stack.tail()}"
        reset_circuit(stack, "payment")
    assert min(charged_but_pending.values()) >= 1, charged_but_pending
    assert_one_capture_each(stack, order_ids)
