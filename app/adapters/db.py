"""Engines with bounded waits on SQLite and PostgreSQL.

Every wait on the database is bounded by about two seconds (connect, pool checkout, lock), so a
database that is down or locked turns into a 503 instead of a hung request.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

DB_WAIT_SECONDS = 2.0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, schema: str | None = None, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"DATABASE_SCHEMA: not a plain schema name: {schema!r}")
    options = f"-c lock_timeout={int(DB_WAIT_SECONDS * 1000)} -c statement_timeout=15000"
    if schema:
        options += f" -c search_path={schema}"
    connect_args: dict[str, Any] = {"connect_timeout": int(DB_WAIT_SECONDS), "options": options}
    return create_engine(
        url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=DB_WAIT_SECONDS,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": DB_WAIT_SECONDS, "check_same_thread": False},
        pool_size=10,
        max_overflow=10,
        pool_timeout=DB_WAIT_SECONDS,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" event below decides how each
        # transaction starts, so writers take the write lock up front instead of failing to upgrade.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(DB_WAIT_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction (BEGIN IMMEDIATE on SQLite), committed on success."""
    with engine.begin() as conn:
        yield conn


class CommitOutcomeUnknown(Exception):
    """The COMMIT itself failed (the connection died, the server went away): the transaction may or may not
    have been committed. `__cause__` is the database error."""


@contextmanager
def write_reporting_commit(engine: Engine) -> Iterator[Connection]:
    """As `write`, but a failure of the COMMIT is told apart from a failure before it: an error raised in the
    block (or by BEGIN) means nothing was stored; CommitOutcomeUnknown means it may have been."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        except BaseException:
            try:
                transaction.rollback()
            except Exception:  # noqa: BLE001 - a dead connection rolls back by itself; the first error matters
                pass
            raise
        try:
            transaction.commit()
        except Exception as exc:
            raise CommitOutcomeUnknown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn = conn.execution_options(readonly=True)
        with conn.begin():
            yield conn
