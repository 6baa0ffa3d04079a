"""Idempotency keys: a claim per request, the order bound to it, the response kept for replays.

Every write here is conditional, so of two requests racing for one key exactly one holds it, on SQLite and on
PostgreSQL alike (a lost race shows as no row changed, or as a Conflict on the first insert, which the caller
answers by claiming again)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.adapters.sql.tables import idempotency_keys
from app.adapters.sql.times import utc
from app.services.unit_of_work import Conflict, KeyClaim, StoredResponse

keys = idempotency_keys.c


class SqlIdempotencyKeys:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def claim(self, key: str, fingerprint: str, *, now: datetime, lock_for: timedelta, keep_for: timedelta,
              token: str) -> KeyClaim:
        conn = self._conn
        row = conn.execute(select(idempotency_keys).where(keys.key == key)).first()
        if row is not None and utc(row.expires_at) <= now:
            conn.execute(idempotency_keys.delete().where(and_(keys.key == key, keys.expires_at <= now)))
            row = None
        if row is None:
            try:
                conn.execute(
                    insert(idempotency_keys).values(
                        key=key, fingerprint=fingerprint, state="running", locked_until=now + lock_for,
                        created_at=now, expires_at=now + keep_for, claim_token=token,
                    )
                )
            except IntegrityError as exc:  # two first requests raced to insert the key
                raise Conflict(f"idempotency key {key!r} inserted concurrently") from exc
            return KeyClaim("claimed", token=token)
        if row.fingerprint != fingerprint:
            return KeyClaim("mismatch")
        if row.state == "done":
            return KeyClaim(
                "replay",
                StoredResponse(int(row.response_status), row.response_body, json.loads(row.response_headers)),
            )
        if utc(row.locked_until) > now:
            return KeyClaim("in_use")
        if row.order_id is not None:
            # The first request stored its order and then died, timed out or failed: its order is the answer.
            return KeyClaim("bound", order_id=row.order_id)
        # The first request's claim lapsed before it stored an order: this request takes over, if no other
        # request took it over first (the UPDATE is conditional on what made the takeover allowed).
        taken = conn.execute(
            update(idempotency_keys)
            .where(and_(keys.key == key, keys.state == "running", keys.order_id.is_(None),
                        keys.locked_until <= now))
            .values(locked_until=now + lock_for, claim_token=token)
        ).rowcount
        return KeyClaim("claimed", token=token) if taken == 1 else KeyClaim("in_use")

    def bind(self, key: str, token: str, order_id: str) -> bool:
        return self._conn.execute(
            update(idempotency_keys)
            .where(and_(keys.key == key, keys.claim_token == token, keys.order_id.is_(None)))
            .values(order_id=order_id)
        ).rowcount == 1

    def complete(self, key: str, token: str, response: StoredResponse) -> None:
        self._conn.execute(
            update(idempotency_keys)
            .where(and_(keys.key == key, keys.claim_token == token, keys.state == "running"))
            .values(state="done", response_status=response.status, response_body=response.body,
                    response_headers=json.dumps(response.headers))
        )

    def release(self, key: str, token: str, *, now: datetime) -> None:
        """A key with no order is freed for the client's retry; a key bound to an order keeps it, and its
        claim lapses now so the retry is answered with that order."""
        mine = and_(keys.key == key, keys.claim_token == token, keys.state == "running")
        self._conn.execute(idempotency_keys.delete().where(and_(mine, keys.order_id.is_(None))))
        self._conn.execute(update(idempotency_keys).where(and_(mine, keys.order_id.is_not(None)))
                           .values(locked_until=now))

    def purge_expired(self, *, now: datetime, limit: int) -> int:
        # A bounded batch: a purge must never hold the table (SQLite: the whole database) for long.
        expired = select(keys.key).where(keys.expires_at <= now).order_by(keys.expires_at).limit(limit)
        return self._conn.execute(idempotency_keys.delete().where(keys.key.in_(expired.scalar_subquery()))).rowcount
