"""`make run` as a test fixture: the real supervisor and every real process, on ports of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from app.config import Settings
from bench.stack import free_ports
from tests.broker import drop_queues, require_reachable
from tests.support import DatabaseHandle, fresh_database

if TYPE_CHECKING:
    from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
STOP_BOUND = 10.0  # seconds from the signal until no process of the stack is left (the contract's bound)
# What the stack's log lines name as their process (app.logs).
STACK_PROCESSES = {"api", "worker", "relay", "chaosproxy", "payment", "inventory", "notification", "supervisor",
                   "redis"}


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    api: str
    chaos: str
    worker_metrics: str
    simulators: dict[str, str]
    admin_token: str
    var: Path
    log: Path
    env: dict[str, str]
    database: DatabaseHandle | None = None

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def order(self, body: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        body = body or {"customer_id": 11, "lines": [{"product_id": 1, "quantity": 1}]}
        return requests.post(f"{self.api}/api/orders", json=body, timeout=15, **kwargs)

    def get_order(self, order_id: str) -> dict[str, Any]:
        return requests.get(f"{self.api}/api/orders/{order_id}", timeout=5).json()  # type: ignore[no-any-return]

    def set_flag(self, name: str, enabled: bool) -> None:
        response = requests.put(f"{self.api}/admin/flags/{name}", json={"enabled": enabled},
                                headers=self.admin(), timeout=5)
        response.raise_for_status()

    def captures(self, order_id: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.simulators['payment']}/payments", params={"order_id": order_id}, timeout=5)
        return response.json()["items"]  # type: ignore[no-any-return]

    def wait_for_status(self, order_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        order = self.get_order(order_id)
        while order["status"] != status and time.monotonic() < deadline:
            time.sleep(0.2)
            order = self.get_order(order_id)
        return order

    def pending_orders(self) -> list[str]:
        response = requests.get(f"{self.api}/api/orders", params={"status": "PaymentPending", "limit": 500},
                                timeout=5)
        response.raise_for_status()
        return [order["id"] for order in response.json()["items"]]

    def wait_settled(self, timeout: float = 60.0) -> None:
        """Until no order waits for its payment: a job left over from one test would otherwise call the
        payment service under the next test's faults, and its failures count on the shared circuit."""
        deadline = time.monotonic() + timeout
        while pending := self.pending_orders():
            if time.monotonic() >= deadline:
                raise AssertionError(f"{len(pending)} orders still PaymentPending after {timeout} s: "
                                     f"{pending[:5]}\n{self.tail()}")
            time.sleep(0.2)

    def api_processes(self) -> set[int]:
        """The gunicorn processes that serve requests: children of the gunicorn master."""
        gunicorn = {pid for pid in descendants(self.process.pid) if "gunicorn" in cmdline(pid)}
        return {pid for pid in gunicorn if parent(pid) in gunicorn}

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _answers(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2)
    except requests.RequestException:
        return None


def _waiting_for(stack: RunningStack, celery: Celery) -> str | None:
    """What the stack still lacks before a test may use it, or None once every process is up.

    `/health/ready` answers 200 as soon as one API process has the database, even while the simulators,
    the chaos proxy or the worker are still starting (that is only `warn`); so each process is asked.
    """
    for name, url in stack.simulators.items():
        if (response := _answers(f"{url}/health")) is None or response.status_code != 200:
            return f"the {name} simulator"
    if (response := _answers(f"{stack.chaos}/proxies")) is None or response.status_code != 200:
        return "the chaos proxy"
    if not set(stack.simulators) <= set(response.json()):
        return "the chaos proxy's proxies"
    if (response := _answers(f"{stack.api}/health/ready")) is None or response.status_code != 200:
        return "the API's readiness"
    if response.json()["status"] != "pass":
        return f"every readiness check to pass: {response.json()['checks']}"
    if len(stack.api_processes()) < int(stack.env.get("API_PROCESSES", "2")):
        return "every gunicorn worker process"
    if (response := _answers(stack.worker_metrics)) is None or response.status_code != 200:
        return "the worker's metrics endpoint"
    # The worker answers a broadcast only once its consumer runs; its stats list the pool processes
    # that are up.
    try:
        stats = celery.control.inspect(timeout=1.0, limit=1).stats() or {}
    except Exception as exc:  # the broker is still starting
        return f"the Celery worker ({type(exc).__name__})"
    pools = [worker["pool"] for worker in stats.values()]
    if not pools or any(len(pool["processes"]) < pool["max-concurrency"] for pool in pools):
        return f"the Celery worker's pool processes: {pools}"
    return None


