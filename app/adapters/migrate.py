"""Alembic, called from code: `make run`, the CLI and the tests all migrate the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config

from app.config import ROOT


def upgrade(database_url: str, *, schema: str | None = None, revision: str = "head") -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["database_schema"] = schema
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)


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
