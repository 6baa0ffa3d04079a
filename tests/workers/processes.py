"""A real Celery worker process over a test's own database, Redis prefix, broker queues and simulators."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from app.bootstrap import Services, bootstrap
from app.config import ROOT, Settings
from app.domain import Order
from app.services.ordering import PlaceOrder, get_order
from bench.stack import free_ports
from simulators import SimulatorServer, serve
from tests.broker import drop_queues
from tests.support import DatabaseHandle

# Fast job policy: sub-second backoff, short attempts; a circuit that does not open on a handful of test
# failures (the circuit's own tests live with the resilience library).
POLICY = """
[api]
request_deadline = 3.0

[dependencies.payment]
attempt_timeout = 2.0
total_timeout = 2.5
circuit_breaker = { minimum_throughput = 1000 }

[dependencies.inventory]
attempt_timeout = 3.0
total_timeout = 3.0

[jobs.payment]
attempt_timeout = 2.0
max_retries = 3
backoff_base = 0.05
backoff_max = 0.3
"""
MAX_RETRIES = 3
LEASE_MARGIN = 1.0


def free_port() -> int:
    return free_ports(1)[0]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after its closing parenthesis do not.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class WorkerStack:
    tmp: Path
    database: DatabaseHandle
    redis_url: str
    prefix: str
    payment: SimulatorServer
    notification: SimulatorServer
    inventory: SimulatorServer
    # None: the broker is the Redis of `redis_url`.
    broker_url: str | None = None
    metrics_port: int = field(default_factory=free_port)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _services: Services | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("REDIS_URL", None)
        env.pop("BROKER_URL", None)
        env.pop("ORDERFLOW_LOG_FORMAT", None)  # the log files get JSON lines, whatever the shell running the tests
        if self.broker_url is not None:
            env["BROKER_URL"] = self.broker_url
        env.update(self.database.env())
        env.update({
            "REDIS_URL": self.redis_url,
            "ORDERFLOW_REDIS_PREFIX": self.prefix,
            "RESILIENCE_FILE": str(self.tmp / "resilience.toml"),
            "PAYMENT_URL": self.payment.url,
            "NOTIFICATION_URL": self.notification.url,
            "INVENTORY_URL": self.inventory.url,
            "ORDERFLOW_RELAY_INTERVAL": "0.1",
            "ORDERFLOW_LEASE_MARGIN": str(LEASE_MARGIN),
            "ORDERFLOW_REPUBLISH_AFTER": "3",
            "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "metrics"),
            "WORKER_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    @property
    def services(self) -> Services:
        """The API's side, in this process: place orders, replay, read them back."""
        with self._lock:
            if self._services is None:
                self._services = bootstrap(Settings.from_env(self.env))
            return self._services

    def start_worker(self, *, wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`env`: variables of this worker alone, over the stack's."""
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO", "--concurrency=2",
             "--queues=payments,notifications,dead_letter", "--without-gossip", "--without-mingle",
             "--hostname", f"w{len(self.workers)}@%h"],
            env={**self.env, **(env or {})}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.workers.append(proc)
        if wait:
            self.wait_for_log(len(self.workers) - 1, "ready.", timeout=60)
        return proc

    def log(self, index: int = -1) -> str:
        index = index if index >= 0 else len(self.workers) + index
        return (self.tmp / f"worker-{index}.log").read_text(errors="replace")

    def log_summary(self) -> str:
        """Warnings and errors of every worker so far, then the end of the last log."""
        notable = [line[:300] for i in range(len(self.workers)) for line in self.log(i).splitlines()
                   if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Error:", '"warning"'))]
        return "\n".join(notable[-60:]) + "\n--- last worker log ---\n" + self.log()[-2000:]

    def wait_for_log(self, index: int, text: str, *, timeout: float) -> None:
        wait_until(lambda: text in self.log(index), timeout=timeout, what=f"{text!r} in worker log",
                   on_timeout=lambda: self.log(index)[-3000:])

    def kill_workers(self) -> None:
        for proc in self.workers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=5)

    def place(self, *, customer_id: int = 1) -> Order:
        return self.services.placement.place(PlaceOrder(customer_id=customer_id, lines=((1, 2),)))

    def order(self, order_id: str) -> Order:
        found = get_order(self.services.uow, order_id)
        assert found is not None
        return found

    def set_flag(self, name: str, enabled: bool) -> None:
        self.services.flags.set(name, enabled=enabled, by="test")

    def faults(self, **faults: Any) -> None:
        if faults:
            requests.put(f"{self.payment.url}/faults", json=faults, timeout=2).raise_for_status()
        else:
            requests.delete(f"{self.payment.url}/faults", timeout=2).raise_for_status()

    def captures(self, order_id: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.payment.url}/payments", params={"order_id": order_id}, timeout=2)
        return list(response.json()["items"])

    def wait_for_status(self, order_ids: list[str], status: str, *, timeout: float) -> None:
        wait_until(
            lambda: all(self.order(o).status == status for o in order_ids), timeout=timeout,
            what=f"orders {status}",
            on_timeout=lambda: f"{[str(self.order(o).status) for o in order_ids]}\n{self.log_summary()}",
        )

    def close(self) -> None:
        self.kill_workers()
        if self._services is not None:
            self._services.engine.dispose()
            self._services.publisher.close()
        drop_queues(Settings.from_env(self.env))


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")


