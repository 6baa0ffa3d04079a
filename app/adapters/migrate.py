"""Alembic, called from code: `make run`, the CLI and the tests all migrate the same way, and the CLI and the
API's readiness tell a database that was never migrated (or not since the code changed) from one that works."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

UPGRADE_HINT = "run: orderflow db upgrade"


# Alembic is imported where it is used: the API's readiness check imports this module on its first call, which
# then needs only the script directory, not the migration runtime.
def _config() -> Config:
    # The scripts are the package's own (the repository's migrations/ ships as app.migrations), so an
    # installed OrderFlow migrates without a checkout; alembic.ini serves the `alembic` command in one.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("app.migrations")).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def upgrade(database_url: str, *, schema: str | None = None, revision: str = "head") -> None:
    from alembic import command

    config = _config()
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


@functools.cache
def _revisions() -> tuple[str | None, frozenset[str]] | None:
    """This code's head revision and every revision it knows; None where the migrations are not installed."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        script = ScriptDirectory.from_config(_config())
        return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())
    except CommandError:
        return None


def schema_problem(conn: Connection) -> str | None:
    """What keeps this code from working on the database behind `conn`, and the fix; None when nothing does.

    A revision this code does not know is let through: a newer release migrated the database, and its
    migrations keep the old code working while both run.
    """
    if not inspect(conn).has_table("alembic_version"):
        return f"the database has no OrderFlow tables (it was never migrated); {UPGRADE_HINT}"
    current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current is None:
        return f"the database has no OrderFlow tables (it was never migrated); {UPGRADE_HINT}"
    revisions = _revisions()
    if revisions is None:  # without the migration scripts, the tables being there is all that can be told
        return None
    head, known = revisions
    if current != head and current in known:
        return f"the database schema is at revision {current}, this code needs {head}; {UPGRADE_HINT}"
    return None


def database_problem(database_url: str, *, schema: str | None = None) -> str | None:
    """Why the service's commands cannot run on this database (missing, unreachable, not migrated), in one
    line that names the database and says what to do; None when they can."""
    from app.adapters.db import make_engine

    url = make_url(database_url)
    where = url.render_as_string(hide_password=True) + (f" (schema {schema})" if schema else "")
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        # Checked before connecting: SQLite would create an empty file (and make_engine its directory).
        if not Path(url.database).is_file():
            return f"{where}: the SQLite database file does not exist; create it with: orderflow db upgrade"
    try:
        engine = make_engine(database_url, schema=schema, pool_size=1)
    except ValueError as exc:  # a schema name that is not one
        return str(exc)
    try:
        with engine.connect() as conn:
            problem = schema_problem(conn)
    except SQLAlchemyError as exc:
        return f"{where}: cannot use the database: {error_line(exc)}"
    finally:
        engine.dispose()
    return f"{where}: {problem}" if problem else None


def error_line(exc: BaseException) -> str:
    """The driver's first line, without SQLAlchemy's statement dump and background link."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
