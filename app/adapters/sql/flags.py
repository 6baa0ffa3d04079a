"""Feature flags."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from app.adapters.sql.tables import feature_flags
from app.adapters.sql.times import utc
from app.domain import Flag


class SqlFlags:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def all(self) -> list[Flag]:
        rows = self._conn.execute(select(feature_flags).order_by(feature_flags.c.name))
        return [Flag(r.name, bool(r.enabled), r.description, utc(r.updated_at), r.updated_by) for r in rows]

    def set(self, name: str, *, enabled: bool, by: str, now: datetime) -> Flag | None:
        result = self._conn.execute(
            update(feature_flags)
            .where(feature_flags.c.name == name)
            .values(enabled=enabled, updated_by=by, updated_at=now)
        )
        if result.rowcount != 1:
            return None
        row = self._conn.execute(select(feature_flags).where(feature_flags.c.name == name)).one()
        return Flag(row.name, bool(row.enabled), row.description, utc(row.updated_at), row.updated_by)
