"""process_payment_job over a real database with a scripted payment gateway."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from app.adapters import jobs_repository as jobs
from app.adapters.db import read, write
from app.adapters.tables import notification_jobs
from app.domain import FailureReason, OrderStatus
from app.resilience.config import JobsPaymentConfig
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from tests.workers.fakes import Clock, FakeJobGateway, order, place_order

CONFIG = JobsPaymentConfig(attempt_timeout=10.0, max_retries=3, backoff_base=1.0, backoff_max=60.0)


class Announcer:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def dead_lettered(self, dead_letter_id: int, order_id: str) -> None:
        self.sent.append((dead_letter_id, order_id))


def make_runner(engine: Engine, gateway: FakeJobGateway, clock: Clock, **kwargs: object) -> PaymentJobRunner:
    return PaymentJobRunner(engine=engine, gateway=gateway, config=CONFIG, now=clock, rng=lambda: 0.5,
                            **kwargs)  # type: ignore[arg-type]


def job(engine: Engine, order_id: str) -> jobs.PaymentJobRow:
    with read(engine) as conn:
        found = jobs.get_payment_job(conn, order_id)
    assert found is not None
    return found


def run_until_settled(engine: Engine, runner: PaymentJobRunner, clock: Clock, order_id: str) -> list[str]:
    outcomes = []
    for _ in range(20):
        outcomes.append(process_payment_job(order_id, runner=runner))
        state = job(engine, order_id)
        if state.state in ("done", "dead"):
            return outcomes
        clock.moment = max(clock.moment, state.next_attempt_at)
    raise AssertionError(f"job never settled: {outcomes}")


def test_captured_payment_confirms_the_order_closes_the_job_and_queues_a_notification(engine: Engine) -> None:
    clock, gateway = Clock(), FakeJobGateway(["captured"])
    order_id = place_order(engine, now=clock())
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "succeeded"
    stored = order(engine, order_id)
    assert stored.status is OrderStatus.CONFIRMED
    assert stored.payment.payment_id == f"pay_{order_id[:8]}"
    assert stored.payment.attempts == 1
    assert job(engine, order_id).state == "done"
    with read(engine) as conn:
        kinds = conn.execute(select(notification_jobs.c.kind).where(notification_jobs.c.order_id == order_id))
        assert [k for (k,) in kinds] == ["order_confirmed"]


def test_declined_payment_fails_the_order_without_a_dead_letter(engine: Engine) -> None:
    clock, gateway = Clock(), FakeJobGateway(["declined"])
    order_id = place_order(engine, now=clock(), customer_id=402)
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "declined"
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.failure_reason) == (OrderStatus.PAYMENT_FAILED, FailureReason.DECLINED)
    assert job(engine, order_id).state == "done"
    with read(engine) as conn:
        assert [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id] == []


def test_rejected_payment_is_dead_lettered_after_the_ledger_shows_no_capture(engine: Engine) -> None:
    clock, gateway, announcer = Clock(), FakeJobGateway(["rejected"]), Announcer()
    order_id = place_order(engine, now=clock())
    outcome = process_payment_job(order_id, runner=make_runner(engine, gateway, clock, announcer=announcer))
    assert outcome == "rejected"
    assert gateway.calls == [order_id] and gateway.lookups == [order_id]
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.failure_reason) == (OrderStatus.PAYMENT_FAILED, FailureReason.REJECTED)
    assert job(engine, order_id).state == "dead"
    assert [o for _, o in announcer.sent] == [order_id]


def test_retryable_failure_schedules_a_full_jitter_retry(engine: Engine) -> None:
    clock, gateway = Clock(), FakeJobGateway(["failed"])
    order_id = place_order(engine, now=clock())
    runner = make_runner(engine, gateway, clock)
    assert process_payment_job(order_id, runner=runner) == "retried"
    state = job(engine, order_id)
    assert (state.state, state.retries) == ("pending", 1)
    # rng 0.5 of min(60, 1 * 2**0) = 0.5 s: sub-second precision kept.
    assert state.next_attempt_at == clock() + timedelta(seconds=0.5)
    assert order(engine, order_id).status is OrderStatus.PAYMENT_PENDING
    # Not due yet: a second message finds nothing to run.
    assert process_payment_job(order_id, runner=runner) == "skipped"
    assert len(gateway.calls) == 1


def test_retry_after_from_the_service_delays_the_retry(engine: Engine) -> None:
    clock, gateway = Clock(), FakeJobGateway(["failed"], retry_after=7.0)
    order_id = place_order(engine, now=clock())
    process_payment_job(order_id, runner=make_runner(engine, gateway, clock))
    assert job(engine, order_id).next_attempt_at == clock() + timedelta(seconds=7.0)


def test_open_circuit_defers_job_without_using_a_retry(engine: Engine) -> None:
    clock = Clock()
    break_end = clock() + timedelta(seconds=12.5)
    gateway = FakeJobGateway(["captured"], break_until=break_end.timestamp())
    order_id = place_order(engine, now=clock())
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "deferred"
    state = job(engine, order_id)
    assert (state.state, state.retries) == ("pending", 0)
    assert abs((state.next_attempt_at - break_end).total_seconds()) < 0.001
    assert gateway.calls == []
    assert order(engine, order_id).payment.attempts == 0


def test_a_call_the_circuit_refused_midway_is_deferred_too(engine: Engine) -> None:
    clock, gateway = Clock(), FakeJobGateway(["not_attempted"])
    order_id = place_order(engine, now=clock())
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "deferred"
    assert job(engine, order_id).retries == 0


def test_exhausted_retries_with_a_capture_in_the_ledger_confirm_the_order(engine: Engine) -> None:
    clock = Clock()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=[{"id": "pay_ledger", "order_id": order_id}])
    outcomes = run_until_settled(engine, make_runner(engine, gateway, clock), clock, order_id)
    assert outcomes == ["retried"] * CONFIG.max_retries + ["succeeded"]
    assert gateway.lookups == [order_id]
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_ledger")
    assert stored.payment.attempts == 1 + CONFIG.max_retries


def test_exhausted_retries_dead_letter_the_order_with_its_attempt_history(engine: Engine) -> None:
    clock, gateway, announcer = Clock(), FakeJobGateway(["failed"]), Announcer()
    order_id = place_order(engine, now=clock())
    runner = make_runner(engine, gateway, clock, announcer=announcer)
    outcomes = run_until_settled(engine, runner, clock, order_id)
    assert outcomes == ["retried"] * CONFIG.max_retries + ["dead_lettered"]
    assert len(gateway.calls) == 1 + CONFIG.max_retries
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.failure_reason) == (
        OrderStatus.PAYMENT_FAILED, FailureReason.RETRIES_EXHAUSTED)
    assert job(engine, order_id).state == "dead"
    with read(engine) as conn:
        [letter] = [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id]
    assert letter.attempts == 1 + CONFIG.max_retries
    assert [a["http_status"] for a in letter.history] == [503] * (1 + CONFIG.max_retries)
    assert letter.last_error == "HTTP 503"
    assert json.loads(json.dumps(letter.to_dict()))["replayed_at"] is None
    assert announcer.sent == [(letter.id, order_id)]


def test_dead_letter_row_order_and_job_change_in_one_transaction(engine: Engine, monkeypatch: object) -> None:
    """A failure while writing the dead letter leaves the order, job and dead letters all untouched."""
    import pytest

    clock = Clock()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["failed"])
    runner = make_runner(engine, gateway, clock)
    runner.config = JobsPaymentConfig(attempt_timeout=10.0, max_retries=0, backoff_base=1.0, backoff_max=1.0)

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    patch = pytest.MonkeyPatch()
    patch.setattr(jobs, "insert_dead_letter", broken)
    try:
        with pytest.raises(RuntimeError):
            process_payment_job(order_id, runner=runner)
    finally:
        patch.undo()
    stored = order(engine, order_id)
    assert stored.status is OrderStatus.PAYMENT_PENDING
    assert stored.payment.attempts == 0
    assert job(engine, order_id).state == "running"  # its lease runs out and the relay hands it out again
    with read(engine) as conn:
        assert [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id] == []


def test_claim_lets_only_one_of_two_messages_run_the_job(engine: Engine) -> None:
    clock = Clock()
    order_id = place_order(engine, now=clock())
    with read(engine) as conn:
        assert jobs.get_payment_job(conn, order_id) is not None
    from app.adapters.db import write

    with write(engine) as conn:
        first = jobs.claim_payment_job(conn, order_id, now=clock(), lease_until=clock() + timedelta(seconds=30),
                                       token="a" * 32)
        second = jobs.claim_payment_job(conn, order_id, now=clock(), lease_until=clock() + timedelta(seconds=30),
                                        token="b" * 32)
    assert first is not None and second is None
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "skipped"
    assert gateway.calls == []


def test_concurrent_messages_capture_once(engine: Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = Clock()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["captured"])
    runner = make_runner(engine, gateway, clock)
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: process_payment_job(order_id, runner=runner), range(6)))
    assert sorted(outcomes) == ["skipped"] * 5 + ["succeeded"]
    assert gateway.calls == [order_id]


def test_job_of_an_order_already_confirmed_is_closed_without_a_call(engine: Engine) -> None:
    from app.adapters import repository as repo
    from app.adapters.db import write

    clock = Clock()
    order_id = place_order(engine, now=clock())
    with write(engine) as conn:
        repo.move_order(conn, order_id, from_status=OrderStatus.PAYMENT_PENDING, to_status=OrderStatus.CONFIRMED,
                        now=clock(), payment_id="pay_api")
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "skipped"
    assert gateway.calls == []
    assert job(engine, order_id).state == "done"


def test_job_not_due_before_the_request_deadline_is_left_alone(engine: Engine) -> None:
    clock = Clock()
    order_id = place_order(engine, now=clock(), due_at=clock() + timedelta(seconds=10))
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "skipped"
    assert job(engine, order_id).state == "pending"
    assert gateway.calls == []


def test_worker_that_lost_its_lease_cannot_touch_the_job_again(engine: Engine) -> None:
    from app.adapters.db import write

    clock = Clock(datetime.now(UTC))
    order_id = place_order(engine, now=clock())
    with write(engine) as conn:
        stale = jobs.claim_payment_job(conn, order_id, now=clock(), lease_until=clock() + timedelta(seconds=1),
                                       token="c" * 32)
    assert stale is not None
    clock.advance(2)
    with write(engine) as conn:
        assert jobs.reclaim_expired_payment_leases(conn, now=clock()) >= 1
        fresh = jobs.claim_payment_job(conn, order_id, now=clock(), lease_until=clock() + timedelta(seconds=30),
                                       token="d" * 32)
        assert fresh is not None
        assert not jobs.finish_payment_job(conn, stale, state="dead", now=clock())
    assert job(engine, order_id).state == "running"


def test_claim_returns_what_the_payment_call_needs_of_the_order(engine: Engine) -> None:
    from app.adapters.db import write

    clock = Clock()
    order_id = place_order(engine, now=clock(), customer_id=77)
    with write(engine) as conn:
        claimed = jobs.claim_payment_job(conn, order_id, now=clock(), lease_until=clock() + timedelta(seconds=30),
                                         token="c" * 32)
    assert claimed is not None
    assert (claimed.retries, claimed.order_status, claimed.customer_id, str(claimed.total), claimed.currency) == (
        0, "PaymentPending", 77, "25.00", "USD")


def test_capture_for_an_order_someone_else_settled_meanwhile_still_counts_its_attempt(
    engine: Engine,
) -> None:
    from app.adapters import repository as repo
    from app.adapters.db import write

    clock = Clock()
    order_id = place_order(engine, now=clock())

    class SettledDuringTheCall(FakeJobGateway):
        def capture(self, **kwargs: object):  # type: ignore[no-untyped-def, override]
            with write(engine) as conn:  # the real-time path confirms the order while the worker's call runs
                repo.move_order(conn, order_id, from_status=OrderStatus.PAYMENT_PENDING,
                                to_status=OrderStatus.CONFIRMED, now=clock(), payment_id="pay_api")
            return super().capture(**kwargs)  # type: ignore[arg-type]

    gateway = SettledDuringTheCall(["captured"])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "succeeded"
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.payment_id, stored.payment.attempts) == (
        OrderStatus.CONFIRMED, "pay_api", 1)
    assert job(engine, order_id).state == "done"


def _lose_worker_runs(engine: Engine, clock: Clock, order_id: str, runs: int) -> None:
    """`runs` claims whose worker died mid-call: each lease runs out and the relay reclaims the job."""
    from app.adapters.db import write

    for run in range(runs):
        with write(engine) as conn:
            claimed = jobs.claim_payment_job(conn, order_id, now=clock(),
                                             lease_until=clock() + timedelta(seconds=1), token=f"{run:032d}")
        assert claimed is not None
        clock.advance(2)
        with write(engine) as conn:
            assert jobs.reclaim_expired_payment_leases(conn, now=clock()) >= 1


def test_a_lost_run_counts_as_a_retry(engine: Engine) -> None:
    clock = Clock(datetime.now(UTC))
    order_id = place_order(engine, now=clock())
    _lose_worker_runs(engine, clock, order_id, 2)
    assert (job(engine, order_id).state, job(engine, order_id).retries) == ("pending", 2)
    gateway = FakeJobGateway(["captured"])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "succeeded"
    assert order(engine, order_id).status is OrderStatus.CONFIRMED


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_without_another_call(engine: Engine) -> None:
    clock, gateway = Clock(datetime.now(UTC)), FakeJobGateway(["captured"])
    order_id = place_order(engine, now=clock())
    _lose_worker_runs(engine, clock, order_id, 1 + CONFIG.max_retries)
    outcome = process_payment_job(order_id, runner=make_runner(engine, gateway, clock))
    assert outcome == "dead_lettered"
    assert gateway.calls == [] and gateway.lookups == [order_id]
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.failure_reason) == (
        OrderStatus.PAYMENT_FAILED, FailureReason.RETRIES_EXHAUSTED)
    with read(engine) as conn:
        [letter] = [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id]
    assert "worker lost" in (letter.last_error or "")


def test_a_job_whose_lost_run_captured_is_confirmed_from_the_ledger(engine: Engine) -> None:
    clock = Clock(datetime.now(UTC))
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=[{"id": "pay_lost_run", "order_id": order_id}])
    _lose_worker_runs(engine, clock, order_id, 1 + CONFIG.max_retries)
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "succeeded"
    assert gateway.calls == []
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_lost_run")


def test_a_rejected_payment_with_a_capture_in_the_ledger_confirms_the_order(engine: Engine) -> None:
    clock = Clock()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["rejected"], ledger=[{"id": "pay_earlier", "order_id": order_id}])
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock)) == "succeeded"
    stored = order(engine, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_earlier")
    assert job(engine, order_id).state == "done"
    with read(engine) as conn:
        assert [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id] == []


def test_an_unreachable_ledger_is_not_a_no_the_job_runs_again_later(engine: Engine) -> None:
    clock, announcer = Clock(), Announcer()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["failed"], ledger=None)
    runner = make_runner(engine, gateway, clock, announcer=announcer)
    for _ in range(1 + CONFIG.max_retries):
        process_payment_job(order_id, runner=runner)
        clock.moment = max(clock.moment, job(engine, order_id).next_attempt_at)
    # Retries spent and the ledger unreachable: no dead letter, the job is pending for a later look.
    state = job(engine, order_id)
    assert state.state == "pending" and state.next_attempt_at > clock() - timedelta(seconds=1)
    assert order(engine, order_id).status is OrderStatus.PAYMENT_PENDING
    assert announcer.sent == []
    calls = len(gateway.calls)
    # The next run makes no further capture: it only asks the ledger again, which now has the capture.
    gateway.ledger = [{"id": "pay_found_later", "order_id": order_id}]
    clock.moment = max(clock.moment, state.next_attempt_at)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    assert len(gateway.calls) == calls
    assert order(engine, order_id).payment.payment_id == "pay_found_later"


def test_an_unreachable_ledger_after_a_rejection_keeps_the_order_pending(engine: Engine) -> None:
    clock, announcer = Clock(), Announcer()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["rejected"], ledger=None)
    assert process_payment_job(order_id, runner=make_runner(engine, gateway, clock, announcer=announcer)) == "retried"
    assert order(engine, order_id).status is OrderStatus.PAYMENT_PENDING
    assert job(engine, order_id).state == "pending"
    assert announcer.sent == []


def test_a_conflict_while_the_same_key_is_in_flight_is_retried(engine: Engine) -> None:
    clock = Clock()
    order_id = place_order(engine, now=clock())
    gateway = FakeJobGateway(["conflict", "captured"])
    runner = make_runner(engine, gateway, clock)
    assert run_until_settled(engine, runner, clock, order_id) == ["retried", "succeeded"]
    assert order(engine, order_id).status is OrderStatus.CONFIRMED


def test_a_run_that_outlived_its_lease_does_not_dead_letter_an_order_a_newer_run_owns(engine: Engine) -> None:
    """A worker frozen past its lease wakes up to give up; meanwhile the relay took the job back and a newer
    run captured. The stale run's dead letter would fail an order that was charged: it must do nothing."""
    clock = Clock(datetime.now(UTC))
    order_id = place_order(engine, now=clock())

    class FreezesThenFails(FakeJobGateway):
        def capture(self, **kwargs: object) -> object:  # type: ignore[override]
            result = super().capture(**kwargs)  # type: ignore[arg-type]
            # While this call hung, the lease ran out and the relay handed the job to another worker.
            clock.advance(CONFIG.attempt_timeout + 60)
            with write(engine) as conn:
                jobs.reclaim_expired_payment_leases(conn, now=clock())
            return result

    stale = make_runner(engine, FreezesThenFails(["rejected"]), clock)
    assert process_payment_job(order_id, runner=stale) == "skipped"
    assert order(engine, order_id).status is OrderStatus.PAYMENT_PENDING
    with read(engine) as conn:
        assert [d for d in jobs.list_dead_letters(conn) if d.order_id == order_id] == []
    assert order(engine, order_id).payment.attempts == 1  # its attempt is still counted
    fresh = make_runner(engine, FakeJobGateway(["captured"]), clock)
    assert process_payment_job(order_id, runner=fresh) == "succeeded"
    assert order(engine, order_id).status is OrderStatus.CONFIRMED
