"""process_payment_job, on a real database and on the in-memory unit of work (the same rules), with a
scripted payment gateway."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.adapters.sql.dead_letters import SqlDeadLetters
from app.domain import FailureReason, OrderStatus
from app.policies import JobsPaymentConfig
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from app.services.unit_of_work import ClaimedJob, DeadLettered
from tests.fake_unit_of_work import MemoryDeadLetters
from tests.workers.fakes import Clock, FakeJobGateway, dead_letters_of, job, order, place_order

CONFIG = JobsPaymentConfig(attempt_timeout=10.0, max_retries=3, backoff_base=1.0, backoff_max=60.0)


def announced(uow: Any) -> list[tuple[int, str]]:
    """The dead letters the committed units told the dead-letter consumer about."""
    return [(m.dead_letter_id, m.order_id) for m in uow.published if isinstance(m, DeadLettered)]


def claim(uow: Any, order_id: str, clock: Clock, *, lease: float, token: str) -> ClaimedJob | None:
    with uow() as unit:
        claimed = unit.outbox.payments.claim(order_id, now=clock(), lease_until=clock() + timedelta(seconds=lease),
                                             token=token)
        unit.commit()
    return claimed  # type: ignore[no-any-return]


def reclaim(uow: Any, clock: Clock) -> int:
    with uow() as unit:
        count = unit.outbox.payments.reclaim_expired(now=clock())
        unit.commit()
    return count  # type: ignore[no-any-return]


def move(uow: Any, order_id: str, clock: Clock) -> None:
    """The real-time path confirms the order."""
    with uow() as unit:
        unit.orders.move(order_id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.CONFIRMED,
                         now=clock(), payment_id="pay_api")
        unit.commit()


def make_runner(uow: Any, gateway: FakeJobGateway, clock: Clock, **kwargs: object) -> PaymentJobRunner:
    return PaymentJobRunner(uow=uow, gateway=gateway, config=CONFIG, now=clock, rng=lambda: 0.5,
                            **kwargs)  # type: ignore[arg-type]


def run_until_settled(uow: Any, runner: PaymentJobRunner, clock: Clock, order_id: str) -> list[str]:
    outcomes = []
    for _ in range(20):
        outcomes.append(process_payment_job(order_id, runner=runner))
        state = job(uow, order_id)
        if state.state in ("done", "dead"):
            return outcomes
        clock.moment = max(clock.moment, state.next_attempt_at)
    raise AssertionError(f"job never settled: {outcomes}")


def test_captured_payment_confirms_the_order_closes_the_job_and_queues_a_notification(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["captured"])
    order_id = place_order(uow, now=clock())
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "succeeded"
    stored = order(uow, order_id)
    assert stored.status is OrderStatus.CONFIRMED
    assert stored.payment.payment_id == f"pay_{order_id[:8]}"
    assert stored.payment.attempts == 1
    assert job(uow, order_id).state == "done"
    with uow(read_only=True) as unit:
        assert unit.outbox.notifications.state_of(order_id, "order_confirmed") == "pending"


def test_declined_payment_fails_the_order_without_a_dead_letter(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["declined"])
    order_id = place_order(uow, now=clock(), customer_id=402)
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "declined"
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.failure_reason) == (OrderStatus.PAYMENT_FAILED, FailureReason.DECLINED)
    assert job(uow, order_id).state == "done"
    assert dead_letters_of(uow, order_id) == []


def test_rejected_payment_is_dead_lettered_after_the_ledger_shows_no_capture(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["rejected"])
    order_id = place_order(uow, now=clock())
    outcome = process_payment_job(order_id, runner=make_runner(uow, gateway, clock))
    assert outcome == "rejected"
    assert gateway.calls == [order_id] and gateway.lookups == [order_id]
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.failure_reason) == (OrderStatus.PAYMENT_FAILED, FailureReason.REJECTED)
    assert job(uow, order_id).state == "dead"
    assert [o for _, o in announced(uow)] == [order_id]


def test_retryable_failure_schedules_a_full_jitter_retry(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["failed"])
    order_id = place_order(uow, now=clock())
    runner = make_runner(uow, gateway, clock)
    assert process_payment_job(order_id, runner=runner) == "retried"
    state = job(uow, order_id)
    assert (state.state, state.retries) == ("pending", 1)
    # rng 0.5 of min(60, 1 * 2**0) = 0.5 s: sub-second precision kept.
    assert state.next_attempt_at == clock() + timedelta(seconds=0.5)
    assert order(uow, order_id).status is OrderStatus.PAYMENT_PENDING
    # Not due yet: a second message finds nothing to run.
    assert process_payment_job(order_id, runner=runner) == "skipped"
    assert len(gateway.calls) == 1


def test_retry_after_from_the_service_delays_the_retry(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["failed"], retry_after=7.0)
    order_id = place_order(uow, now=clock())
    process_payment_job(order_id, runner=make_runner(uow, gateway, clock))
    assert job(uow, order_id).next_attempt_at == clock() + timedelta(seconds=7.0)


def test_open_circuit_defers_job_without_using_a_retry(uow: Any) -> None:
    clock = Clock()
    break_end = clock() + timedelta(seconds=12.5)
    gateway = FakeJobGateway(["captured"], break_until=break_end.timestamp())
    order_id = place_order(uow, now=clock())
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "deferred"
    state = job(uow, order_id)
    assert (state.state, state.retries) == ("pending", 0)
    assert abs((state.next_attempt_at - break_end).total_seconds()) < 0.001
    assert gateway.calls == []
    assert order(uow, order_id).payment.attempts == 0


def test_a_call_the_circuit_refused_midway_is_deferred_too(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["not_attempted"])
    order_id = place_order(uow, now=clock())
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "deferred"
    assert job(uow, order_id).retries == 0


def test_exhausted_retries_with_a_capture_in_the_ledger_confirm_the_order(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=[{"id": "pay_ledger", "order_id": order_id}])
    outcomes = run_until_settled(uow, make_runner(uow, gateway, clock), clock, order_id)
    assert outcomes == ["retried"] * CONFIG.max_retries + ["succeeded"]
    assert gateway.lookups == [order_id]
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_ledger")
    assert stored.payment.attempts == 1 + CONFIG.max_retries


def test_exhausted_retries_dead_letter_the_order_with_its_attempt_history(uow: Any) -> None:
    clock, gateway = Clock(), FakeJobGateway(["failed"])
    order_id = place_order(uow, now=clock())
    runner = make_runner(uow, gateway, clock)
    outcomes = run_until_settled(uow, runner, clock, order_id)
    assert outcomes == ["retried"] * CONFIG.max_retries + ["dead_lettered"]
    assert len(gateway.calls) == 1 + CONFIG.max_retries
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.failure_reason) == (
        OrderStatus.PAYMENT_FAILED, FailureReason.RETRIES_EXHAUSTED)
    assert job(uow, order_id).state == "dead"
    [letter] = dead_letters_of(uow, order_id)
    assert letter.attempts == 1 + CONFIG.max_retries
    assert [a["http_status"] for a in letter.history] == [503] * (1 + CONFIG.max_retries)
    assert letter.last_error == "HTTP 503"
    assert json.loads(json.dumps(letter.to_dict()))["replayed_at"] is None
    assert announced(uow) == [(letter.id, order_id)]


def test_dead_letter_row_order_and_job_change_in_one_transaction(uow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing the dead letter leaves the order, job and dead letters all untouched."""
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["failed"])
    runner = make_runner(uow, gateway, clock)
    runner.config = JobsPaymentConfig(attempt_timeout=10.0, max_retries=0, backoff_base=1.0, backoff_max=1.0)

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr(SqlDeadLetters, "add", broken)
    monkeypatch.setattr(MemoryDeadLetters, "add", broken)
    with pytest.raises(RuntimeError):
        process_payment_job(order_id, runner=runner)
    monkeypatch.undo()
    stored = order(uow, order_id)
    assert stored.status is OrderStatus.PAYMENT_PENDING
    assert stored.payment.attempts == 0
    assert job(uow, order_id).state == "running"  # its lease runs out and the relay hands it out again
    assert dead_letters_of(uow, order_id) == []


