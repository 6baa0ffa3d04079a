"""Entry points run in separate processes by the shared-state tests (spawned: imported fresh)."""

from __future__ import annotations

import time
from multiprocessing.synchronize import Event
from typing import Any

import redis

from app.adapters.redis_breaker_store import RedisBreakerStore
from app.resilience.circuit_breaker import BrokenCircuitError, CircuitBreaker

SPEC: dict[str, Any] = dict(failure_ratio=0.5, sampling_duration=10.0, minimum_throughput=10,
                            break_duration=30.0, probe_timeout=5.0)


def breaker(url: str, prefix: str, **overrides: Any) -> tuple[CircuitBreaker, RedisBreakerStore]:
    store = RedisBreakerStore(redis.Redis.from_url(url, socket_timeout=0.5), key_prefix=prefix)
    return CircuitBreaker("payment", store=store, **{**SPEC, **overrides}), store


def record_failures(url: str, prefix: str, count: int) -> None:
    cb, store = breaker(url, prefix)
    for _ in range(count):
        cb.acquire()
        cb.record(False)
    store.close()  # flushes what is pending


def try_call(url: str, prefix: str, results: Any) -> None:
    cb, store = breaker(url, prefix)
    try:
        cb.acquire()
        results.put("admitted")
    except BrokenCircuitError as exc:
        results.put(exc.state)
    store.close()


def isolate(url: str, prefix: str) -> None:
    cb, store = breaker(url, prefix)
    cb.isolate()
    store.close()


def race_for_probe(url: str, prefix: str, ready: Any, go: Event, results: Any) -> None:
    cb, store = breaker(url, prefix, break_duration=0.3)
    store.snapshot("payment")  # warm the connection so every process races at once
    ready.put(True)
    go.wait(30)
    try:
        results.put(cb.acquire().code)
    except BrokenCircuitError as exc:
        results.put(exc.state)
    store.close()


def wait_briefly() -> None:
    time.sleep(0.01)
