"""Engines with bounded waits on SQLite and PostgreSQL.

Every wait on the database is bounded by about two seconds (connect, pool checkout, lock), so a
database that is down or locked turns into a 503 instead of a hung request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

DB_WAIT_SECONDS = 2.0
DEFAULT_BUSY_MS = int(DB_WAIT_SECONDS * 1000)
# The least a deadline-bound transaction may wait for a lock: less would fail on any ordinary contention.
MIN_LOCK_WAIT = 0.05
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(
    url: str, *, schema: str | None = None, pool_size: int = 10, max_overflow: int | None = None
) -> Engine:
    """`max_overflow`: connections opened beyond `pool_size` under load (None: as many again)."""
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
        max_overflow=pool_size if max_overflow is None else max_overflow,
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
        cursor.execute(f"PRAGMA busy_timeout={DEFAULT_BUSY_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        # A transaction may wait less for the lock than the engine's default (see `write`'s `wait`); the
        # PRAGMA is sent only when the wait changes, so the default path pays nothing for it.
        busy_ms = int(options.get("lock_wait", DB_WAIT_SECONDS) * 1000)
        info = conn.connection.info
        if info.get("busy_ms", DEFAULT_BUSY_MS) != busy_ms:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
            info["busy_ms"] = busy_ms
        if options.get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def lock_wait(seconds: float) -> float:
    """How long a transaction bound to a deadline may wait for a lock: what is left of the deadline, within
    [MIN_LOCK_WAIT, DB_WAIT_SECONDS]. The services' unit of work applies it (`lock_wait` execution option)."""
    return min(DB_WAIT_SECONDS, max(MIN_LOCK_WAIT, seconds))