def test_claim_lets_only_one_of_two_messages_run_the_job(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    first = claim(uow, order_id, clock, lease=30, token="a" * 32)
    second = claim(uow, order_id, clock, lease=30, token="b" * 32)
    assert first is not None and second is None
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "skipped"
    assert gateway.calls == []


def test_concurrent_messages_capture_once(uow: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["captured"])
    runner = make_runner(uow, gateway, clock)
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: process_payment_job(order_id, runner=runner), range(6)))
    assert sorted(outcomes) == ["skipped"] * 5 + ["succeeded"]
    assert gateway.calls == [order_id]


def test_job_of_an_order_already_confirmed_is_closed_without_a_call(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    move(uow, order_id, clock)
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "skipped"
    assert gateway.calls == []
    assert job(uow, order_id).state == "done"


def test_job_not_due_before_the_request_deadline_is_left_alone(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock(), due_at=clock() + timedelta(seconds=10))
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "skipped"
    assert job(uow, order_id).state == "pending"
    assert gateway.calls == []


def test_worker_that_lost_its_lease_cannot_touch_the_job_again(uow: Any) -> None:
    clock = Clock(datetime.now(UTC))
    order_id = place_order(uow, now=clock())
    stale = claim(uow, order_id, clock, lease=1, token="c" * 32)
    assert stale is not None
    clock.advance(2)
    assert reclaim(uow, clock) >= 1
    assert claim(uow, order_id, clock, lease=30, token="d" * 32) is not None
    with uow() as unit:
        assert not unit.outbox.payments.finish(stale, state="dead", now=clock())
        unit.commit()
    assert job(uow, order_id).state == "running"


def test_claim_returns_what_the_payment_call_needs_of_the_order(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock(), customer_id=77)
    claimed = claim(uow, order_id, clock, lease=30, token="c" * 32)
    assert claimed is not None
    assert (claimed.retries, claimed.order_status, claimed.customer_id, str(claimed.total), claimed.currency) == (
        0, "PaymentPending", 77, "25.00", "USD")


def test_capture_for_an_order_someone_else_settled_meanwhile_still_counts_its_attempt(
    uow: Any,
) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())

    class SettledDuringTheCall(FakeJobGateway):
        def capture(self, **kwargs: object):  # type: ignore[no-untyped-def, override]
            move(uow, order_id, clock)  # the real-time path confirms the order while the worker's call runs
            return super().capture(**kwargs)  # type: ignore[arg-type]

    gateway = SettledDuringTheCall(["captured"])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "succeeded"
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.payment_id, stored.payment.attempts) == (
        OrderStatus.CONFIRMED, "pay_api", 1)
    assert job(uow, order_id).state == "done"


