"""Once an order row is committed, no answer says nothing was changed, and one Idempotency-Key is never more
than one order: the database fails at each point of a placement, on SQLite and on PostgreSQL.

Faults are injected into the real engine (SQLAlchemy events): a statement that fails, or a COMMIT that fails
after (or instead of) committing, as a terminated connection or a failover does."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError

from app.adapters.sql import SqlUnitOfWorkFactory
from app.adapters.sql.tables import orders
from app.api.validation import canonical_fingerprint
from tests.integration.conftest import Stack

BODY = {"customer_id": 31, "lines": [{"product_id": 1, "quantity": 2}]}


def post(stack: Stack, key: str | None = None, body: dict[str, Any] = BODY) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return stack.client.post("/api/orders", json=body, headers=headers)


def engine_of(stack: Stack) -> Engine:
    return stack.services.engine  # type: ignore[no-any-return]


def order_count(stack: Stack) -> int:
    with engine_of(stack).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(orders)).scalar_one())


def _broken(statement: str) -> OperationalError:
    return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"))


@contextmanager
def failing_statements(stack: Stack, words: str) -> Iterator[None]:
    """Every statement containing `words` fails, as on a connection the server just terminated."""

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if words in statement:
            raise _broken(statement)

    engine = engine_of(stack)
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


@contextmanager
def failing_order_commit(stack: Stack, *, committed: bool) -> Iterator[None]:
    """The COMMIT of the transaction that inserts an order fails: after the data was committed (`committed`, the
    answer was lost) or instead (the commit never reached the server)."""
    engine = engine_of(stack)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO orders"):
            conn.info["order_inserted"] = True

    def on_commit(conn: Any) -> None:
        if not conn.info.pop("order_inserted", False):
            return
        if committed:
            conn.connection.dbapi_connection.commit()
        else:
            conn.connection.dbapi_connection.rollback()
        raise _broken("COMMIT")

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "commit", on_commit)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "commit", on_commit)


def test_a_database_failure_after_the_order_is_stored_answers_201_pending_and_the_key_keeps_it(
    stack: Stack,
) -> None:
    before = order_count(stack)
    with failing_statements(stack, "INSERT INTO payment_attempts"):
        first = post(stack, "stall-after-store")
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["status"] == "PaymentPending"
    order_id = first.get_json()["id"]
    assert first.headers["Location"] == f"/api/orders/{order_id}"
    again = post(stack, "stall-after-store")
    assert again.status_code == 201
    assert again.get_json()["id"] == order_id
    assert again.headers["Idempotent-Replayed"] == "true"
    assert order_count(stack) == before + 1
    # The order's job is in the outbox: a worker finishes the payment the API could not record.
    stored = stack.client.get(f"/api/orders/{order_id}").get_json()
    assert stored["status"] == "PaymentPending"


def test_without_a_key_a_failure_after_the_order_is_stored_is_not_a_503(stack: Stack) -> None:
    before = order_count(stack)
    with failing_statements(stack, "INSERT INTO payment_attempts"):
        response = post(stack)
    assert response.status_code == 201
    assert response.get_json()["status"] == "PaymentPending"
    assert order_count(stack) == before + 1


def test_a_commit_whose_answer_was_lost_answers_with_the_stored_order(stack: Stack) -> None:
    before = order_count(stack)
    with failing_order_commit(stack, committed=True):
        first = post(stack, "commit-answer-lost")
    assert first.status_code == 201, first.get_json()
    order_id = first.get_json()["id"]
    assert order_count(stack) == before + 1
    again = post(stack, "commit-answer-lost")
    assert (again.status_code, again.get_json()["id"]) == (201, order_id)


def test_a_commit_that_never_happened_is_a_503_that_frees_the_key(stack: Stack) -> None:
    before = order_count(stack)
    with failing_order_commit(stack, committed=False):
        first = post(stack, "commit-never-happened")
    assert first.status_code == 503
    assert "nothing was changed" in first.get_json()["detail"]
    assert order_count(stack) == before
    again = post(stack, "commit-never-happened")
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert order_count(stack) == before + 1


def test_a_commit_nobody_can_check_is_a_503_naming_the_order_and_the_retry_gets_that_order(
    stack: Stack,
) -> None:
    before = order_count(stack)
    engine = engine_of(stack)

    def unreadable(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT orders.id") and "WHERE orders.id" in statement:
            raise _broken(statement)

    event.listen(engine, "before_cursor_execute", unreadable)
    try:
        with failing_order_commit(stack, committed=True):
            first = post(stack, "commit-unknown")
    finally:
        event.remove(engine, "before_cursor_execute", unreadable)
    assert first.status_code == 503
    problem = first.get_json()
    assert problem["type"].endswith("/order-outcome-unknown")
    assert "nothing was changed" not in problem["detail"]
    assert first.headers["Location"] == f"/api/orders/{problem['order_id']}"
    assert first.headers["Retry-After"]
    again = post(stack, "commit-unknown")
    assert again.status_code == 201
    assert again.get_json()["id"] == problem["order_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert order_count(stack) == before + 1


def _crashed_request(stack: Stack, key: str, *, with_order: bool, lapsed: bool) -> str | None:
    """What a request killed mid-flight leaves: its claim, and its order bound to the key if it got that far
    (the id of that order is returned)."""
    engine = engine_of(stack)
    now = datetime.now(UTC) - timedelta(hours=1) if lapsed else datetime.now(UTC)
    with SqlUnitOfWorkFactory(engine)() as unit:
        claim = unit.idempotency.claim(key, canonical_fingerprint(BODY), now=now, lock_for=timedelta(seconds=10),
                                       keep_for=timedelta(days=2), token="killed-request")
        assert claim.outcome == "claimed"
        unit.commit()
    if not with_order:
        return None
    stack.payments.outcome = "failed"  # the killed request's payment never answered
    try:
        order_id = str(post(stack).get_json()["id"])
    finally:
        stack.payments.outcome = "captured"
    with SqlUnitOfWorkFactory(engine)() as unit:
        assert unit.idempotency.bind(key, "killed-request", order_id)
        unit.commit()
    return order_id


def test_a_key_whose_request_died_after_storing_its_order_answers_with_that_order(stack: Stack) -> None:
    bound = _crashed_request(stack, "died-after-store", with_order=True, lapsed=True)
    before, calls = order_count(stack), len(stack.payments.calls)
    again = post(stack, "died-after-store")
    assert again.status_code == 201
    assert again.get_json()["id"] == bound
    assert again.get_json()["status"] == "PaymentPending"  # the order as it is now
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/api/orders/{bound}"
    assert order_count(stack) == before
    assert len(stack.payments.calls) == calls  # no payment call: the order's job finishes it


def test_a_key_whose_request_is_still_running_is_in_use_even_with_its_order_stored(stack: Stack) -> None:
    _crashed_request(stack, "still-running", with_order=True, lapsed=False)
    response = post(stack, "still-running")
    assert response.status_code == 409
    assert response.get_json()["type"].endswith("/idempotency-key-in-use")


def test_a_lapsed_claim_without_an_order_is_taken_over_and_places_one_order(stack: Stack) -> None:
    _crashed_request(stack, "died-before-store", with_order=False, lapsed=True)
    before = order_count(stack)
    response = post(stack, "died-before-store")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert order_count(stack) == before + 1
    assert post(stack, "died-before-store").get_json()["id"] == response.get_json()["id"]


def test_a_request_whose_claim_was_taken_over_stores_no_order(stack: Stack) -> None:
    engine = engine_of(stack)
    now = datetime.now(UTC)
    uow = SqlUnitOfWorkFactory(engine)
    with uow() as unit:
        unit.idempotency.claim("taken-over", "fp", now=now - timedelta(minutes=5), lock_for=timedelta(seconds=10),
                               keep_for=timedelta(days=1), token="slow")
        unit.commit()
    with uow() as unit:
        assert unit.idempotency.claim("taken-over", "fp", now=now, lock_for=timedelta(seconds=10),
                                      keep_for=timedelta(days=1), token="fast").outcome == "claimed"
        unit.commit()
    with uow() as unit:
        # The slow request reaches its INSERT after the takeover: it may not bind, so it must not store.
        assert not unit.idempotency.bind("taken-over", "slow", uuid.uuid4().hex)
        assert unit.idempotency.bind("taken-over", "fast", "order-of-fast")
        assert not unit.idempotency.bind("taken-over", "fast", "a-second-order")
        unit.commit()


@pytest.mark.parametrize("round_", range(3))
def test_of_two_concurrent_takeovers_of_a_lapsed_claim_exactly_one_wins(stack: Stack, round_: int) -> None:
    """Two retries of one key arrive together after its claim lapsed: the first takeover is still
    uncommitted when the second one runs; the second must not win too (PostgreSQL's READ COMMITTED lets it
    read the lapsed claim; only a conditional write refuses it)."""
    engine = engine_of(stack)
    uow = SqlUnitOfWorkFactory(engine)
    key = f"race-{round_}-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def claim(unit: Any, token: str, at: datetime) -> str:
        return str(unit.idempotency.claim(key, "fp", now=at, lock_for=timedelta(seconds=10),
                                          keep_for=timedelta(days=1), token=token).outcome)

    with uow() as unit:
        claim(unit, "first", now - timedelta(minutes=5))
        unit.commit()
    second: list[str] = []
    started = threading.Event()
    with uow() as unit_a:
        assert claim(unit_a, "a", now) == "claimed"

        def run_b() -> None:
            started.set()
            with uow() as unit_b:
                second.append(claim(unit_b, "b", now))
                unit_b.commit()

        thread = threading.Thread(target=run_b)
        thread.start()
        started.wait(5)
        _wait_until_blocked_or_done(engine, thread)
        unit_a.commit()
    thread.join(10)
    assert second == ["in_use"]


def _wait_until_blocked_or_done(engine: Engine, thread: threading.Thread) -> None:
    """Give the second claim the chance to run into the first's uncommitted write before the first commits.
    On PostgreSQL that shows as a lock wait on the key's row; SQLite's second BEGIN IMMEDIATE waits for the
    write lock without a sign, so there the first just commits. Either way only one claim may win: the wait
    makes the race likelier, never the outcome different."""
    if engine.dialect.name != "postgresql":
        return
    deadline = time.monotonic() + 2.0
    while thread.is_alive() and time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%idempotency_keys%%'").scalar()
        if waiting:
            return
        time.sleep(0.01)
