"""A real `celery worker` on RabbitMQ (BROKER_URL=amqp://...): orders paid by the worker, dead letters
consumed, and the queues as RabbitMQ holds them. Redis keeps the caches and the circuit state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from app.config import Settings
from app.services import dead_letters
from tests.broker import rabbitmq_url
from tests.support import fresh_database
from tests.workers.processes import MAX_RETRIES, WorkerStack, wait_until, worker_stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[WorkerStack]:
    with (
        fresh_database() as database,
        worker_stack(tmp_path, database, redis_url, key_prefix, broker_url=rabbitmq_url()) as running,
    ):
        yield running


def test_flag_off_order_is_confirmed_by_a_worker_with_one_capture(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    orders = [stack.place() for _ in range(3)]
    assert {o.status for o in orders} == {"PaymentPending"}
    stack.wait_for_status([o.id for o in orders], "Confirmed", timeout=20)
    for order in orders:
        stored = stack.order(order.id)
        assert stored.payment.attempts == 1
        assert [c["id"] for c in stack.captures(order.id)] == [stored.payment.payment_id]
    assert "Connected to amqp://" in stack.log()


def test_a_dead_lettered_payment_is_consumed_from_the_dead_letter_queue(stack: WorkerStack) -> None:
    stack.start_worker()
    stack.set_flag("RealTimePayments", False)
    stack.faults(error_rate=1.0, error_status=503)
    order = stack.place()
    stack.wait_for_status([order.id], "PaymentFailed", timeout=20)
    assert stack.order(order.id).payment.attempts == 1 + MAX_RETRIES
    assert [d.order_id for d in dead_letters.list_dead_letters(stack.services.uow)] == [order.id]
    # The message on `dead_letter` reached the worker, whose consumer logs it.
    wait_until(lambda: "payment_dead_lettered" in stack.log(), timeout=10, what="the dead-letter log line",
               on_timeout=stack.log_summary)
    [line] = [line for line in stack.log().splitlines() if "payment_dead_lettered" in line]
    assert order.id in line
    assert stack.captures(order.id) == []


def test_the_deployments_queues_are_durable_quorum_queues_under_its_prefix(stack: WorkerStack) -> None:
    stack.start_worker()
    settings = Settings.from_env(stack.env)
    with Connection(settings.broker_url, connect_timeout=2) as connection:
        for name in ("payments", "notifications", "dead_letter"):
            broker_name = f"{stack.prefix}.{name}"
            assert connection.default_channel.queue_declare(broker_name, passive=True).consumer_count == 1
            # RabbitMQ refuses to see the queue as anything else than it is: durable and of type quorum.
            with pytest.raises(PreconditionFailed, match="x-queue-type"):
                connection.channel().queue_declare(broker_name, durable=True, auto_delete=False,
                                                   arguments={"x-queue-type": "classic"})
