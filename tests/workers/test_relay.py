"""The outbox relay: publishes due jobs once, republishes lost ones, takes back expired leases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.policies import JobsPaymentConfig
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from tests.workers.fakes import Clock, FakeJobGateway, job, place_order
from workers.relay import OutboxRelay, RelayThread


class Broker:
    def __init__(self) -> None:
        self.payments: list[str] = []
        self.notifications: list[int] = []
        self.down = False

    def send_payment(self, order_id: str) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.payments.append(order_id)

    def send_notification(self, job_id: int) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.notifications.append(job_id)


def make_relay(uow: Any, broker: Broker, clock: Clock) -> OutboxRelay:
    return OutboxRelay(uow=uow, send_payment=broker.send_payment, send_notification=broker.send_notification,
                       republish_after=30.0, now=clock)


def test_due_job_is_published_once_and_again_only_after_the_republish_delay(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    relay = make_relay(uow, broker, clock)
    relay.run_once()
    relay.run_once()
    assert broker.payments.count(order_id) == 1
    clock.advance(31)
    relay.run_once()
    assert broker.payments.count(order_id) == 2


def test_job_not_yet_due_is_not_published(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock(), due_at=clock() + timedelta(seconds=10))
    make_relay(uow, broker, clock).run_once()
    assert order_id not in broker.payments


def test_two_relays_at_once_publish_a_job_once(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    first, second = make_relay(uow, broker, clock), make_relay(uow, broker, clock)
    with uow(read_only=True) as unit:
        seen = unit.outbox.payment_relay.due(now=clock(), republish_before=clock() - timedelta(seconds=30), limit=50)
    assert order_id in seen
    # Both saw the job due; the conditional mark lets only one send it.
    assert first._publish(order_id, clock(), clock() - timedelta(seconds=30), payment=True)
    assert not second._publish(order_id, clock(), clock() - timedelta(seconds=30), payment=True)
    assert broker.payments.count(order_id) == 1


def test_broker_down_leaves_the_job_due_for_the_next_pass(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    broker.down = True
    assert make_relay(uow, broker, clock).run_once().failed
    broker.down = False
    make_relay(uow, broker, clock).run_once()
    assert order_id in broker.payments


def test_expired_lease_makes_the_relay_republish_the_job(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    config = JobsPaymentConfig(attempt_timeout=2.0, max_retries=3, backoff_base=1.0, backoff_max=5.0)
    with uow() as unit:  # a worker claims the job, then dies before finishing it
        assert unit.outbox.payments.claim(order_id, now=clock(), lease_until=clock() + timedelta(seconds=3),
                                          token="e" * 32)
        unit.commit()
    relay = make_relay(uow, broker, clock)
    relay.run_once()
    assert order_id not in broker.payments
    clock.advance(4)
    assert relay.run_once().reclaimed >= 1
    assert order_id in broker.payments
    gateway = FakeJobGateway(["captured"])
    runner = PaymentJobRunner(uow=uow, gateway=gateway, config=config, now=clock)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    stored = job(uow, order_id)
    assert (stored.state, stored.retries) == ("done", 1)  # the lost run counted as a retry


def test_confirmed_order_notification_is_published_to_its_queue(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock(), due_at=clock() + timedelta(days=1))
    with uow() as unit:
        unit.outbox.notifications.add(order_id, "order_confirmed", now=clock())
        unit.commit()
    make_relay(uow, broker, clock).run_once()
    assert len(broker.notifications) >= 1
    assert order_id not in broker.payments


def test_relay_thread_survives_a_failing_pass_and_stops_when_asked() -> None:
    calls = []

    class Flaky:
        def run_once(self) -> None:
            calls.append(1)
            raise RuntimeError("database down")

    thread = RelayThread(Flaky(), interval=0.01)  # type: ignore[arg-type]
    thread.start()
    try:
        import time

        deadline = time.monotonic() + 2
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        thread.stop()
    assert len(calls) >= 3
    assert not thread.alive


@pytest.fixture(autouse=True)
def _quiet_relay_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="orderflow.relay")


def test_relay_publishes_nothing_to_a_queue_that_still_holds_messages(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    waiting = {"payments": 5, "notifications": 0}
    relay = OutboxRelay(uow=uow, send_payment=broker.send_payment, send_notification=broker.send_notification,
                        republish_after=30.0, now=clock, waiting=waiting.get)
    relay.run_once()
    # The job's hint may be one of the waiting messages: a second one would only double the workers' work.
    assert order_id not in broker.payments
    waiting["payments"] = 0
    relay.run_once()
    assert broker.payments.count(order_id) == 1


def test_relay_publishes_as_before_when_the_queue_length_is_unknown(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())
    relay = OutboxRelay(uow=uow, send_payment=broker.send_payment, send_notification=broker.send_notification,
                        republish_after=30.0, now=clock, waiting=lambda queue: None)
    relay.run_once()
    assert broker.payments.count(order_id) == 1


def test_relay_holds_payment_jobs_while_the_payment_circuit_is_open_or_isolated(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock(), due_at=clock() + timedelta(days=1))
    with uow() as unit:
        unit.outbox.notifications.add(order_id, "order_confirmed", now=clock())
        unit.commit()
    held = place_order(uow, now=clock())
    circuit = {"held": True}
    relay = OutboxRelay(uow=uow, send_payment=broker.send_payment, send_notification=broker.send_notification,
                        republish_after=30.0, now=clock, payments_held=lambda: circuit["held"])
    relay.run_once()
    assert held not in broker.payments  # its worker could only defer it
    assert len(broker.notifications) == 1  # notifications do not wait on the payment circuit
    circuit["held"] = False
    relay.run_once()
    assert broker.payments.count(held) == 1


def test_relay_hands_payment_jobs_out_when_the_circuit_state_is_unknown(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    order_id = place_order(uow, now=clock())

    def unknown() -> bool:
        raise ConnectionError("state unreachable")

    relay = OutboxRelay(uow=uow, send_payment=broker.send_payment, send_notification=broker.send_notification,
                        republish_after=30.0, now=clock, payments_held=unknown)
    relay.run_once()
    assert broker.payments.count(order_id) == 1


def test_the_relay_forgets_idempotency_keys_past_their_day_a_bounded_batch_at_a_time(uow: Any) -> None:
    clock, broker = Clock(), Broker()
    old = clock() - timedelta(days=2)
    with uow() as unit:
        for i in range(5):
            unit.idempotency.claim(f"old-{i}", "fp", now=old, lock_for=timedelta(seconds=10),
                                   keep_for=timedelta(hours=24), token=f"t{i}")
        unit.idempotency.claim("fresh", "fp", now=clock(), lock_for=timedelta(seconds=10),
                               keep_for=timedelta(hours=24), token="t")
        unit.commit()
    ticks = [0.0]
    relay = make_relay(uow, broker, clock)
    relay.purge_batch, relay.monotonic = 3, lambda: ticks[0]
    assert relay.run_once().purged == 3
    assert relay.run_once().purged == 0  # not again before `purge_every`
    ticks[0] += relay.purge_every
    assert relay.run_once().purged == 2
    with uow() as unit:  # the fresh key is still there: a repeat of it is a replay, not a new claim
        assert unit.idempotency.claim("fresh", "fp", now=clock(), lock_for=timedelta(seconds=10),
                                      keep_for=timedelta(hours=24), token="other").outcome == "in_use"
        assert unit.idempotency.claim("old-0", "fp", now=clock(), lock_for=timedelta(seconds=10),
                                      keep_for=timedelta(hours=24), token="other").outcome == "claimed"