def _lose_worker_runs(uow: Any, clock: Clock, order_id: str, runs: int) -> None:
    """`runs` claims whose worker died mid-call: each lease runs out and the relay reclaims the job."""
    for run in range(runs):
        assert claim(uow, order_id, clock, lease=1, token=f"{run:032d}") is not None
        clock.advance(2)
        assert reclaim(uow, clock) >= 1


def test_a_lost_run_counts_as_a_retry(uow: Any) -> None:
    clock = Clock(datetime.now(UTC))
    order_id = place_order(uow, now=clock())
    _lose_worker_runs(uow, clock, order_id, 2)
    assert (job(uow, order_id).state, job(uow, order_id).retries) == ("pending", 2)
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "succeeded"
    assert order(uow, order_id).status is OrderStatus.CONFIRMED


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_without_another_call(uow: Any) -> None:
    clock, gateway = Clock(datetime.now(UTC)), FakeJobGateway(["captured"])
    order_id = place_order(uow, now=clock())
    _lose_worker_runs(uow, clock, order_id, 1 + CONFIG.max_retries)
    outcome = process_payment_job(order_id, runner=make_runner(uow, gateway, clock))
    assert outcome == "dead_lettered"
    assert gateway.calls == [] and gateway.lookups == [order_id]
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.failure_reason) == (
        OrderStatus.PAYMENT_FAILED, FailureReason.RETRIES_EXHAUSTED)
    [letter] = dead_letters_of(uow, order_id)
    assert "worker lost" in (letter.last_error or "")


