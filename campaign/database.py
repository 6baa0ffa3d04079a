"""The campaign's database (a SQLite file of its own, or a scratch schema on PostgreSQL), its faults, and the
snapshot the checker reads directly with SQLAlchemy."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from app.adapters.db import is_sqlite, make_engine
from app.adapters.migrate import scratch_schema, upgrade
from app.adapters.sql.tables import dead_letters, order_lines, orders, payment_jobs
from bench.environment import Database

from .snapshot import DeadLetterRow, JobRow, OrderRow, Snapshot


@contextmanager
def campaign_database(url: str | None, var: Path) -> Iterator[Database]:
    """PostgreSQL when `url` names it (a schema of the run's own, dropped afterwards), else a SQLite file in
    the run's var directory (kept, to look at after the run)."""
    if url and not is_sqlite(url):
        with scratch_schema(url, prefix="campaign_") as schema:
            yield Database(url, schema, f"PostgreSQL {make_url(url).host}, schema {schema} (dropped after)")
        return
    path = var / "orderflow.db"
    for stale in var.glob("orderflow.db*"):
        stale.unlink()
    var.mkdir(parents=True, exist_ok=True)
    sqlite_url = f"sqlite:///{path}"
    upgrade(sqlite_url)
    yield Database(sqlite_url, None, f"SQLite {path}")


def kind_of(db: Database) -> str:
    return "sqlite" if is_sqlite(db.url) else "postgresql"


def reader(db: Database) -> Engine:
    return make_engine(db.url, schema=db.schema, pool_size=2)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_snapshot(engine: Engine) -> Snapshot:
    taken_at = datetime.now(UTC)
    with engine.connect() as conn:
        lines: dict[str, list[tuple[int, int]]] = {}
        for row in conn.execute(select(order_lines).order_by(order_lines.c.order_id, order_lines.c.line_no)):
            lines.setdefault(row.order_id, []).append((row.product_id, row.quantity))
        found = {
            row.id: OrderRow(
                id=row.id, customer_id=row.customer_id, status=row.status, lines=tuple(lines.get(row.id, [])),
                failure_reason=row.failure_reason, payment_id=row.payment_id, payment_attempts=row.payment_attempts,
                total=str(row.total), created_at=_utc(row.created_at), updated_at=_utc(row.updated_at),
            )
            for row in conn.execute(select(orders))
        }
        jobs = tuple(
            JobRow(row.order_id, row.state, row.retries, _utc(row.next_attempt_at), _utc(row.lease_until))
            for row in conn.execute(select(payment_jobs))
        )
        letters = tuple(
            DeadLetterRow(row.id, row.order_id, row.attempts, row.last_error, _utc(row.replayed_at),
                          _utc(row.dead_lettered_at))
            for row in conn.execute(select(dead_letters).order_by(dead_letters.c.id))
        )
    return Snapshot(taken_at, found, jobs, letters)


def unsettled(engine: Engine) -> dict[str, int]:
    """What still moves: orders waiting for their payment, payment jobs not finished."""
    with engine.connect() as conn:
        pending = conn.execute(select(func.count()).where(orders.c.status == "PaymentPending")).scalar_one()
        jobs = conn.execute(
            select(func.count()).where(payment_jobs.c.state.in_(("pending", "running")))
        ).scalar_one()
        total = conn.execute(select(func.count()).select_from(orders)).scalar_one()
    return {"orders": int(total), "pending_orders": int(pending), "open_jobs": int(jobs)}


class WriteLockStall:
    """Holds the database's write lock until released: SQLite `BEGIN IMMEDIATE` on a connection of its own;
    PostgreSQL `LOCK TABLE orders IN ACCESS EXCLUSIVE MODE` in the stack's schema."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.release = threading.Event()
        self.taken = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._hold, name="campaign-db-stall", daemon=True)

    def start(self, *, wait: float = 5.0) -> None:
        self._thread.start()
        self.taken.wait(wait)

    def stop(self) -> None:
        self.release.set()
        self._thread.join(timeout=10)

    def _hold(self) -> None:
        try:
            if is_sqlite(self.db.url):
                self._hold_sqlite()
            else:
                self._hold_postgres()
        except Exception as exc:  # reported as a fault that could not be applied
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.taken.set()

    def _hold_sqlite(self) -> None:
        path = make_url(self.db.url).database
        conn = sqlite3.connect(str(path), timeout=5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.taken.set()
            self.release.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def _hold_postgres(self) -> None:
        engine = create_engine(self.db.url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SET lock_timeout = '4s'"))
                conn.execute(text(f'LOCK TABLE "{self.db.schema}".orders IN ACCESS EXCLUSIVE MODE'))
                self.taken.set()
                self.release.wait(60)
                conn.rollback()
        finally:
            engine.dispose()


class WriteLockStorm:
    """SQLite's connection storm: the write lock taken for each of `stalls` seconds in turn, `pause` seconds
    apart, until stopped. Each stall is one short outage; some outlast the API's 2 s wait for the database."""

    def __init__(self, db: Database, *, stalls: list[float], pause: float) -> None:
        self.path = str(make_url(db.url).database)
        self.stalls = list(stalls)
        self.pause = pause
        self.taken = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaign-db-storm", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        for stall in self.stalls:
            if self._stop.is_set():
                return
            try:
                conn = sqlite3.connect(self.path, timeout=2, isolation_level=None)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    self.taken += 1
                    self._stop.wait(stall)
                    conn.execute("ROLLBACK")
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # the stack held the lock for 2 s: this stall is skipped
                self.error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.pause)


class BackendKiller:
    """Terminates the stack's PostgreSQL backends (named by the application_name the stack connects with)
    every `interval` seconds until stopped: connections die mid-transaction, as in a failover."""

    def __init__(self, db: Database, application_name: str, *, interval: float, busy_only: bool) -> None:
        self.db = db
        self.application_name = application_name
        self.interval = interval
        self.busy_only = busy_only
        self.killed = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaign-db-kill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        states = "('active', 'idle in transaction')" if self.busy_only else "('active', 'idle', 'idle in transaction')"
        query = text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = current_database() AND application_name = :app AND state IN {states} "
            "AND pid <> pg_backend_pid()"
        )
        engine = create_engine(self.db.url, connect_args={"connect_timeout": 3})
        try:
            while not self._stop.is_set():
                try:
                    with engine.begin() as conn:
                        self.killed += int(conn.execute(query, {"app": self.application_name}).scalar_one())
                except Exception as exc:  # keep trying until healed; report the last failure
                    self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(self.interval)
        finally:
            engine.dispose()
