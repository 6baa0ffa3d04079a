"""Dead letters: the payments the workers gave up on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from app.adapters.sql.tables import dead_letters
from app.adapters.sql.times import utc, utc_or_none
from app.domain import DeadLetter


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=int(row.id), order_id=row.order_id, attempts=int(row.attempts), last_error=row.last_error,
        history=json.loads(row.history), dead_lettered_at=utc(row.dead_lettered_at),
        replayed_at=utc_or_none(row.replayed_at),
    )


class SqlDeadLetters:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, order_id: str, *, history: Sequence[dict[str, Any]], last_error: str | None,
            now: datetime) -> int:
        result = self._conn.execute(
            insert(dead_letters).values(
                order_id=order_id, attempts=len(history), last_error=last_error, history=json.dumps(list(history)),
                dead_lettered_at=now, replayed_at=None,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def get(self, dead_letter_id: int) -> DeadLetter | None:
        row = self._conn.execute(select(dead_letters).where(dead_letters.c.id == dead_letter_id)).first()
        return _dead_letter(row) if row is not None else None

    def latest(self, *, limit: int = 500) -> list[DeadLetter]:
        rows = self._conn.execute(
            select(dead_letters).order_by(dead_letters.c.dead_lettered_at.desc(), dead_letters.c.id.desc())
            .limit(limit)
        )
        return [_dead_letter(r) for r in rows]

    def mark_replayed(self, dead_letter_id: int, *, now: datetime) -> bool:
        return self._conn.execute(
            update(dead_letters)
            .where(and_(dead_letters.c.id == dead_letter_id, dead_letters.c.replayed_at.is_(None)))
            .values(replayed_at=now)
        ).rowcount == 1

    def count_unreplayed(self) -> int:
        return int(self._conn.execute(
            select(func.count()).select_from(dead_letters).where(dead_letters.c.replayed_at.is_(None))
        ).scalar_one())
