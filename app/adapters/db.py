"""Engines with bounded waits on SQLite and PostgreSQL.

Every wait on the database is bounded by about two seconds (connect, pool checkout, lock), so a
database that is down or locked turns into a 503 instead of a hung request.

On SQLite a writer queues for the single write lock. A writer that waits while other writers keep
committing is in a queue, not facing an unreachable database: it goes on waiting, for as long as its
caller allows (`lock_wait`, else QUEUE_WAIT_SECONDS). Only a lock under which nobody has committed for
DB_WAIT_SECONDS makes it give up. SQLite's own busy handler is not fair (a waiter polls with growing
sleeps, and a newcomer may take the lock between two polls), so under load a flat two-second timeout
turned ordinary queueing into `database is locked`.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.adapters.writer_turn import TurnConnection, TurnTimeout, WriterTurn, connection_turn, writer_turn

DB_WAIT_SECONDS = 2.0
DEFAULT_BUSY_MS = int(DB_WAIT_SECONDS * 1000)
# The least a deadline-bound transaction may wait for a lock: less would fail on any ordinary contention.
MIN_LOCK_WAIT = 0.05
# How long a SQLite writer with no deadline of its own waits for the write lock while others commit.
QUEUE_WAIT_SECONDS = 10.0
# A SQLite writer asks for the lock in windows this long, and looks for others' commits between two: the
# progress it sees decides whether it waits on (a queue) or gives up (nobody committed for DB_WAIT_SECONDS).
# A fresh window also restarts SQLite's busy handler at its shortest sleeps, so a writer that has waited long
# polls as often as a newcomer.
LOCK_WINDOW_SECONDS = 0.25
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
    connect_args: dict[str, Any] = {"timeout": DB_WAIT_SECONDS, "check_same_thread": False}
    turn: WriterTurn | None = None
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        turn = writer_turn(database)
        connect_args["factory"] = TurnConnection
    engine = create_engine(
        url,
        connect_args=connect_args,
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
        if options.get("readonly"):
            # A reader never takes the write lock (WAL): it waits only in SQLite's rare busy cases, as long
            # as its unit allows.
            _busy_timeout(conn, min(DB_WAIT_SECONDS, options.get("lock_wait", DB_WAIT_SECONDS)))
            conn.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(conn, total=options.get("lock_wait", QUEUE_WAIT_SECONDS), turn=turn)

    return engine


def _busy_timeout(conn: Connection, seconds: float) -> None:
    """SQLite's busy timeout of this connection; the PRAGMA is sent only when the value changes."""
    busy_ms = max(1, int(seconds * 1000))
    info = conn.connection.info
    if info.get("busy_ms", DEFAULT_BUSY_MS) != busy_ms:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
        info["busy_ms"] = busy_ms


def _data_version(conn: Connection) -> int | None:
    """Changes whenever another connection commits (SQLite's `PRAGMA data_version`); None if unreadable."""
    try:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            return int(cursor.execute("PRAGMA data_version").fetchone()[0])
        finally:
            cursor.close()
    except Exception:  # noqa: BLE001 - no progress seen: the caller falls back to the plain bound
        return None


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


class _LockWait:
    """One writer's wait: its bound, and the commits of others it has seen (the queue moving)."""

    def __init__(self, conn: Connection, total: float) -> None:
        self.conn = conn
        self.total = total
        self.stall = min(DB_WAIT_SECONDS, total)
        self.started = self.progressed = time.monotonic()
        self.version = _data_version(conn)

    def left(self) -> float:
        now = time.monotonic()
        return min(self.stall - (now - self.progressed), self.total - (now - self.started))

    def over(self) -> bool:
        """Looks for others' commits since the last look; True once the wait is over its bound."""
        now = time.monotonic()
        seen = _data_version(self.conn)
        if seen is not None and seen != self.version:
            self.version, self.progressed = seen, now
        return now - self.progressed >= self.stall - 0.001 or now - self.started >= self.total - 0.001


def _begin_immediate(conn: Connection, *, total: float, turn: WriterTurn | None = None) -> None:
    """BEGIN IMMEDIATE: the write lock taken up front, so a writer never fails to upgrade a read lock.

    With a `turn`, the writer first waits for its turn among the writers of every process (the kernel hands
    it over, see app/adapters/writer_turn.py), then takes the lock, which is then almost always free.
    Either wait lasts at most `total`, and ends early once nobody has committed for DB_WAIT_SECONDS (or
    `total`, if shorter): `database is locked` leaves, as from SQLite."""
    wait = _LockWait(conn, total)
    holder = connection_turn(conn.connection.dbapi_connection) if turn is not None else None
    if turn is not None and holder is not None and holder.turn is None:
        try:
            holder.hold(turn, turn.acquire(max(0.001, min(LOCK_WINDOW_SECONDS, total)), wait.over))
        except TurnTimeout:
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")) from None
    try:
        while True:
            _busy_timeout(conn, max(0.001, min(LOCK_WINDOW_SECONDS, wait.left())))
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if not _is_locked(exc) or wait.over():
                    raise
    except BaseException:
        if holder is not None:
            holder.let_go()
        raise


def lock_wait(seconds: float) -> float:
    """How long a transaction bound to a deadline may wait for a lock: what is left of the deadline, at least
    MIN_LOCK_WAIT. The services' unit of work applies it (`lock_wait` execution option): on SQLite a writer
    waits that long while others commit, but never past DB_WAIT_SECONDS without a commit; on PostgreSQL it
    is the lock timeout, at most DB_WAIT_SECONDS."""
    return max(MIN_LOCK_WAIT, seconds)
