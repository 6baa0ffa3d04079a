"""Live inventory levels refresh the Redis cache, without rewriting an unchanged level on every order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from app.adapters.http import HttpResponse
from app.adapters.inventory_client import REWRITE_SAME_LEVEL_AFTER, InventoryClient
from app.resilience import ResiliencePipeline


class StockService:
    def __init__(self, available: int) -> None:
        self.available = available

    def request(self, method: str, url: str, *, deadline: float, **_: Any) -> HttpResponse:
        body = f'{{"product_id": 4, "available": {self.available}}}'.encode()
        return HttpResponse(200, {"Content-Type": "application/json"}, body, 0.001)


class CountingRedis(redis.Redis):
    """The real client, counting the cache writes it sends."""

    writes = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        CountingRedis.writes += 1
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


def client(cache: redis.Redis, service: StockService, key_prefix: str, **clock: Any) -> InventoryClient:
    return InventoryClient("http://inventory", service, ResiliencePipeline("inventory"), cache,  # type: ignore[arg-type]
                           key_prefix=key_prefix, cache_ttl=60.0, total_timeout=1.0,
                           fan_out=ThreadPoolExecutor(1), **clock)


def test_an_unchanged_level_is_written_once_and_a_changed_one_at_once(redis_url: str, key_prefix: str) -> None:
    cache = CountingRedis.from_url(redis_url)
    service = StockService(7)
    inventory = client(cache, service, key_prefix)
    CountingRedis.writes = 0
    try:
        for _ in range(5):
            assert inventory.level(4).available == 7
        assert CountingRedis.writes == 1
        assert cache.get(f"{key_prefix}:inventory:4") == b"7"

        service.available = 6
        assert inventory.level(4).available == 6
        assert CountingRedis.writes == 2
        assert cache.get(f"{key_prefix}:inventory:4") == b"6"
    finally:
        cache.delete(f"{key_prefix}:inventory:4")
        cache.close()


def test_an_unchanged_level_is_written_again_once_the_last_write_is_old(redis_url: str, key_prefix: str) -> None:
    now = [1000.0]
    cache = CountingRedis.from_url(redis_url)
    inventory = client(cache, StockService(7), key_prefix, monotonic=lambda: now[0])
    CountingRedis.writes = 0
    try:
        inventory.level(4)
        now[0] += REWRITE_SAME_LEVEL_AFTER / 2
        inventory.level(4)
        assert CountingRedis.writes == 1
        now[0] += REWRITE_SAME_LEVEL_AFTER / 2
        inventory.level(4)
        assert CountingRedis.writes == 2
    finally:
        cache.delete(f"{key_prefix}:inventory:4")
        cache.close()