@contextmanager
def worker_stack(tmp: Path, database: DatabaseHandle, redis_url: str, prefix: str, *,
                 broker_url: str | None = None) -> Iterator[WorkerStack]:
    (tmp / "resilience.toml").write_text(POLICY)
    (tmp / "metrics").mkdir()
    payment, notification, inventory = serve("payment"), serve("notification"), serve("inventory")
    simulators = [payment, notification, inventory]
    stack = WorkerStack(tmp, database, redis_url, prefix, payment, notification, inventory, broker_url)
    try:
        yield stack
    finally:
        stack.close()
        for simulator in simulators:
            simulator.shutdown()


@dataclass
class Broker:
    """A broker a test can take away and bring back; `redis_url` and `broker_url` are what the stack uses."""

    redis_url: str
    broker_url: str | None
    stop: Callable[[], None]
    restart: Callable[[], None]


@contextmanager
def broker_that_can_fail(tmp: Path, redis_url: str, rabbitmq_url: str | None) -> Iterator[Broker]:
    """Without `rabbitmq_url`: an embedded Redis of the test's own (it also holds the caches and circuit
    state), killed and started again. With it: RabbitMQ behind a chaos proxy, disabled (open connections
    dropped, new ones refused) and enabled again; the machine's RabbitMQ is shared, so it is never stopped."""
    if rabbitmq_url is None:
        from tests.conftest import _embedded_redis

        broker_dir = tmp / "broker"
        broker_dir.mkdir()
        first, url = _embedded_redis(broker_dir)
        procs = [first]

        def stop() -> None:
            procs[-1].terminate()
            procs[-1].wait(timeout=5)

        def restart() -> None:
            procs.append(_embedded_redis(broker_dir)[0])

        try:
            yield Broker(url, None, stop, restart)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=5)
        return

    from urllib.parse import urlsplit

    from chaosproxy.client import ToxiproxyClient
    from chaosproxy.server import start

    upstream = urlsplit(rabbitmq_url)
    server = start()
    try:
        with ToxiproxyClient(server.url) as chaos:
            proxy = chaos.create_proxy("rabbitmq", "127.0.0.1:0", f"{upstream.hostname}:{upstream.port or 5672}")
            port = int(str(proxy["listen"]).rsplit(":", 1)[1])
            userinfo = upstream.netloc.rpartition("@")[0]
            netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
            yield Broker(redis_url, upstream._replace(netloc=netloc).geturl(), lambda: chaos.disable("rabbitmq"),
                         lambda: chaos.enable("rabbitmq"))
    finally:
        server.shutdown()
