"""Real `celery worker` processes against real Redis and the payment simulator: the outbox path end to end,
including workers killed mid-job and a broker that is down when orders arrive. The broker is the one the
environment names (BROKER_URL, else the Redis of REDIS_URL): CI runs this file on Redis and on RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.adapters.broker import PROCESS_PAYMENT
from app.config import is_amqp_url
from app.services import dead_letters
from tests.broker import environment_broker, rabbitmq_url
from tests.support import fresh_database
from tests.workers.processes import (
    MAX_RETRIES,
    WorkerStack,
    broker_that_can_fail,
    children_of,
    wait_until,
    worker_stack,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[WorkerStack]:
    with (
        fresh_database() as database,
        worker_stack(tmp_path, database, redis_url, key_prefix, broker_url=environment_broker()) as running,
    ):
        yield running


def test_flag_off_order_is_confirmed_by_a_worker_and_notified(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    order = stack.place()
    assert order.status == "PaymentPending"
    stack.wait_for_status([order.id], "Confirmed", timeout=15)
    stored = stack.order(order.id)
    assert stored.payment.attempts == 1
    assert [c["id"] for c in stack.captures(order.id)] == [stored.payment.payment_id]
    wait_until(lambda: bool(requests.get(f"{stack.notification.url}/notifications", params={"order_id": order.id},
                                         timeout=2).json()["items"]), timeout=10, what="the notification")
    [note] = requests.get(f"{stack.notification.url}/notifications", params={"order_id": order.id},
                          timeout=2).json()["items"]
    assert note["kind"] == "order_confirmed"
    assert note["idempotency_key"] == f"order_confirmed:{order.id}"


def test_payment_outage_then_recovery_confirms_with_every_attempt_recorded(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(error_rate=1.0, error_status=503)
    order = stack.place()
    wait_until(lambda: stack.order(order.id).payment.attempts >= 2, timeout=10, what="two failed attempts",
               on_timeout=lambda: stack.log()[-3000:])
    stack.faults()
    stack.wait_for_status([order.id], "Confirmed", timeout=15)
    stored = stack.order(order.id)
    assert 2 <= stored.payment.attempts <= 1 + MAX_RETRIES
    assert len(stack.captures(order.id)) == 1


def test_failing_forever_dead_letters_after_one_plus_max_retries_then_replay_confirms(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(error_rate=1.0, error_status=503)
    order = stack.place()
    stack.wait_for_status([order.id], "PaymentFailed", timeout=20)
    failed = stack.order(order.id)
    assert str(failed.payment.failure_reason) == "retries_exhausted"
    assert failed.payment.attempts == 1 + MAX_RETRIES
    [letter] = [d for d in dead_letters.list_dead_letters(stack.services.uow) if d.order_id == order.id]
    assert letter.attempts == 1 + MAX_RETRIES
    # The dead_letter queue's consumer logs the event.
    wait_until(lambda: "payment_dead_lettered" in stack.log(), timeout=10, what="the dead-letter log line")

    def scrape() -> str:
        return requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text

    # The job counts its outcome once it has settled the order, which may be after the dead letter's consumer
    # logged it.
    wait_until(lambda: 'payment_jobs_total{outcome="dead_lettered"} 1.0' in scrape(), timeout=10,
               what="the dead-lettered job counted", on_timeout=scrape)
    assert "payment_dead_letters 1.0" in scrape()

    stack.faults()
    dead_letters.replay_dead_letter(stack.services.uow, letter.id)
    stack.wait_for_status([order.id], "Confirmed", timeout=15)
    assert stack.order(order.id).payment.attempts == 1 + MAX_RETRIES + 1
    assert len(stack.captures(order.id)) == 1


def test_captured_but_answered_with_an_error_confirms_with_exactly_one_capture(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(error_status=503, fail_after_capture=True)
    order = stack.place()
    stack.wait_for_status([order.id], "Confirmed", timeout=20)
    captures = stack.captures(order.id)
    assert len(captures) == 1
    assert stack.order(order.id).payment.payment_id == captures[0]["id"]


def test_pool_child_killed_mid_job_loses_no_job_and_captures_once(stack: WorkerStack) -> None:
    worker = stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(latency_ms=1500)
    orders = [stack.place() for _ in range(2)]
    wait_until(lambda: _running_jobs(stack, [o.id for o in orders]) >= 1, timeout=10, what="a running job")
    for child in children_of(worker.pid):
        os.kill(child, signal.SIGKILL)
    stack.faults()
    stack.wait_for_status([o.id for o in orders], "Confirmed", timeout=30)
    assert "WorkerLostError" in stack.log()
    assert "lease_expired" in stack.log()  # the relay took the killed child's job back
    # The relay is a thread of the worker's main process, and its lines say so.
    assert {(e["process"], e["pid"]) for e in _entries(stack) if e.get("event") == "lease_expired"} == {
        ("relay", worker.pid)}
    for order in orders:
        assert len(stack.captures(order.id)) == 1


def test_worker_main_process_killed_mid_job_is_recovered_by_the_next_worker(stack: WorkerStack) -> None:
    worker = stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(latency_ms=1500)
    orders = [stack.place() for _ in range(2)]
    wait_until(lambda: _running_jobs(stack, [o.id for o in orders]) >= 1, timeout=10, what="a running job")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=5)
    stack.faults()
    stack.start_worker()
    stack.wait_for_status([o.id for o in orders], "Confirmed", timeout=30)
    assert "lease_expired" in stack.log()  # the new worker's relay took the dead worker's job back
    for order in orders:
        assert len(stack.captures(order.id)) == 1


def test_orders_placed_while_the_broker_is_down_are_processed_when_it_returns(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """On the environment's broker kind: an embedded Redis killed and restarted, or RabbitMQ cut off."""
    broker_url = environment_broker()
    rabbitmq = rabbitmq_url() if broker_url is not None and is_amqp_url(broker_url) else None
    with (
        broker_that_can_fail(tmp_path, redis_url, rabbitmq) as broker,
        fresh_database() as database,
        worker_stack(tmp_path, database, broker.redis_url, key_prefix, broker_url=broker.broker_url) as stack,
    ):
        worker = stack.start_worker()
        stack.set_flag("RealTimePayments", False)
        # A job in flight when the broker goes away: its message can be neither acknowledged nor
        # put back, and the worker must live through that.
        stack.faults(latency_ms=1000)
        in_flight = stack.place()
        wait_until(lambda: _running_jobs(stack, [in_flight.id]) == 1, timeout=10, what="a running job")
        broker.stop()
        started = time.monotonic()
        orders = [stack.place() for _ in range(3)]
        assert time.monotonic() - started < 3 * 0.6
        assert all(o.status == "PaymentPending" for o in orders)
        stack.faults()
        time.sleep(0.5)
        broker.restart()
        ids = [in_flight.id] + [o.id for o in orders]
        stack.wait_for_status(ids, "Confirmed", timeout=40)
        assert worker.poll() is None, stack.log_summary()
        for order_id in ids:
            assert len(stack.captures(order_id)) == 1


