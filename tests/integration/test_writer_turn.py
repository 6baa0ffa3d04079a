"""The threads of one process take turns at SQLite's write lock, first come first served, and every way a
transaction ends gives the turn back.

On a SQLite file of the test's own (the turn is SQLite's alone), whatever DATABASE_URL names.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.adapters.db import DB_WAIT_SECONDS, WriterTurn, make_engine, writer_turn
from app.adapters.migrate import upgrade
from app.adapters.sql import SqlUnitOfWorkFactory
from app.services.unit_of_work import StorageError


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('turn') / 'orderflow.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def turn_of(engine: Engine) -> WriterTurn:
    turn = writer_turn(engine)
    assert turn is not None
    return turn


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, "condition not met in time"
        time.sleep(0.005)


def set_flag(engine: Engine, by: str) -> None:
    with SqlUnitOfWorkFactory(engine)() as unit:
        unit.flags.set("Notifications", enabled=True, by=by, now=datetime.now(UTC))
        unit.commit()


def test_the_turn_passes_first_come_first_served_and_skips_who_left() -> None:
    turn = WriterTurn()
    first, second, third, fourth = (turn.join() for _ in range(4))
    assert first.is_set() and not (second.is_set() or third.is_set() or fourth.is_set())
    assert turn.waiting == 3
    turn.leave(third)  # gave up its place
    turn.leave(first)  # done: the next in line has it
    assert second.is_set() and not fourth.is_set()
    turn.leave(second)
    assert fourth.is_set() and turn.waiting == 0
    turn.leave(fourth)
    assert not turn.held


def test_writers_of_one_process_commit_in_the_order_they_came(engine: Engine) -> None:
    turn = turn_of(engine)
    committed: list[str] = []
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with SqlUnitOfWorkFactory(engine)() as unit:
                unit.flags.set("Notifications", enabled=True, by=name, now=datetime.now(UTC))
                committed.append(name)  # inside the transaction: in the order the writers had the lock
                unit.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = []
    with engine.connect() as holder, holder.begin():
        holder.execute(text("UPDATE feature_flags SET updated_by = 'holder'"))
        assert turn.held
        for index, name in enumerate(("b", "c", "d", "e")):
            thread = threading.Thread(target=writer, args=(name,))
            thread.start()
            threads.append(thread)
            wait_until(lambda count=index + 1: turn.waiting == count)  # queued, in this order
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert committed == ["b", "c", "d", "e"]
    assert not turn.held and turn.waiting == 0


@pytest.mark.parametrize("ending", ["commit", "rollback", "error", "close"])
def test_every_end_of_a_transaction_gives_the_turn_back(engine: Engine, ending: str) -> None:
    turn = turn_of(engine)
    conn = engine.connect()
    try:
        transaction = conn.begin()
        conn.execute(text("UPDATE feature_flags SET updated_by = 'holder'"))
        assert turn.held
        if ending == "commit":
            transaction.commit()
        elif ending == "rollback":
            transaction.rollback()
        elif ending == "error":
            with pytest.raises(Exception):
                conn.execute(text("UPDATE no_such_table SET x = 1"))
            transaction.rollback()
    finally:
        conn.close()
    assert not turn.held
    started = time.monotonic()
    set_flag(engine, "next")
    assert time.monotonic() - started < DB_WAIT_SECONDS / 2


def test_a_writer_that_gives_up_waiting_keeps_no_place_and_no_turn(engine: Engine) -> None:
    turn = turn_of(engine)
    with engine.connect() as holder, holder.begin():
        holder.execute(text("UPDATE feature_flags SET updated_by = 'holder'"))
        with pytest.raises(StorageError, match="locked"), SqlUnitOfWorkFactory(engine)(wait=0.2) as unit:
            unit.flags.set("Notifications", enabled=True, by="late", now=datetime.now(UTC))
        assert turn.waiting == 0 and turn.held
    assert not turn.held
    set_flag(engine, "after")


def test_a_writer_waiting_for_its_turn_gives_up_when_nobody_commits(engine: Engine) -> None:
    """A holder that never commits is a stalled database for the writers behind it: they give up after
    DB_WAIT_SECONDS without a commit, not after their whole queue wait."""
    with engine.connect() as holder, holder.begin():
        holder.execute(text("UPDATE feature_flags SET updated_by = 'holder'"))
        started = time.monotonic()
        with pytest.raises(StorageError, match="locked"):
            set_flag(engine, "behind")
        waited = time.monotonic() - started
    assert DB_WAIT_SECONDS * 0.9 <= waited < DB_WAIT_SECONDS * 3, waited


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_starts_with_a_free_turn(engine: Engine, tmp_path: Path) -> None:
    turn = turn_of(engine)
    report = tmp_path / "child"
    with engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT 1 FROM feature_flags"))
        holder.execute(text("UPDATE feature_flags SET updated_by = 'holder'"))
        assert turn.held
        pid = os.fork()
        if pid == 0:  # the child: the parent's holder is not its own
            try:
                report.write_text("free" if not turn.held and turn.waiting == 0 else "taken")
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report.read_text() == "free"
