"""A unit of work bound to a deadline waits for a held lock only as long as it was told, on SQLite and on
PostgreSQL; the same engine's other transactions keep their usual wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from app.adapters.db import DB_WAIT_SECONDS, make_engine
from app.adapters.sql import SqlUnitOfWorkFactory
from app.services.unit_of_work import StorageError
from tests.support import DatabaseHandle


@pytest.fixture
def engine(database: DatabaseHandle) -> Iterator[Engine]:
    engine = make_engine(database.url, schema=database.schema)
    yield engine
    engine.dispose()


@contextmanager
def flags_locked(engine: Engine) -> Iterator[None]:
    """Another writer holds what a write of the flags table needs."""
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE feature_flags IN EXCLUSIVE MODE"))
        else:  # BEGIN IMMEDIATE (the engine's begin) already holds SQLite's write lock
            conn.execute(text("UPDATE feature_flags SET updated_by = updated_by"))
        yield


def touch_flags(engine: Engine, wait: float | None) -> float:
    started = time.monotonic()
    with pytest.raises(StorageError), SqlUnitOfWorkFactory(engine)(wait=wait) as unit:
        unit.flags.set("Notifications", enabled=True, by="test", now=datetime.now(UTC))
        unit.commit()
    return time.monotonic() - started


def test_a_deadline_bound_write_gives_up_on_a_held_lock_at_its_own_wait(engine: Engine) -> None:
    with flags_locked(engine):
        bounded = touch_flags(engine, 0.2)
        usual = touch_flags(engine, None)
    # The database's own lock timer decides both; the margins only absorb a busy machine.
    assert bounded < DB_WAIT_SECONDS / 2, bounded
    assert usual >= DB_WAIT_SECONDS * 0.9, usual
    # A bounded wait does not stick to the pooled connection: the usual wait is back for the next one.
    with SqlUnitOfWorkFactory(engine)() as unit:
        assert unit.flags.set("Notifications", enabled=True, by="test", now=datetime.now(UTC)) is not None
        unit.commit()


def test_a_sqlite_writer_queued_behind_committing_writers_waits_past_the_two_seconds(engine: Engine) -> None:
    """Other writers holding the lock in turn for longer than DB_WAIT_SECONDS, committing all along: the
    database is busy, not unreachable, and the queued writer gets its turn instead of `database is locked`."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    busy_for = DB_WAIT_SECONDS * 1.5
    holding = threading.Event()

    def writers_in_turn() -> None:
        # One connection taking the lock again right after each commit: SQLite's busy handler, polling with
        # sleeps, practically never sees the moment between two transactions.
        with engine.connect() as conn:
            stop = time.monotonic() + busy_for
            while time.monotonic() < stop:
                with conn.begin():
                    conn.execute(text("UPDATE feature_flags SET updated_by = 'other' || random()"))
                    holding.set()
                    time.sleep(0.05)

    other = threading.Thread(target=writers_in_turn)
    other.start()
    try:
        assert holding.wait(5)
        with SqlUnitOfWorkFactory(engine)() as unit:
            assert unit.flags.set("Notifications", enabled=True, by="test", now=datetime.now(UTC)) is not None
            unit.commit()
    finally:
        other.join()


def test_a_sqlite_writer_gives_up_once_nobody_commits_for_the_two_seconds(engine: Engine) -> None:
    """Some commits, then a lock held with none: the wait ends DB_WAIT_SECONDS after the last commit seen, even
    with a longer deadline."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single write lock")
    with flags_locked(engine):
        waited = touch_flags(engine, DB_WAIT_SECONDS * 4)
    assert DB_WAIT_SECONDS * 0.9 <= waited < DB_WAIT_SECONDS * 3, waited
