"""`make run`'s supervisor at start: it refuses at once what cannot work, and says "ready" only when it is.

The real supervisor (`python -m app.stack`, what `make run` execs), with the environment the stack
fixture gives it: ports of the test's own, a database of the test's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.stack import free_ports
from tests.stack import ROOT, alive, descendants
from tests.support import fresh_database

BANNER = "order API       http://"  # the banner's first line
REFUSED_WITHIN = 8.0  # seconds; before these checks, a taken port cost ~50 s of restarts


@dataclass
class Ports:
    api: int
    chaos: int
    worker_metrics: int
    simulators: list[int]
    proxies: list[int]


def supervisor_env(tmp: Path, ports: Ports, database: dict[str, str]) -> dict[str, str]:
    """The environment tests/stack.py gives `make run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_SCHEMA", "RESILIENCE_FILE")}
    env.update(database)
    env.update({
        "API_PORT": str(ports.api), "CHAOS_PORT": str(ports.chaos), "WORKER_METRICS_PORT": str(ports.worker_metrics),
        "SIMULATOR_PORTS": ",".join(map(str, ports.simulators)), "PROXY_PORTS": ",".join(map(str, ports.proxies)),
        "ORDERFLOW_VAR": str(tmp / "var"), "ADMIN_TOKEN": "startup-admin-token",
        "ORDERFLOW_REDIS_PREFIX": f"startup{ports.api}", "ORDERFLOW_RELAY_INTERVAL": "0.2",
    })
    if env.get("REDIS_URL", "").startswith("redis://"):
        env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + f"/{1 + ports.api % 14}"
    return env


def new_ports() -> Ports:
    api, chaos, metrics, *rest = free_ports(9)
    return Ports(api, chaos, metrics, rest[:3], rest[3:])


@dataclass
class Refusal:
    code: int
    elapsed: float
    output: str
    family: set[int]


def run_until_exit(env: dict[str, str], *, timeout: float = 30.0) -> Refusal:
    """Run the supervisor to its end, noting every process it started on the way."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "app.stack"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        while process.poll() is None and time.monotonic() - started < timeout:
            family |= descendants(process.pid)
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            family |= descendants(process.pid)
            process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode(errors="replace")
    return Refusal(process.returncode, time.monotonic() - started, output, family)


def processes_mentioning(text: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read() and alive(int(entry)):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def assert_refused_before_anything_started(refusal: Refusal, tmp: Path) -> None:
    assert refusal.code != 0, refusal.output
    assert refusal.elapsed < REFUSED_WITHIN, refusal.output
    assert BANNER not in refusal.output and "admin token" not in refusal.output
    assert "applying migrations" not in refusal.output and "embedded redis" not in refusal.output
    assert not (tmp / "var" / "redis.sock").exists()
    assert not {pid for pid in refusal.family if alive(pid)}
    assert not processes_mentioning(str(tmp))


@contextmanager
def listening_on(port: int) -> Iterator[socket.socket]:
    with socket.socket() as sock:
        # As the stack's own servers do: the test's free ports are held in TIME_WAIT until bound this way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


@pytest.mark.parametrize(
    ("variable", "pick"),
    [
        ("API_PORT", lambda p: p.api),
        ("CHAOS_PORT", lambda p: p.chaos),
        ("WORKER_METRICS_PORT", lambda p: p.worker_metrics),
        ("SIMULATOR_PORTS", lambda p: p.simulators[1]),
        ("PROXY_PORTS", lambda p: p.proxies[2]),
    ],
)
def test_a_port_in_use_stops_the_start_at_once_naming_port_variable_and_holder(
    tmp_path: Path, variable: str, pick: object
) -> None:
    ports = new_ports()
    port = pick(ports)  # type: ignore[operator]
    env = supervisor_env(tmp_path, ports, {"DATABASE_URL": f"sqlite:///{tmp_path}/orderflow.db"})
    with listening_on(port):
        refusal = run_until_exit(env)
    assert f"port {port} ({variable}, " in refusal.output, refusal.output
    assert f"in use by pid {os.getpid()} (" in refusal.output, refusal.output
    assert_refused_before_anything_started(refusal, tmp_path)
    assert not (tmp_path / "orderflow.db").exists()


def test_a_contradictory_policy_file_stops_the_start_before_the_banner(tmp_path: Path) -> None:
    policy = tmp_path / "resilience.toml"
    policy.write_text("[dependencies.payment]\nattempt_timeout = 9\ntotal_timeout = 1\n")
    env = supervisor_env(tmp_path, new_ports(), {"DATABASE_URL": f"sqlite:///{tmp_path}/orderflow.db"})
    env["RESILIENCE_FILE"] = str(policy)
    refusal = run_until_exit(env)
    assert (f"{policy}: dependencies.payment.attempt_timeout: 9 exceeds dependencies.payment.total_timeout = 1"
            in refusal.output), refusal.output
    assert_refused_before_anything_started(refusal, tmp_path)


def test_the_banner_comes_once_every_process_answers(tmp_path: Path) -> None:
    ports = new_ports()
    endpoints = {
        "api": f"http://127.0.0.1:{ports.api}/health/ready",
        "worker": f"http://127.0.0.1:{ports.worker_metrics}/metrics",
        "chaosproxy": f"http://127.0.0.1:{ports.chaos}/version",
        **{f"sim{i}": f"http://127.0.0.1:{port}/health" for i, port in enumerate(ports.simulators)},
    }
    log = tmp_path / "supervisor.log"
    with fresh_database() as db, open(log, "wb") as out:
        env = supervisor_env(tmp_path, ports, db.env())
        process = subprocess.Popen([sys.executable, "-m", "app.stack"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        family: set[int] = set()
        try:
            deadline = time.monotonic() + 120
            while BANNER not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, f"no banner within 120 s:\n{log.read_text(errors='replace')}"
                time.sleep(0.02)
            # Asked right after the banner appeared: a banner printed before the processes were up (as it
            # once was, the moment they were spawned) finds most of them not listening yet.
            answers = {name: _status(url) for name, url in endpoints.items()}
            assert answers == dict.fromkeys(endpoints, 200), log.read_text(errors="replace")
            family = descendants(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    text = log.read_text(errors="replace")
    assert text.count(BANNER) == 1
    before_banner = text.split(BANNER, 1)[0]
    assert "applying migrations" in before_banner
    time.sleep(0.3)
    assert not {pid for pid in family if alive(pid)}


def _status(url: str) -> int | str:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException as exc:
        return type(exc).__name__
