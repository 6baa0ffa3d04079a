"""Alembic, called from code: `make run`, the CLI and the tests all migrate the same way."""

from __future__ import annotations

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
