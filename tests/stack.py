"""`make run` as a test fixture: the real supervisor and every real process, on ports of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from app.config import Settings
from bench.stack import free_ports
from tests.broker import drop_queues, require_reachable
from tests.support import DatabaseHandle, fresh_database

ROOT = Path(__file__).resolve().parent.parent
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

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(stack: RunningStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise RuntimeError(f"make run exited with {stack.process.returncode}:\n{stack.tail()}")
        try:
            if requests.get(f"{stack.api}/health/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the stack was not ready within {timeout} s:\n{stack.tail()}")


def stop_stack(stack: RunningStack, sig: int = signal.SIGTERM) -> tuple[float, set[int]]:
    """Signals `make`, returns (seconds until make exited, processes of the stack still alive after)."""
    family = descendants(stack.process.pid)
    started = time.monotonic()
    stack.process.send_signal(sig)
    try:
        stack.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        stack.process.kill()
    elapsed = time.monotonic() - started
    time.sleep(0.3)
    return elapsed, {pid for pid in family if alive(pid)}


@contextmanager
def running_stack(tmp: Path, *, extra_env: dict[str, str] | None = None, policies: str | None = None,
                  ready_timeout: float = 90.0) -> Iterator[RunningStack]:
    with ExitStack() as cleanup:
        db = cleanup.enter_context(fresh_database())
        api, chaos, metrics, *rest = free_ports(9)
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
            "ORDERFLOW_REDIS_PREFIX": f"e2e{api}", "ORDERFLOW_RELAY_INTERVAL": "0.2",
        })
        if "REDIS_URL" in env and env["REDIS_URL"].startswith("redis://"):
            env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{1 + api % 14}"
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
            admin_token="e2e-admin-token", var=var, log=log, database=db,
        )
        # Runs on leaving the ExitStack, after the stop below: once the workers are gone.
        cleanup.callback(drop_queues, Settings.from_env(env))
        try:
            _wait_ready(stack, ready_timeout)
            yield stack
        finally:
            if process.poll() is None:
                stop_stack(stack)
