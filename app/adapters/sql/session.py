"""The unit of work over SQLAlchemy Core: one connection, one transaction, the repositories bound to it.

Three kinds of unit, chosen by the caller (see `UnitOfWorkFactory`):
- a write transaction (BEGIN IMMEDIATE on SQLite, so writers queue for the lock up front), optionally
  waiting for a lock no longer than a deadline allows;
- a read-only transaction, which never takes SQLite's write lock;
- single statements: on PostgreSQL each statement is its own transaction (autocommit), which spares the
  BEGIN and COMMIT round trips of a one-statement unit on the hot path; elsewhere an ordinary transaction.

Inside `pinned()` every unit of the thread (task) shares one connection on PostgreSQL: a payment job checks
a connection out of the pool, and pings it, once instead of once per statement.

Errors leave as the services' own: `StorageError` for a database that fails or cannot be reached,
`CommitOutcomeUnknown` for a COMMIT that failed (it may have been applied), `Conflict` for a lost race on a
unique row. Messages published in a unit are handed to `publish` after its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import SQLAlchemyError

from app.adapters.db import DB_WAIT_SECONDS, lock_wait
from app.adapters.sql.catalog import SqlCatalog
from app.adapters.sql.dead_letters import SqlDeadLetters
from app.adapters.sql.flags import SqlFlags
from app.adapters.sql.idempotency import SqlIdempotencyKeys
from app.adapters.sql.orders import SqlOrders
from app.adapters.sql.outbox import SqlOutbox
from app.services.unit_of_work import CommitOutcomeUnknown, Publish, StorageError

log = logging.getLogger("orderflow.sql")

_PINNED: ContextVar[tuple[Engine, Connection] | None] = ContextVar("orderflow_pinned_connection", default=None)


@lru_cache(maxsize=16)
def _autocommit(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _ignore(_message: Any) -> None:
    return None


class SqlUnitOfWork:
    def __init__(self, engine: Engine, publish: Publish, *, read_only: bool = False, wait: float | None = None,
                 single_statement: bool = False) -> None:
        self._engine = engine
        self._publish = publish
        self._read_only = read_only
        self._wait = lock_wait(wait) if wait is not None else None
        self._single = single_statement and engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self._own_conn = True
        self._transaction: RootTransaction | None = None
        self._messages: list[Any] = []
        self._committed = False

    # --- the transaction ---------------------------------------------------------------------------------

    def __enter__(self) -> SqlUnitOfWork:
        try:
            self._conn = self._connect()
            if not self._single:
                self._transaction = self._conn.begin()
                # The connection's own lock_timeout is DB_WAIT_SECONDS: only a shorter wait costs a statement.
                if (self._wait is not None and self._wait < DB_WAIT_SECONDS
                        and self._engine.dialect.name == "postgresql"):
                    self._conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(self._wait * 1000))}")
        except SQLAlchemyError as exc:
            self._close()
            raise StorageError(_first_line(exc)) from exc
        self._bind(self._conn)
        return self

    def _connect(self) -> Connection:
        pinned = _PINNED.get()
        if self._single:
            if pinned is not None and pinned[0] is self._engine:
                self._own_conn = False
                return pinned[1]
            return _autocommit(self._engine).connect()
        conn = self._engine.connect()
        options: dict[str, Any] = {}
        if self._read_only:
            options["readonly"] = True
        if self._wait is not None:
            options["lock_wait"] = self._wait
        return conn.execution_options(**options) if options else conn

    def _bind(self, conn: Connection) -> None:
        self.catalog = SqlCatalog(conn)
        self.orders = SqlOrders(conn)
        self.outbox = SqlOutbox(conn)
        self.dead_letters = SqlDeadLetters(conn)
        self.flags = SqlFlags(conn)
        self.idempotency = SqlIdempotencyKeys(conn)

    def commit(self) -> None:
        if self._transaction is None:
            self._committed = True
            return
        try:
            self._transaction.commit()
        except SQLAlchemyError as exc:
            raise CommitOutcomeUnknown(_first_line(exc)) from exc
        self._committed = True

    def publish(self, message: Any) -> None:
        self._messages.append(message)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._transaction is not None and self._transaction.is_active:
                try:
                    self._transaction.rollback()
                except SQLAlchemyError:  # a dead connection rolls back by itself; the first error matters
                    pass
        finally:
            self._close()
        if isinstance(exc, SQLAlchemyError):
            raise StorageError(_first_line(exc)) from exc
        if exc is None and self._committed:
            self._send()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._own_conn:
            try:
                conn.close()
            except SQLAlchemyError:
                pass

    def _send(self) -> None:
        for message in self._messages:
            try:
                self._publish(message)
            except Exception:  # noqa: BLE001 - best effort: the stored row is the guarantee
                log.warning("message not published after commit", exc_info=True,
                            extra={"event": "publish_after_commit_failed", "message": type(message).__name__})
        self._messages.clear()


class SqlUnitOfWorkFactory:
    """Units of work over one engine; `publish` receives what a unit publishes, after its commit."""

    def __init__(self, engine: Engine, publish: Publish = _ignore) -> None:
        self.engine = engine
        self._publish = publish

    def __call__(self, *, read_only: bool = False, wait: float | None = None,
                 single_statement: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self._publish, read_only=read_only, wait=wait,
                             single_statement=single_statement)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        if self.engine.dialect.name != "postgresql" or _PINNED.get() is not None:
            yield
            return
        try:
            conn = _autocommit(self.engine).connect()
        except SQLAlchemyError as exc:
            raise StorageError(_first_line(exc)) from exc
        token = _PINNED.set((self.engine, conn))
        try:
            yield
        finally:
            _PINNED.reset(token)
            try:
                conn.close()
            except SQLAlchemyError:
                pass

    def with_publisher(self, publish: Publish) -> SqlUnitOfWorkFactory:
        return SqlUnitOfWorkFactory(self.engine, publish)


__all__ = ["SqlUnitOfWork", "SqlUnitOfWorkFactory"]
