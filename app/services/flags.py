"""Feature flags: stored in the database, read through a per-process cache that is at most a second old."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from app.domain import Flag
from app.services.unit_of_work import UnitOfWorkFactory

log = logging.getLogger("orderflow.flags")

KNOWN_FLAGS = ("RealTimePayments", "Notifications")
# Every process obeys a change within 2 s: the cache lives 1 s, a refresh takes well under the rest.
CACHE_SECONDS = 1.0


class FlagService:
    def __init__(
        self, uow: UnitOfWorkFactory, *, ttl: float = CACHE_SECONDS, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._uow = uow
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._values: dict[str, bool] = {}
        self._loaded_at = float("-inf")

    def is_enabled(self, name: str) -> bool:
        if self._monotonic() - self._loaded_at >= self._ttl:
            self._refresh()
        # A flag the database cannot tell us about keeps its default: on.
        return self._values.get(name, True)

    def _refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing; the current values are at most a moment old
        try:
            with self._uow(read_only=True) as uow:
                self._values = {f.name: f.enabled for f in uow.flags.all()}
            self._loaded_at = self._monotonic()
        except Exception as exc:
            # Keep serving the last known values; try again after a short pause, not on every call.
            log.warning("flag refresh failed: %s", exc)
            self._loaded_at = self._monotonic() - self._ttl + 0.5
        finally:
            self._lock.release()

    def all(self) -> list[Flag]:
        with self._uow(read_only=True) as uow:
            return uow.flags.all()

    def set(self, name: str, *, enabled: bool, by: str) -> Flag | None:
        with self._uow() as uow:
            flag = uow.flags.set(name, enabled=enabled, by=by, now=datetime.now(UTC))
            uow.commit()
        if flag is not None:
            log.info("flag changed", extra={"event": "flag_changed", "flag": name, "enabled": enabled, "by": by})
            self._loaded_at = float("-inf")
        return flag