def test_forty_concurrent_orders_are_each_confirmed_once(stack: WorkerStack) -> None:
    stack.faults(error_rate=0.5, error_status=503)  # about half fall back from real time to the workers
    with ThreadPoolExecutor(8) as pool:
        orders = list(pool.map(lambda _: stack.place(), range(40)))
    assert {str(o.status) for o in orders} == {"Confirmed", "PaymentPending"}
    stack.faults()
    # Started now, so no job runs out of retries against the faults meant for the real-time path; the
    # hints sent at placement wait in the queue alongside the relay's messages.
    stack.start_worker()
    ids = [o.id for o in orders]
    assert len(set(ids)) == 40
    stack.wait_for_status(ids, "Confirmed", timeout=40)
    for order_id in ids:
        captures = stack.captures(order_id)
        assert len(captures) == 1
        assert stack.order(order_id).payment.payment_id == captures[0]["id"]


def test_celery_s_own_lines_are_json_lines_of_the_worker(stack: WorkerStack) -> None:
    worker = stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    order = stack.place()
    stack.wait_for_status([order.id], "Confirmed", timeout=15)
    wait_until(lambda: any(e["logger"] == "celery.app.trace" for e in _entries(stack)), timeout=10,
               what="the task's success line", on_timeout=stack.log_summary)
    entries = _entries(stack)
    [ready] = [e for e in entries if e["msg"].endswith(" ready.")]
    assert (ready["process"], ready["logger"], ready["level"], ready["pid"]) == (
        "worker", "celery.apps.worker", "info", worker.pid)
    received = [e for e in entries if e["logger"] == "celery.worker.strategy" and PROCESS_PAYMENT in e["msg"]]
    assert received and all(e["msg"].endswith("] received") and e["process"] == "worker" for e in received)
    # The pool processes, forked from the main one, write the same lines.
    succeeded = [e for e in entries if e["logger"] == "celery.app.trace" and PROCESS_PAYMENT in e["msg"]]
    assert succeeded and {e["process"] for e in succeeded} == {"worker"}
    assert {e["pid"] for e in succeeded} <= set(children_of(worker.pid))
    # Celery's banner is one record, not lines printed around the log.
    [banner] = [e for e in entries if e.get("event") == "worker_starting"]
    assert "[queues]" in banner["msg"] and "payments" in banner["msg"]
    assert "[queues]" not in stack.log().splitlines()


def _entries(stack: WorkerStack) -> list[dict[str, object]]:
    """The worker's JSON lines (a warning printed before its logging was set up, as running as root makes
    Celery print, is not one)."""
    return [json.loads(line) for line in stack.log().splitlines() if line.startswith("{")]


def _running_jobs(stack: WorkerStack, order_ids: list[str]) -> int:
    with stack.services.uow(read_only=True) as unit:
        return sum(1 for o in order_ids if (j := unit.outbox.payments.get(o)) is not None and j.state == "running")


def test_a_worker_makes_no_call_while_the_circuit_is_isolated_and_confirms_after_reset(stack: WorkerStack) -> None:
    """The job's only look at the circuit is its call's own admission: refused, the job is deferred, uses no
    retry and reaches nothing; after a reset it runs."""
    breaker = stack.services.circuits.breakers["payment"]
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    breaker.isolate()
    try:
        order = stack.place()

        wait_until(lambda: "deferred" in stack.log(), timeout=15, what="the job deferred by a worker")
        assert stack.captures(order.id) == []
        stored = stack.order(order.id)
        assert (stored.status, stored.payment.attempts) == ("PaymentPending", 0)
        with stack.services.uow(read_only=True) as unit:
            job = unit.outbox.payments.get(order.id)
        assert job is not None and job.retries == 0
    finally:
        breaker.reset()
    stack.wait_for_status([order.id], "Confirmed", timeout=30)
    assert len(stack.captures(order.id)) == 1
