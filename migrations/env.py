"""Alembic runs against the same URL and schema the service uses (DATABASE_URL, DATABASE_SCHEMA)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.adapters.db import is_sqlite, make_engine
from app.adapters.sql.tables import metadata
from app.config import Settings

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    settings = Settings.from_env()
    url = config.attributes.get("database_url") or settings.database_url
    schema = config.attributes.get("database_schema") or settings.database_schema
    engine = make_engine(url, schema=schema, pool_size=1)
    try:
        with engine.connect() as conn:
            if schema and not is_sqlite(url):
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                conn.commit()
            _run(conn)
    finally:
        engine.dispose()


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
