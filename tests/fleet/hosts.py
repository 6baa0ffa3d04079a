"""Several OrderFlow "hosts" on one machine, as a fleet runs them: one PostgreSQL, one Redis, one broker.

Each host is an order API (gunicorn with the project's config, on a port of its own) and a Celery worker with
the outbox relay on, each in a process group of its own so a host can be killed whole. The dependencies are
shared: the three simulators and a chaos proxy, started once, with a `payment` proxy per host (a host's own
network path to the payment service, which a test can slow down or break alone) and one `inventory` and
`notification` proxy for all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from app.config import ROOT, Settings, is_amqp_url
from bench.stack import free_ports
from tests.broker import DEFAULT_RABBITMQ_URL, drop_queues
from tests.support import DatabaseHandle

ADMIN_TOKEN = "fleet-admin-token"
KINDS = ("payment", "inventory", "notification")


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)


def fleet_broker() -> str | None:
    """BROKER_URL when it names RabbitMQ, else the machine's RabbitMQ if it answers, else None (the Redis)."""
    from kombu import Connection

    url = os.environ.get("BROKER_URL") or ""
    if is_amqp_url(url):
        return url
    try:
        with Connection(DEFAULT_RABBITMQ_URL, connect_timeout=1) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception:
        return None
    return DEFAULT_RABBITMQ_URL


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        # A session (and so a process group) of its own: killing the group takes the pool processes too.
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its group, SIGKILL to what is left after a few seconds: nothing outlives the test."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=8)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait(timeout=5)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Host:
    name: str
    api: str
    api_process: subprocess.Popen[bytes]
    worker_process: subprocess.Popen[bytes]
    logs: Path
    session: requests.Session = field(default_factory=requests.Session)

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.api}{path}", timeout=10,
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)

    def circuit(self, name: str) -> str:
        response = self.admin("GET", "/admin/circuits")
        response.raise_for_status()
        return next(str(c["state"]) for c in response.json()["circuits"] if c["name"] == name)

    def order(self, customer_id: int = 7, key: str | None = None) -> requests.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.session.post(f"{self.api}/api/orders", timeout=15, headers=headers,
                                 json={"customer_id": customer_id, "lines": [{"product_id": 3, "quantity": 1}]})

    def worker_log(self) -> str:
        return (self.logs / "worker.log").read_text(errors="replace")

    def kill(self) -> None:
        """The whole host at once, as a machine that loses power: SIGKILL to both process groups."""
        for process in (self.api_process, self.worker_process):
            _signal_group(process, signal.SIGKILL)
        for process in (self.api_process, self.worker_process):
            process.wait(timeout=5)

    def ready(self) -> bool:
        return _answers(f"{self.api}/health/ready") and "ready." in self.worker_log()

    def tails(self) -> str:
        return "\n".join(f"--- {self.name} {log} ---\n{_tail(self.logs / log)}" for log in ("api.log", "worker.log"))


@dataclass
class Fleet:
    tmp: Path
    env: dict[str, str]
    chaos: str
    simulators: dict[str, str]
    proxies: dict[str, str]  # proxy name -> its URL
    hosts: dict[str, Host] = field(default_factory=dict)

    def start_host(self, name: str) -> Host:
        logs = self.tmp / name
        (logs / "metrics-api").mkdir(parents=True)
        (logs / "metrics-worker").mkdir()
        api_port, metrics_port = free_ports(2)
        env = {
            **self.env,
            "API_HOST": "127.0.0.1", "API_PORT": str(api_port), "API_PROCESSES": "1", "API_THREADS": "8",
            "WORKER_METRICS_PORT": str(metrics_port), "ORDERFLOW_RELAY": "on", "ORDERFLOW_VAR": str(logs / "var"),
            # The host's own path to the payment service.
            "PAYMENT_URL": self.proxies[f"payment-{name}"],
        }
        bindir = Path(sys.executable).parent
        api = _spawn([str(bindir / "gunicorn"), "--config", "python:app.gunicorn_config", "app:create_app()"],
                     {**env, "PROMETHEUS_MULTIPROC_DIR": str(logs / "metrics-api")}, logs / "api.log")
        worker = _spawn([sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
                         "--concurrency=2", "--queues=payments,notifications,dead_letter", "--without-gossip",
                         "--without-mingle", "--hostname", f"{name}@%h"],
                        {**env, "PROMETHEUS_MULTIPROC_DIR": str(logs / "metrics-worker")}, logs / "worker.log")
        host = self.hosts[name] = Host(name, f"http://127.0.0.1:{api_port}", api, worker, logs)
        return host

    def wait_ready(self, timeout: float) -> None:
        for host in self.hosts.values():
            wait_until(host.ready, timeout=timeout, what=f"host {host.name} ready", on_timeout=host.tails)

    def toxic(self, proxy: str, kind: str, attributes: dict[str, Any], *, name: str) -> None:
        response = requests.post(f"{self.chaos}/proxies/{proxy}/toxics", timeout=5,
                                 json={"name": name, "type": kind, "stream": "downstream", "attributes": attributes})
        response.raise_for_status()

    def remove_toxic(self, proxy: str, name: str) -> None:
        requests.delete(f"{self.chaos}/proxies/{proxy}/toxics/{name}", timeout=5).raise_for_status()

    def captures(self, order_id: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.simulators['payment']}/payments", params={"order_id": order_id}, timeout=5)
        return list(response.json()["items"])