def test_a_job_whose_lost_run_captured_is_confirmed_from_the_ledger(uow: Any) -> None:
    clock = Clock(datetime.now(UTC))
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=[{"id": "pay_lost_run", "order_id": order_id}])
    _lose_worker_runs(uow, clock, order_id, 1 + CONFIG.max_retries)
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "succeeded"
    assert gateway.calls == []
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_lost_run")


def test_a_rejected_payment_with_a_capture_in_the_ledger_confirms_the_order(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["rejected"], ledger=[{"id": "pay_earlier", "order_id": order_id}])
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "succeeded"
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_earlier")
    assert job(uow, order_id).state == "done"
    assert dead_letters_of(uow, order_id) == []


def test_an_unreachable_ledger_is_not_a_no_the_job_runs_again_later(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=None)
    runner = make_runner(uow, gateway, clock)
    for _ in range(1 + CONFIG.max_retries):
        process_payment_job(order_id, runner=runner)
        clock.moment = max(clock.moment, job(uow, order_id).next_attempt_at)
    # Retries spent and the ledger unreachable: no dead letter, the job is pending for a later look.
    state = job(uow, order_id)
    assert state.state == "pending" and state.next_attempt_at > clock() - timedelta(seconds=1)
    assert order(uow, order_id).status is OrderStatus.PAYMENT_PENDING
    assert announced(uow) == []
    calls = len(gateway.calls)
    # The next run makes no further capture: it only asks the ledger again, which now has the capture.
    gateway.ledger = [{"id": "pay_found_later", "order_id": order_id}]
    clock.moment = max(clock.moment, state.next_attempt_at)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    assert len(gateway.calls) == calls
    assert order(uow, order_id).payment.payment_id == "pay_found_later"


def test_an_unreachable_ledger_after_a_rejection_keeps_the_order_pending(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["rejected"], ledger=None)
    assert process_payment_job(order_id, runner=make_runner(uow, gateway, clock)) == "retried"
    assert order(uow, order_id).status is OrderStatus.PAYMENT_PENDING
    assert job(uow, order_id).state == "pending"
    assert announced(uow) == []


def test_a_conflict_while_the_same_key_is_in_flight_is_retried(uow: Any) -> None:
    clock = Clock()
    order_id = place_order(uow, now=clock())
    gateway = FakeJobGateway(["conflict", "captured"])
    runner = make_runner(uow, gateway, clock)
    assert run_until_settled(uow, runner, clock, order_id) == ["retried", "succeeded"]
    assert order(uow, order_id).status is OrderStatus.CONFIRMED


def test_a_run_that_outlived_its_lease_does_not_dead_letter_an_order_a_newer_run_owns(uow: Any) -> None:
    """A worker frozen past its lease wakes up to give up; meanwhile the relay took the job back and a newer
    run captured. The stale run's dead letter would fail an order that was charged: it must do nothing."""
    clock = Clock(datetime.now(UTC))
    order_id = place_order(uow, now=clock())

    class FreezesThenFails(FakeJobGateway):
        def capture(self, **kwargs: object) -> object:  # type: ignore[override]
            result = super().capture(**kwargs)  # type: ignore[arg-type]
            # While this call hung, the lease ran out and the relay handed the job to another worker.
            clock.advance(CONFIG.attempt_timeout + 60)
            reclaim(uow, clock)
            return result

    stale = make_runner(uow, FreezesThenFails(["rejected"]), clock)
    assert process_payment_job(order_id, runner=stale) == "skipped"
    assert order(uow, order_id).status is OrderStatus.PAYMENT_PENDING
    assert dead_letters_of(uow, order_id) == []
    assert order(uow, order_id).payment.attempts == 1  # its attempt is still counted
    fresh = make_runner(uow, FakeJobGateway(["captured"]), clock)
    assert process_payment_job(order_id, runner=fresh) == "succeeded"
    assert order(uow, order_id).status is OrderStatus.CONFIRMED
