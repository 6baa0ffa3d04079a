"""Feature flags: stored in the database, read through a per-process cache that is at most a second old."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

from app.adapters import repository as repo
from app.adapters.db import read, write

log = logging.getLogger("orderflow.flags")

KNOWN_FLAGS = ("RealTimePayments", "Notifications")
# Every process obeys a change within 2 s: the cache lives 1 s, a refresh takes well under the rest.
CACHE_SECONDS = 1.0


class FlagService:
    def __init__(
        self, engine: Engine, *, ttl: float = CACHE_SECONDS, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
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
            with read(self._engine) as conn:
                self._values = {f.name: f.enabled for f in repo.list_flags(conn)}
            self._loaded_at = self._monotonic()
        except Exception as exc:
            # Keep serving the last known values; try again after a short pause, not on every call.
            log.warning("flag refresh failed: %s", exc)
            self._loaded_at = self._monotonic() - self._ttl + 0.5
        finally:
            self._lock.release()

    def all(self) -> list[repo.Flag]:
        with read(self._engine) as conn:
            return repo.list_flags(conn)

    def set(self, name: str, *, enabled: bool, by: str) -> repo.Flag | None:
        with write(self._engine) as conn:
            flag = repo.set_flag(conn, name, enabled=enabled, by=by, now=datetime.now(UTC))
        if flag is not None:
            log.info("flag changed", extra={"event": "flag_changed", "flag": name, "enabled": enabled, "by": by})
            self._loaded_at = float("-inf")
        return flag
