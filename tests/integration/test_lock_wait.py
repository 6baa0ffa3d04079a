"""A unit of work bound to a deadline waits for a held lock only as long as it was told, on SQLite and on
PostgreSQL; the same engine's other transactions keep their usual wait."""

from __future__ import annotations

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
