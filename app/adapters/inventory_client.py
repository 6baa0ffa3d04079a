"""The inventory service (degradable): live stock levels, cached in Redis for `cache_ttl`; the cache is the
fallback when the service cannot answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from app.adapters.http import HttpResponse, HttpTransport, HttpTransportError
from app.domain import InventorySource
from app.resilience import BrokenCircuitError, BulkheadRejectedError, ResiliencePipeline, ResilienceTimeoutError
from app.services.ports import StockLevel

__all__ = ["REWRITE_SAME_LEVEL_AFTER", "InventoryClient"]

log = logging.getLogger("orderflow.dependencies")

# A level this process wrote to the cache less than this long ago is not written again while it is unchanged:
# under load every order would otherwise rewrite the same value (a Redis round trip each), and the cache,
# a fallback for when the service fails, loses at most this much of its `cache_ttl`.
REWRITE_SAME_LEVEL_AFTER = 1.0


class InventoryClient:
    """Stock levels: live when the service answers, else the last level seen (Redis, `cache_ttl`)."""

    def __init__(self, base_url: str, transport: HttpTransport, pipeline: ResiliencePipeline[Any],
                 cache: redis.Redis, *, key_prefix: str, cache_ttl: float, total_timeout: float,
                 fan_out: ThreadPoolExecutor, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._url = base_url
        self._transport = transport
        self._pipeline = pipeline
        self._cache = cache
        self._prefix = f"{key_prefix}:inventory:"
        self._ttl_ms = max(1, int(cache_ttl * 1000))
        self._total_timeout = total_timeout
        self._fan_out = fan_out
        self._rewrite_after = min(REWRITE_SAME_LEVEL_AFTER, cache_ttl / 10)
        self._written: dict[int, tuple[int, float]] = {}  # product -> (level, monotonic) this process wrote
        self._monotonic = monotonic

    def level(self, product_id: int) -> StockLevel:
        return self.levels({product_id: 1}, deadline=time.monotonic() + self._total_timeout)[product_id]

    def levels(self, quantities: Mapping[int, int], *, deadline: float) -> dict[int, StockLevel]:
        products = list(quantities)
        if len(products) == 1:
            live = {products[0]: self._live(products[0], deadline)}
        else:
            futures = {pid: self._fan_out.submit(self._live, pid, deadline) for pid in products}
            live = {}
            for pid, future in futures.items():
                try:
                    live[pid] = future.result(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
                except Exception:
                    live[pid] = None
        levels: dict[int, StockLevel] = {}
        missing = [pid for pid, available in live.items() if available is None]
        cached = self._cached(missing) if missing else {}
        fresh = {}
        for pid, available in live.items():
            if available is not None:
                levels[pid] = StockLevel(available, InventorySource.LIVE)
                fresh[pid] = available
            elif cached.get(pid) is not None:
                levels[pid] = StockLevel(cached[pid], InventorySource.CACHE)
            else:
                levels[pid] = StockLevel(None, InventorySource.UNAVAILABLE)
        if fresh:
            self._remember(fresh)
        return levels

    def _live(self, product_id: int, deadline: float) -> int | None:
        url = f"{self._url}/stock/{product_id}"

        def attempt(call: Any) -> HttpResponse:
            return self._transport.request("GET", url, deadline=call.deadline)

        try:
            response = self._pipeline.execute(attempt, deadline=deadline, operation="stock",
                                              context={"product_id": product_id})
        except (BrokenCircuitError, BulkheadRejectedError, ResilienceTimeoutError, HttpTransportError):
            return None
        if response is None or response.status != 200:
            return None
        try:
            available = response.json()["available"]
        except (ValueError, KeyError, TypeError):
            return None
        return available if isinstance(available, int) and not isinstance(available, bool) else None

    def _cached(self, product_ids: list[int]) -> dict[int, int | None]:
        try:
            # One GET per key, pipelined (one round trip as MGET): each product's key hashes to a slot of its own
            # on Redis Cluster, where an MGET across slots is refused.
            pipe = self._cache.pipeline(transaction=False)
            for pid in product_ids:
                pipe.get(f"{self._prefix}{pid}")
            values = pipe.execute()
        except redis.RedisError:
            return {}
        return {pid: int(v) if v is not None else None for pid, v in zip(product_ids, values, strict=True)}

    def _remember(self, levels: Mapping[int, int]) -> None:
        now = self._monotonic()
        written = self._written
        changed = {
            pid: available for pid, available in levels.items()
            if (seen := written.get(pid)) is None or seen[0] != available or now - seen[1] >= self._rewrite_after
        }
        if not changed:
            return
        try:
            pipe = self._cache.pipeline(transaction=False)
            for pid, available in changed.items():
                pipe.set(f"{self._prefix}{pid}", available, px=self._ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:  # a cache that cannot be written only makes later fallbacks poorer
            log.debug("inventory cache write failed: %s", exc)
            return
        for pid, available in changed.items():
            written[pid] = (available, now)
