"""Alembic, called from code: `make run`, the CLI and the tests all migrate the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url


def upgrade(database_url: str, *, schema: str | None = None, revision: str = "head") -> None:
    # The scripts are the package's own (the repository's migrations/ ships as app.migrations), so an
    # installed OrderFlow migrates without a checkout; alembic.ini serves the `alembic` command in one.
    config = Config()
    config.set_main_option("script_location", str(files("app.migrations")).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    _create_sqlite_folder(database_url)
    config.attributes["database_url"] = database_url
    config.attributes["database_schema"] = schema
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)


def _create_sqlite_folder(database_url: str) -> None:
    """A first `orderflow db upgrade` with the default SQLite file in var/ creates var/ rather than failing."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def scratch_schema(database_url: str, *, prefix: str) -> Iterator[str]:
    """A new PostgreSQL schema migrated to head, dropped with everything in it afterwards: one per test run
    or benchmark, so runs sharing a database never see each other's rows."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema=schema)
    try:
        yield schema
    finally:
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
