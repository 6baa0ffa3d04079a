"""The order_confirmed notification: sent at least once, best effort, obeying the Notifications flag."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from app.adapters.sql.tables import notification_jobs
from app.domain import OrderStatus
from app.policies import JobsPaymentConfig
from app.services.load import ProcessLoad
from app.services.notifications import BackgroundConfirmations, NotificationRunner, send_notification_job
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from tests.support import wait_until
from tests.workers.fakes import Clock, FakeJobGateway, order, place_order, uow_of

JOBS = JobsPaymentConfig(attempt_timeout=10.0, max_retries=3, backoff_base=1.0, backoff_max=60.0)


class Sender:
    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers) or [True]
        self.sent: list[tuple[str, str]] = []

    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        answer = self.answers[min(len(self.sent), len(self.answers) - 1)]
        self.sent.append((order_id, kind))
        return answer


class Flags:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def is_enabled(self, name: str) -> bool:
        assert name == "Notifications"
        return self.enabled


def confirmed_order_with_notification(engine: Engine, clock: Clock) -> tuple[str, int]:
    uow = uow_of(engine)
    order_id = place_order(uow, now=clock(), due_at=clock() + timedelta(days=1))
    with uow() as unit:
        unit.orders.move(order_id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.CONFIRMED,
                         now=clock(), payment_id="pay_x")
        job_id = unit.outbox.notifications.add(order_id, "order_confirmed", now=clock())
        unit.commit()
    assert job_id is not None
    return order_id, job_id


def state(engine: Engine, order_id: str) -> str | None:
    with uow_of(engine)(read_only=True) as unit:
        return unit.outbox.notifications.state_of(order_id, "order_confirmed")


def due_notifications(engine: Engine, clock: Clock) -> list[int]:
    with uow_of(engine)(read_only=True) as unit:
        return [int(i) for i in unit.outbox.notification_relay.due(now=clock(), republish_before=clock(), limit=500)]


def reclaim_notifications(engine: Engine, clock: Clock) -> int:
    with uow_of(engine)() as unit:
        count = unit.outbox.notifications.reclaim_expired(now=clock())
        unit.commit()
    return count


def test_notification_is_sent_once_with_the_order_and_kind(engine: Engine) -> None:
    clock, sender = Clock(), Sender(True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock)
    assert send_notification_job(job_id, runner=runner) == "sent"
    assert send_notification_job(job_id, runner=runner) == "not_due"
    assert sender.sent == [(order_id, "order_confirmed")]
    assert state(engine, order_id) == "done"


def test_flag_off_skips_the_notification(engine: Engine) -> None:
    clock, sender = Clock(), Sender(True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(False), now=clock)
    assert send_notification_job(job_id, runner=runner) == "skipped"
    assert sender.sent == []
    assert state(engine, order_id) == "skipped"


def test_failed_sends_are_retried_with_backoff_then_given_up_without_touching_the_order(engine: Engine) -> None:
    clock, sender = Clock(), Sender(False)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock, max_attempts=3,
                                rng=lambda: 1.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    assert send_notification_job(job_id, runner=runner) == "not_due"  # backing off
    clock.advance(1.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    clock.advance(2.0)
    assert send_notification_job(job_id, runner=runner) == "failed"
    assert len(sender.sent) == 3
    assert state(engine, order_id) == "failed"
    assert order(uow_of(engine), order_id).status is OrderStatus.CONFIRMED


def test_a_send_that_recovers_on_retry_is_done(engine: Engine) -> None:
    clock, sender = Clock(), Sender(False, True)
    order_id, job_id = confirmed_order_with_notification(engine, clock)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock, rng=lambda: 0.0)
    assert send_notification_job(job_id, runner=runner) == "retry"
    assert send_notification_job(job_id, runner=runner) == "sent"
    assert state(engine, order_id) == "done"


def _confirm_with_sent_notification(
    engine: Engine, clock: Clock, confirmations: BackgroundConfirmations
) -> str:
    order_id = place_order(uow_of(engine), now=clock())
    runner = PaymentJobRunner(uow=uow_of(engine), gateway=FakeJobGateway(["captured"]), config=JOBS, now=clock,
                              confirmations=confirmations, load=confirmations.load)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    return order_id


def _notification_row(engine: Engine, order_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(notification_jobs).where(notification_jobs.c.order_id == order_id)).one()


class HeldSender(Sender):
    """Holds its first send until `release()`, so the test decides when the sender thread moves on."""

    def __init__(self, *answers: bool) -> None:
        super().__init__(*answers)
        self.started, self.go = threading.Event(), threading.Event()

    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        if not self.started.is_set():
            self.started.set()
            assert self.go.wait(10), "the test never released the sender"
        return super().send(order_id=order_id, kind=kind, deadline=deadline)

    def release(self) -> None:
        self.go.set()


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_worker_that_confirms_an_order_hands_its_notification_to_a_sender_thread_and_the_relay_leaves_it(
    engine: Engine,
) -> None:
    clock, sender = Clock(), HeldSender(True)
    confirmations = BackgroundConfirmations(NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True),
                                                               now=clock))
    order_id = _confirm_with_sent_notification(engine, clock, confirmations)
    # The payment job has returned while the send is still held: it never waits for the notification.
    assert sender.started.wait(5) and sender.sent == []
    assert _notification_row(engine, order_id).state == "running"  # claimed, under its lease
    sender.release()
    assert confirmations.flush(5)
    assert sender.sent == [(order_id, "order_confirmed")]
    row = _notification_row(engine, order_id)
    assert (row.state, row.attempts) == ("done", 1)
    assert row.id not in due_notifications(engine, clock)


def test_confirmations_queued_behind_a_send_are_marked_done_by_one_statement(engine: Engine) -> None:
    clock, sender = Clock(), HeldSender(True)
    confirmations = BackgroundConfirmations(NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True),
                                                               now=clock))
    first = _confirm_with_sent_notification(engine, clock, confirmations)
    assert sender.started.wait(5)
    queued = [_confirm_with_sent_notification(engine, clock, confirmations) for _ in range(5)]
    finishes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE NOTIFICATION_JOBS"):
            finishes.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        sender.release()
        assert confirmations.flush(5)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sorted(o for o, _ in sender.sent) == sorted([first, *queued])
    assert {_notification_row(engine, o).state for o in [first, *queued]} == {"done"}
    assert len(finishes) == 2, finishes  # the held one, then the five queued behind it together


def test_failed_confirmation_is_retried_later_and_pauses_the_sender(engine: Engine) -> None:
    clock, sender = Clock(), Sender(False, True)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock, rng=lambda: 1.0,
                                monotonic=lambda: 100.0)
    confirmations = BackgroundConfirmations(runner, pause=30.0)
    first = _confirm_with_sent_notification(engine, clock, confirmations)
    assert confirmations.flush(5)
    assert _notification_row(engine, first).state == "pending"  # retried the ordinary way, through the relay
    assert confirmations.claim_until(clock()) is None

    second = _confirm_with_sent_notification(engine, clock, confirmations)
    assert confirmations.flush(5)
    assert [order_id for order_id, _ in sender.sent] == [first]  # the second one was not tried here
    row = _notification_row(engine, second)
    assert (row.state, row.published_at) == ("pending", None)  # so the relay publishes it at once
    clock.advance(5)
    due = due_notifications(engine, clock)
    assert row.id in due and _notification_row(engine, first).id in due


def test_a_backed_up_sender_leaves_new_confirmations_to_the_relay(engine: Engine) -> None:
    clock, sender = Clock(), HeldSender(True)
    confirmations = BackgroundConfirmations(NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True),
                                                               now=clock), max_queued=2)
    held = _confirm_with_sent_notification(engine, clock, confirmations)
    assert sender.started.wait(5)
    waiting = [_confirm_with_sent_notification(engine, clock, confirmations) for _ in range(2)]
    assert confirmations.claim_until(clock()) is None
    overflow = _confirm_with_sent_notification(engine, clock, confirmations)
    assert (_notification_row(engine, overflow).state, _notification_row(engine, overflow).published_at) == (
        "pending", None)
    sender.release()
    assert confirmations.flush(5)
    assert sorted(o for o, _ in sender.sent) == sorted([held, *waiting])
    assert confirmations.claim_until(clock()) is not None


def test_a_confirmation_that_waited_past_its_lease_margin_is_left_to_the_relay(engine: Engine) -> None:
    clock, sender, ticks = Clock(), HeldSender(True), Ticks()
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock, monotonic=ticks,
                                lease_margin=15.0)
    confirmations = BackgroundConfirmations(runner)
    held = _confirm_with_sent_notification(engine, clock, confirmations)
    assert sender.started.wait(5)
    late = _confirm_with_sent_notification(engine, clock, confirmations)
    ticks.now += 16.0  # its lease may have run out: another worker may be sending it
    clock.advance(17)
    sender.release()
    assert confirmations.flush(5)
    assert [o for o, _ in sender.sent] == [held]
    assert _notification_row(engine, late).state == "running"
    assert reclaim_notifications(engine, clock) >= 1
    due = due_notifications(engine, clock)
    assert _notification_row(engine, late).id in due


def test_confirmations_with_the_flag_off_are_skipped_unsent(engine: Engine) -> None:
    clock, sender = Clock(), Sender(True)
    confirmations = BackgroundConfirmations(NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(False),
                                                               now=clock))
    order_id = _confirm_with_sent_notification(engine, clock, confirmations)
    assert confirmations.flush(5)
    assert sender.sent == []
    assert _notification_row(engine, order_id).state == "skipped"


def test_worker_that_dies_before_the_send_leaves_a_lease_the_relay_takes_back(engine: Engine) -> None:
    clock = Clock()

    class Dies:
        def claim_until(self, now: datetime) -> datetime:
            return now + timedelta(seconds=10)

        def send(self, job_id: int, order_id: str, kind: str, lease_until: datetime) -> str:
            raise SystemExit("killed")

    order_id = place_order(uow_of(engine), now=clock())
    runner = PaymentJobRunner(uow=uow_of(engine), gateway=FakeJobGateway(["captured"]), config=JOBS, now=clock,
                              confirmations=Dies())
    with pytest.raises(SystemExit):
        process_payment_job(order_id, runner=runner)
    assert order(uow_of(engine), order_id).status is OrderStatus.CONFIRMED
    row = _notification_row(engine, order_id)
    assert row.state == "running"  # written claimed, under its lease
    clock.advance(11)
    assert reclaim_notifications(engine, clock) >= 1
    assert row.id in due_notifications(engine, clock)


def test_an_exiting_pool_process_gives_its_sender_thread_time_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    from types import SimpleNamespace

    from workers import context, tasks

    flushed: list[float] = []
    fake = SimpleNamespace(confirmations=SimpleNamespace(flush=flushed.append))
    monkeypatch.setitem(context._contexts, os.getpid(), fake)
    tasks.send_held_confirmations(sender=None, pid=os.getpid(), exitcode=0)
    assert flushed == [tasks.CONFIRMATIONS_FLUSH_SECONDS]
    monkeypatch.delitem(context._contexts, os.getpid())
    tasks.send_held_confirmations(sender=None, pid=os.getpid(), exitcode=0)  # no context built: nothing to do
    assert flushed == [tasks.CONFIRMATIONS_FLUSH_SECONDS]


class Load(ProcessLoad):
    """A process load the test switches: saturated (a backlog of payment jobs) or not."""

    def __init__(self, busy: bool) -> None:
        super().__init__()
        self.busy = busy

    def saturated(self) -> bool:
        return self.busy


def _held_confirmations(engine: Engine, *, hold: float = 60.0, max_held: int = 100, max_queued: int = 256) -> tuple[
        Clock, Ticks, Sender, Load, BackgroundConfirmations]:
    clock, ticks, sender, load = Clock(), Ticks(), Sender(True), Load(busy=True)
    runner = NotificationRunner(uow=uow_of(engine), sender=sender, flags=Flags(True), now=clock, monotonic=ticks,
                                lease_margin=15.0)
    confirmations = BackgroundConfirmations(runner, load=load, hold=hold, max_held=max_held, max_queued=max_queued)
    return clock, ticks, sender, load, confirmations


def test_confirmations_written_while_payment_jobs_keep_the_process_busy_wait_for_a_quiet_moment(
    engine: Engine,
) -> None:
    clock, _, sender, load, confirmations = _held_confirmations(engine, hold=60.0)
    orders = [_confirm_with_sent_notification(engine, clock, confirmations) for _ in range(3)]
    for order_id in orders:
        row = _notification_row(engine, order_id)
        # Claimed for this process under a lease that covers the hold: the relay leaves it alone meanwhile.
        assert row.state == "running"
        assert row.lease_until.replace(tzinfo=None) == (clock() + timedelta(seconds=1.0 + 15.0 + 60.0)).replace(
            tzinfo=None)  # as stored: SQLite's column reads back without its zone
    assert not wait_until(lambda: sender.sent, timeout=0.5, interval=0.01)  # held: the payments have the cores
    load.busy = False  # the backlog is gone
    assert wait_until(lambda: len(sender.sent) == 3, timeout=5, interval=0.01)
    assert confirmations.flush(5)
    assert [o for o, _ in sender.sent] == orders
    assert {_notification_row(engine, o).state for o in orders} == {"done"}


def test_a_quiet_process_sends_at_once_under_the_ordinary_lease(engine: Engine) -> None:
    clock, _, sender, load, confirmations = _held_confirmations(engine)
    load.busy = False
    order_id = _confirm_with_sent_notification(engine, clock, confirmations)
    assert wait_until(lambda: sender.sent == [(order_id, "order_confirmed")], timeout=5, interval=0.01)
    assert confirmations.flush(5)
    assert _notification_row(engine, order_id).state == "done"
    assert confirmations.claim_until(clock()) == clock() + timedelta(seconds=1.0 + 15.0)


def test_a_held_confirmation_goes_out_once_it_has_waited_its_hold_even_if_the_process_stays_busy(
    engine: Engine,
) -> None:
    clock, ticks, sender, _, confirmations = _held_confirmations(engine, hold=60.0)
    order_id = _confirm_with_sent_notification(engine, clock, confirmations)
    assert not wait_until(lambda: sender.sent, timeout=0.3, interval=0.01)
    ticks.now += 59.0
    assert not wait_until(lambda: sender.sent, timeout=0.3, interval=0.01)
    ticks.now += 1.5  # waited its hold out; its lease still has its margin left
    assert wait_until(lambda: sender.sent == [(order_id, "order_confirmed")], timeout=5, interval=0.01)
    assert confirmations.flush(5)
    assert _notification_row(engine, order_id).state == "done"


def test_an_exiting_process_sends_what_it_holds_at_once(engine: Engine) -> None:
    clock, _, sender, _, confirmations = _held_confirmations(engine, hold=60.0)
    orders = [_confirm_with_sent_notification(engine, clock, confirmations) for _ in range(2)]
    assert not wait_until(lambda: sender.sent, timeout=0.3, interval=0.01)
    assert confirmations.flush(5)  # the process is busy, but it is exiting
    assert sorted(o for o, _ in sender.sent) == sorted(orders)
    assert {_notification_row(engine, o).state for o in orders} == {"done"}


def test_a_process_holds_at_most_max_held_confirmations_and_leaves_the_rest_to_the_relay(engine: Engine) -> None:
    clock, _, sender, _, confirmations = _held_confirmations(engine, max_held=2, max_queued=1)
    first = _confirm_with_sent_notification(engine, clock, confirmations)
    assert wait_until(lambda: confirmations._queue is not None and confirmations._queue.qsize() == 0, timeout=5,
                      interval=0.01)  # taken, held
    held = [_confirm_with_sent_notification(engine, clock, confirmations) for _ in range(2)]
    assert confirmations.claim_until(clock()) is None  # two wait behind the held one: more than max_queued too
    overflow = _confirm_with_sent_notification(engine, clock, confirmations)
    row = _notification_row(engine, overflow)
    assert (row.state, row.published_at) == ("pending", None)  # the relay publishes it at once
    assert confirmations.flush(5)
    assert sorted(o for o, _ in sender.sent) == sorted([first, *held])