@contextmanager
def fleet(tmp: Path, database: DatabaseHandle, redis_url: str, prefix: str, *, policies: str,
          hosts: tuple[str, ...], extra_env: dict[str, str] | None = None,
          ready_timeout: float = 45.0) -> Iterator[Fleet]:
    """The shared dependencies, then `hosts`, all ready; every process is gone when the block ends."""
    with ExitStack() as cleanup:
        policy_file = tmp / "resilience.toml"
        policy_file.write_text(policies)
        sim_ports = dict(zip(KINDS, free_ports(3), strict=True))
        chaos_port, *proxy_ports = free_ports(3 + len(hosts))
        upstream = {kind: f"127.0.0.1:{port}" for kind, port in sim_ports.items()}
        proxies = [{"name": f"payment-{host}", "upstream": upstream["payment"]} for host in hosts]
        proxies += [{"name": kind, "upstream": upstream[kind]} for kind in ("inventory", "notification")]
        for proxy, port in zip(proxies, proxy_ports, strict=True):
            proxy["listen"] = f"127.0.0.1:{port}"
        (tmp / "proxies.json").write_text(json.dumps(proxies))
        proxy_urls = {str(proxy["name"]): f"http://{proxy['listen']}" for proxy in proxies}
        shared: list[subprocess.Popen[bytes]] = []

        def stop_shared() -> None:
            for process in shared:
                _stop(process)

        cleanup.callback(stop_shared)
        for kind, port in sim_ports.items():
            shared.append(_spawn([sys.executable, "-m", "simulators", kind, "--host", "127.0.0.1", "--port", str(port)],
                                 dict(os.environ), tmp / f"{kind}-sim.log"))
        shared.append(_spawn([sys.executable, "-m", "chaosproxy", "--host", "127.0.0.1", "--port", str(chaos_port),
                              "--config", str(tmp / "proxies.json")], dict(os.environ), tmp / "chaosproxy.log"))

        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_SCHEMA", "BROKER_URL")}
        env.update(database.env())
        broker = fleet_broker()
        if broker:
            env["BROKER_URL"] = broker
        env.update({
            "REDIS_URL": redis_url, "ORDERFLOW_REDIS_PREFIX": prefix, "ADMIN_TOKEN": ADMIN_TOKEN,
            "RESILIENCE_FILE": str(policy_file), "INVENTORY_URL": proxy_urls["inventory"],
            "NOTIFICATION_URL": proxy_urls["notification"], "PYTHONUNBUFFERED": "1",
            "DATABASE_POOL_SIZE": "4", "DATABASE_MAX_OVERFLOW": "4", "ORDERFLOW_RELAY_INTERVAL": "0.2",
            **(extra_env or {}),
        })
        running = Fleet(tmp, env, f"http://127.0.0.1:{chaos_port}",
                        {kind: f"http://127.0.0.1:{port}" for kind, port in sim_ports.items()}, proxy_urls)
        cleanup.callback(drop_queues, Settings.from_env(env))
        wait_until(lambda: all(_answers(f"{url}/health") for url in running.simulators.values())
                   and _answers(f"{running.chaos}/version"), timeout=ready_timeout, what="simulators and chaos proxy",
                   on_timeout=lambda: _tail(tmp / "chaosproxy.log"))

        def stop_hosts() -> None:
            for host in running.hosts.values():
                for process in (host.api_process, host.worker_process):
                    _stop(process)

        cleanup.callback(stop_hosts)
        for name in hosts:
            running.start_host(name)
        running.wait_ready(ready_timeout)
        yield running
