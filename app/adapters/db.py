"""Engines with bounded waits on SQLite and PostgreSQL.

Every wait on the database is bounded by about two seconds (connect, pool checkout, lock), so a
database that is down or locked turns into a 503 instead of a hung request.

On SQLite a writer queues for the single write lock. A writer that waits while other writers keep
committing is in a queue, not facing an unreachable database: it goes on waiting, for as long as its
caller allows (`lock_wait`, else QUEUE_WAIT_SECONDS). Only a lock under which nobody has committed for
DB_WAIT_SECONDS makes it give up. SQLite's own busy handler is not fair (a waiter polls with growing
sleeps, and a newcomer may take the lock between two polls), so under load a flat two-second timeout
turned ordinary queueing into `database is locked`.

The threads of one process take turns at the write lock before they ask SQLite for it (`WriterTurn`): a
thread that finishes its transaction wakes the next one at once, where SQLite's busy handler would leave the
lock idle while every waiter sleeps out its poll (up to 50 ms at a time, more as waits grow). Only one thread
per process then polls SQLite, so the queue between processes stays short, and a request's wait for the lock
is its place in the queue rather than the luck of its polls.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.forks import on_fork

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
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": DB_WAIT_SECONDS, "check_same_thread": False},
        pool_size=10,
        max_overflow=10,
        pool_timeout=DB_WAIT_SECONDS,
    )

    turn = WriterTurn()
    _ENGINE_TURNS[engine] = turn

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

    # The turn passes on as the transaction ends, just before its COMMIT or ROLLBACK reaches SQLite (there is no
    # event after it): the next writer's BEGIN IMMEDIATE meets at most that statement, which is short in WAL.
    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        turn.release(conn.info)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Connection) -> None:
        turn.release(conn.info)

    # A connection that leaves without either (invalidated, closed under a transaction) gives its turn back too.
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            turn.release(record.info)

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
        if record is not None:
            turn.release(record.info)

    return engine


class WriterTurn:
    """The turns of one process's threads at SQLite's write lock, first come first served: one per engine.

    A writer joins the queue and waits for its ticket; the turn passes from one writer to the next directly, so
    a writer that commits and comes straight back goes behind the ones already waiting. A connection holding
    the turn says so in its `info` (the pool's record of it), so whichever event ends its transaction first
    gives the turn back, once."""

    _KEY = "orderflow_writer_turn"

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._queue: deque[threading.Event] = deque()
        _TURNS.add(self)

    @property
    def held(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        """Writers of this process queued for the turn."""
        return len(self._queue)

    def join(self) -> threading.Event:
        """A place in the queue: the ticket is set when the turn is this writer's."""
        ticket = threading.Event()
        with self._mutex:
            if self._held:
                self._queue.append(ticket)
            else:
                self._held = True
                ticket.set()
        return ticket

    def leave(self, ticket: threading.Event) -> None:
        """Give up a place in the queue, or the turn if it came meanwhile."""
        with self._mutex:
            if not ticket.is_set():
                self._queue.remove(ticket)
                return
        self._pass_on()

    def hold(self, info: dict[Any, Any]) -> None:
        """The connection of `info` has begun its transaction with the turn."""
        info[self._KEY] = self

    def release(self, info: dict[Any, Any]) -> None:
        if info.pop(self._KEY, None) is self:
            self._pass_on()

    def _pass_on(self) -> None:
        with self._mutex:
            if self._queue:
                self._queue.popleft().set()
            else:
                self._held = False

    def _after_fork(self) -> None:
        # The queue's writers and the turn's holder are threads the child does not have.
        self._mutex = threading.Lock()
        self._held = False
        self._queue = deque()


_TURNS: weakref.WeakSet[WriterTurn] = weakref.WeakSet()
_ENGINE_TURNS: weakref.WeakKeyDictionary[Engine, WriterTurn] = weakref.WeakKeyDictionary()


def writer_turn(engine: Engine) -> WriterTurn | None:
    """The writers' turn of a SQLite engine in this process; None for PostgreSQL, whose row locks queue fairly."""
    return _ENGINE_TURNS.get(engine)


def _reset_turns() -> None:
    for turn in list(_TURNS):
        turn._after_fork()


on_fork(after_in_child=_reset_turns)


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


def _begin_immediate(conn: Connection, *, total: float, turn: WriterTurn | None = None) -> None:
    """BEGIN IMMEDIATE: the write lock taken up front, so a writer never fails to upgrade a read lock.

    First the process's turn (`turn`), then SQLite's lock, both in windows of LOCK_WINDOW_SECONDS for at most
    `total`; gives up early once nobody has committed for DB_WAIT_SECONDS (or `total`, if shorter), with
    SQLite's `database is locked` error (the last window's, or one of the same words while still waiting for
    the turn). A writer that gives up keeps no turn and no place in the queue."""
    stall = min(DB_WAIT_SECONDS, total)
    started = progressed = time.monotonic()
    version = _data_version(conn)
    ticket = turn.join() if turn is not None else None
    try:
        while True:
            now = time.monotonic()
            window = max(0.001, min(LOCK_WINDOW_SECONDS, stall - (now - progressed), total - (now - started)))
            failure: OperationalError | None = None
            if ticket is not None and not ticket.is_set():
                if ticket.wait(window):
                    continue
            else:
                _busy_timeout(conn, window)
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                except OperationalError as exc:
                    if not _is_locked(exc):
                        raise
                    failure = exc
                else:
                    if turn is not None:
                        turn.hold(conn.info)
                    ticket = None
                    return
            now = time.monotonic()
            seen = _data_version(conn)
            if seen is not None and seen != version:
                version, progressed = seen, now
            if now - progressed >= stall - 0.001 or now - started >= total - 0.001:
                if failure is not None:
                    raise failure
                raise OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked (waiting for a turn)")
                )
    finally:
        if ticket is not None and turn is not None:
            turn.leave(ticket)


def lock_wait(seconds: float) -> float:
    """How long a transaction bound to a deadline may wait for a lock: what is left of the deadline, at least
    MIN_LOCK_WAIT. The services' unit of work applies it (`lock_wait` execution option): on SQLite a writer
    waits that long while others commit, but never past DB_WAIT_SECONDS without a commit; on PostgreSQL it
    is the lock timeout, at most DB_WAIT_SECONDS."""
    return max(MIN_LOCK_WAIT, seconds)
