"""The stack as `make run` starts it (the real supervisor and every process), on ports of the bench's own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from .environment import ROOT, Database, RedisTarget

ADMIN_TOKEN = "bench-admin-token"
KINDS = ("payment", "inventory", "notification")
FLAG_PROPAGATION = 2.2  # every process obeys a flag change within 2 s (CONTRACT section 4)


def free_ports(count: int) -> list[int]:
    """Ports nobody else is handed until the processes they are meant for bind them.

    A port picked with bind(0) and closed is free again at once: until the stack binds it, seconds later,
    any other bind(0) or outgoing connection on the machine may take it. So each port is left in
    TIME_WAIT (the accepting side closes first): for a minute the kernel hands it to no bind(0) and no
    connect(), while a server that binds it by number with SO_REUSEADDR (gunicorn, http.server, the chaos
    proxy and every server of the stack) still can.
    """
    return [_reserve_port() for _ in range(count)]


def _reserve_port() -> int:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = listener.accept()
            accepted.close()
    return port


def stop_process(process: subprocess.Popen[bytes], *, grace: float, group: bool = False) -> None:
    """SIGTERM, and SIGKILL (to its whole process group when `group`) if it has not exited within `grace`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=5)


def wait_http(
    url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before {url} answered:\n{tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s:\n{tail(log)}")


@contextmanager
def serving(argv: list[str], ready_url: str) -> Iterator[None]:
    """A process of its own (a simulator, the chaos proxy) for as long as the block runs."""
    process = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_http(ready_url, timeout=30, process=process)
        yield
    finally:
        stop_process(process, grace=10)


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None:
        return ""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


@dataclass
class BenchStack:
    process: subprocess.Popen[bytes]
    api: str
    chaos: str
    simulators: dict[str, str]
    proxies: dict[str, str]
    env: dict[str, str]
    log: Path
    _session: requests.Session = field(default_factory=requests.Session)

    # --- admin API ----------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._session.request(
            method,
            f"{self.api}{path}",
            timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            **kwargs,
        )
        response.raise_for_status()
        return response.json()

    def set_flag(self, name: str, enabled: bool) -> None:
        self._admin("PUT", f"/admin/flags/{name}", json={"enabled": enabled})
        time.sleep(FLAG_PROPAGATION)

    def isolate(self, circuit: str) -> None:
        self._admin("POST", f"/admin/circuits/{circuit}/isolate")

    def reset(self, circuit: str) -> None:
        self._admin("POST", f"/admin/circuits/{circuit}/reset")

    def circuit_state(self, circuit: str) -> str:
        for entry in self._admin("GET", "/admin/circuits")["circuits"]:
            if entry["name"] == circuit:
                return str(entry["state"])
        return "unknown"

    def chaos_client(self) -> Any:
        from chaosproxy.client import ToxiproxyClient

        return ToxiproxyClient(self.chaos)

    # --- processes ----------------------------------------------------------------------------------

    def _children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=False)
        except psutil.Error:
            return []

    def _named(self, word: str) -> psutil.Process | None:
        for child in self._children():
            try:
                if any(word in part for part in child.cmdline()[:2]):
                    return child
            except psutil.Error:
                continue
        return None

    def api_workers(self) -> list[int]:
        """The gunicorn worker processes (the master only forks and watches)."""
        master = self._named("gunicorn")
        return sorted(p.pid for p in master.children()) if master is not None else []

    def worker_main(self) -> int | None:
        main = self._named("celery")
        return main.pid if main is not None else None

    def worker_processes(self) -> list[int]:
        """The Celery main process (relay, metrics) and its prefork pool children."""
        main = self._named("celery")
        if main is None:
            return []
        return [main.pid, *sorted(p.pid for p in main.children())]

    def pause_workers(self) -> None:
        """Freeze the Celery worker (its own process group): nothing consumes or relays until resumed."""
        main = self.worker_main()
        if main is not None:
            os.killpg(main, signal.SIGSTOP)

    def resume_workers(self) -> None:
        main = self.worker_main()
        if main is not None:
            os.killpg(main, signal.SIGCONT)


def stack_env(
    db: Database, redis_target: RedisTarget, var: Path, extra_env: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    api, chaos, metrics, *rest = free_ports(9)
    ports = {
        "api": api,
        "chaos": chaos,
        "metrics": metrics,
        **{f"{k}-sim": p for k, p in zip(KINDS, rest[:3], strict=True)},
        **{f"{k}-proxy": p for k, p in zip(KINDS, rest[3:], strict=True)},
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "DATABASE_SCHEMA",
            "REDIS_URL",
            "PAYMENT_URL",
            "INVENTORY_URL",
            "NOTIFICATION_URL",
            "RESILIENCE_FILE",
            "PROMETHEUS_MULTIPROC_DIR",
        )
    }
    env.update(db.env())
    env.update(
        {
            "REDIS_URL": redis_target.url,
            "ORDERFLOW_REDIS_PREFIX": redis_target.prefix,
            "API_PORT": str(api),
            "CHAOS_PORT": str(chaos),
            "WORKER_METRICS_PORT": str(metrics),
            "SIMULATOR_PORTS": ",".join(str(p) for p in rest[:3]),
            "PROXY_PORTS": ",".join(str(p) for p in rest[3:]),
            "ORDERFLOW_VAR": str(var),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    return env, ports


@contextmanager
def running_stack(
    db: Database,
    redis_target: RedisTarget,
    var: Path,
    *,
    ready_timeout: float = 90.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[BenchStack]:
    """`make run`'s supervisor (what `make run` execs), started in a session of its own and stopped by
    SIGTERM, which stops every process it started. `extra_env` (a policy file, say) goes to every process."""
    var.mkdir(parents=True, exist_ok=True)
    env, ports = stack_env(db, redis_target, var, extra_env)
    log = var / "stack.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.stack"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack = BenchStack(
            process=process,
            api=f"http://127.0.0.1:{ports['api']}",
            chaos=f"http://127.0.0.1:{ports['chaos']}",
            simulators={k: f"http://127.0.0.1:{ports[f'{k}-sim']}" for k in KINDS},
            proxies={k: f"http://127.0.0.1:{ports[f'{k}-proxy']}" for k in KINDS},
            env=env,
            log=log,
        )
        try:
            wait_http(f"{stack.api}/health/ready", timeout=ready_timeout, process=process, log=log)
            wait_http(
                f"http://127.0.0.1:{ports['metrics']}/metrics",
                timeout=ready_timeout,
                process=process,
                log=log,
            )
            yield stack
        finally:
            stack.resume_workers()
            stop_process(process, grace=20, group=True)
