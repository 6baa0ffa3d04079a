"""Idempotency-Key handling with Stripe's semantics: one key, one outcome, replayed verbatim."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from app.adapters import repository as repo
from app.adapters.db import write
from app.adapters.repository import StoredResponse

# 201, 402 and 422 are outcomes of the order itself; 400, 413, 415 and 503 say "send it again".
STORED_STATUSES = frozenset({201, 402, 422})
KEEP_FOR = timedelta(hours=24)


class KeyInUse(Exception):
    """Another request with this key is still running."""


class KeyReused(Exception):
    """This key was first used with another request body."""


@dataclass(frozen=True)
class Replayed:
    response: StoredResponse


@dataclass
class IdempotencyStore:
    engine: Engine
    lock_for: timedelta
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def run(self, key: str, fingerprint: str, produce: Callable[[], StoredResponse]) -> StoredResponse | Replayed:
        claim = self._claim(key, fingerprint)
        if claim.outcome == "mismatch":
            raise KeyReused()
        if claim.outcome == "in_use":
            raise KeyInUse()
        if claim.outcome == "replay":
            assert claim.response is not None
            return Replayed(claim.response)
        try:
            response = produce()
        except BaseException:
            self._release(key)
            raise
        if response.status in STORED_STATUSES:
            with write(self.engine) as conn:
                repo.complete_idempotency_key(conn, key, response)
        else:
            self._release(key)
        return response

    def _claim(self, key: str, fingerprint: str) -> repo.KeyClaim:
        for _ in range(3):
            try:
                with write(self.engine) as conn:
                    return repo.claim_idempotency_key(
                        conn, key, fingerprint, now=self.now(), lock_for=self.lock_for, keep_for=KEEP_FOR
                    )
            except IntegrityError:
                # Two first requests raced to insert the key; the loser reads the winner's claim.
                continue
        return repo.KeyClaim("in_use")

    def _release(self, key: str) -> None:
        try:
            with write(self.engine) as conn:
                repo.release_idempotency_key(conn, key)
        except Exception:  # the claim lapses by itself after the request deadline
            pass