def _wait_ready(stack: RunningStack, timeout: float) -> None:
    from app.config import Settings
    from workers.celery_app import make_celery

    celery = make_celery(Settings.from_env(stack.env), role="publisher")
    deadline = time.monotonic() + timeout
    try:
        while (missing := _waiting_for(stack, celery)) is not None:
            if stack.process.poll() is not None:
                raise RuntimeError(f"make run exited with {stack.process.returncode}:\n{stack.tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the stack was not ready within {timeout} s, waiting for {missing}:\n"
                                   f"{stack.tail()}")
            time.sleep(0.25)
    finally:
        celery.close()


def stop_stack(stack: RunningStack, sig: int = signal.SIGTERM) -> tuple[float, set[int]]:
    """Signals `make`, returns (seconds until make exited, processes of the stack still alive once the
    contract's 10 s from the signal have passed or none is left)."""
    family = descendants(stack.process.pid)
    started = time.monotonic()
    stack.process.send_signal(sig)
    try:
        stack.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        stack.process.kill()
    elapsed = time.monotonic() - started
    # A process SIGKILLed at the end of the budget is gone a moment later, not at once.
    left = {pid for pid in family if alive(pid)}
    while left and time.monotonic() < started + STOP_BOUND:
        time.sleep(0.05)
        left = {pid for pid in left if alive(pid)}
    return elapsed, left


@contextmanager
def running_stack(tmp: Path, *, extra_env: dict[str, str] | None = None, policies: str | None = None,
                  ready_timeout: float = 90.0) -> Iterator[RunningStack]:
    with ExitStack() as cleanup:
        db = cleanup.enter_context(fresh_database())
        api, chaos, metrics, *rest = free_ports(9)
        prefix = f"e2e{uuid.uuid4().hex[:12]}"
        sims, proxies = rest[:3], rest[3:]
        var = tmp / "var"
        # The log file is no terminal: the stack writes JSON lines there unless `extra_env` asks for text.
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "DATABASE_SCHEMA", "ORDERFLOW_LOG_FORMAT")}
        env.update(db.env())
        env.update({
            "API_PORT": str(api), "CHAOS_PORT": str(chaos), "WORKER_METRICS_PORT": str(metrics),
            "SIMULATOR_PORTS": ",".join(map(str, sims)), "PROXY_PORTS": ",".join(map(str, proxies)),
            "ORDERFLOW_VAR": str(var), "ADMIN_TOKEN": "e2e-admin-token",
            "ORDERFLOW_REDIS_PREFIX": prefix, "ORDERFLOW_RELAY_INTERVAL": "0.2",
        })
        if env.get("REDIS_URL", "").startswith("redis://"):
            env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{1 + api % 14}"
            # A shared Redis outlives the stack: its queues and circuits must not meet a later stack's.
            cleanup.callback(_forget_keys, env["REDIS_URL"], prefix)
        if policies is not None:
            policy_file = tmp / "resilience.toml"
            policy_file.write_text(policies)
            env["RESILIENCE_FILE"] = str(policy_file)
        env.update(extra_env or {})
        require_reachable(env.get("BROKER_URL"))
        log = tmp / "make-run.log"
        out = cleanup.enter_context(open(log, "wb"))
        process = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        stack = RunningStack(
            process=process, api=f"http://127.0.0.1:{api}", chaos=f"http://127.0.0.1:{chaos}",
            worker_metrics=f"http://127.0.0.1:{metrics}/metrics",
            simulators={k: f"http://127.0.0.1:{p}" for k, p in zip(("payment", "inventory", "notification"),
                                                                    sims, strict=True)},
            admin_token="e2e-admin-token", var=var, log=log, env=env, database=db,
        )
        # Runs on leaving the ExitStack, after the stop below: once the workers are gone.
        cleanup.callback(drop_queues, Settings.from_env(env))
        try:
            _wait_ready(stack, ready_timeout)
            yield stack
        finally:
            if process.poll() is None:
                stop_stack(stack)


def _forget_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
