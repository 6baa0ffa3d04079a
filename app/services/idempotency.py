"""Idempotency-Key handling: one key, one intent, one order at most.

A key is claimed before the work starts, bound to its order in the transaction that stores the order, and
completed with the response to replay. A repeat of the key while the first request runs is refused (in use);
after it, the repeat gets the stored response, or, when the first request stored an order but no response
(it crashed, timed out or failed after the commit), that order as it is now. A lapsed claim with no order
bound to it is taken over by exactly one request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.services.unit_of_work import Conflict, KeyClaim, StoredResponse, UnitOfWorkFactory

log = logging.getLogger("orderflow.idempotency")

# 201, 402 and 422 are outcomes of the order itself; 400, 413, 415 and 503 say "send it again".
STORED_STATUSES = frozenset({201, 402, 422})
KEEP_FOR = timedelta(hours=24)


class KeyInUse(Exception):
    """Another request with this key is still running."""


class KeyReused(Exception):
    """This key was first used with another request body."""


class KeyLost(Exception):
    """This request's claim lapsed and another request took the key over before the order was stored."""


@dataclass(frozen=True)
class KeyBinding:
    """The claim a request holds; the placement binds its order to it in the order's own transaction."""

    key: str
    token: str


@dataclass(frozen=True)
class Replayed:
    response: StoredResponse


@dataclass
class IdempotencyStore:
    uow: UnitOfWorkFactory
    lock_for: timedelta
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic

    def run(
        self,
        key: str,
        fingerprint: str,
        produce: Callable[[KeyBinding], StoredResponse],
        current: Callable[[str], StoredResponse],
        *,
        finish_by: float | None = None,
    ) -> StoredResponse | Replayed:
        """`produce` does the work under the claim; `current(order_id)` answers with a bound order as it is now.
        `finish_by` (monotonic): storing the response waits for a stalled database no longer than that."""
        claim = self._claim(key, fingerprint, None if finish_by is None else finish_by - self.monotonic())
        if claim.outcome == "mismatch":
            raise KeyReused()
        if claim.outcome == "in_use":
            raise KeyInUse()
        if claim.outcome == "replay":
            assert claim.response is not None
            return Replayed(claim.response)
        if claim.outcome == "bound":
            assert claim.order_id is not None
            return Replayed(current(claim.order_id))
        assert claim.token is not None
        binding = KeyBinding(key, claim.token)
        try:
            response = produce(binding)
        except KeyLost:
            raise KeyInUse() from None
        except BaseException:
            self._release(binding, None if finish_by is None else finish_by - self.monotonic())
            raise
        wait = None if finish_by is None else finish_by - self.monotonic()
        if response.status in STORED_STATUSES:
            self._complete(binding, response, wait)
        else:
            self._release(binding, wait)
        return response

    def _claim(self, key: str, fingerprint: str, wait: float | None) -> KeyClaim:
        token = uuid.uuid4().hex
        for _ in range(3):
            try:
                with self.uow(wait=wait) as uow:
                    claim = uow.idempotency.claim(key, fingerprint, now=self.now(), lock_for=self.lock_for,
                                                  keep_for=KEEP_FOR, token=token)
                    uow.commit()
                    return claim
            except Conflict:
                # Two first requests raced to insert the key; the loser reads the winner's claim.
                continue
        return KeyClaim("in_use")

    def _complete(self, binding: KeyBinding, response: StoredResponse, wait: float | None) -> None:
        # The response stands whether or not it could be stored: a repeat of the key is then answered with the
        # bound order as it is now (or, for a 422, placed again, which stores nothing either).
        try:
            with self.uow(wait=wait) as uow:
                uow.idempotency.complete(binding.key, binding.token, response)
                uow.commit()
        except Exception:  # noqa: BLE001 - the claim lapses by itself; the order, if any, stays bound
            log.warning("idempotent response not stored", exc_info=True,
                        extra={"event": "idempotency_store_failed"})

    def _release(self, binding: KeyBinding, wait: float | None) -> None:
        try:
            with self.uow(wait=wait) as uow:
                uow.idempotency.release(binding.key, binding.token, now=self.now())
                uow.commit()
        except Exception:  # noqa: BLE001 - the claim lapses by itself after the request deadline
            pass
