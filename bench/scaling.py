"""Scaling figures for docs/scaling.md: the backlog drain with 1, 2 and 3 worker groups on one machine, the
connections each kind of process opens, and the CPU each process spends per order.

`python -m bench.scaling [--backlog N] [--orders N]` starts the stack as `make run` does (on the machine's
PostgreSQL and Redis when they answer, as a fleet runs), then:

1. places `--orders` orders through the API with the payment healthy and counts the CPU every process spent;
2. for 1, 2 and 3 worker groups (a group is one `celery -A workers worker` with the stack worker's options: a
   main process and its prefork pool), writes a backlog of `--backlog` PaymentPending orders while every group
   is frozen, resumes them all and times the drain to `Confirmed`, counting the CPU per process and the
   database and Redis connections each kind of process holds;
3. checks the payment ledger: exactly one capture per order.

The extra groups run as another fleet host's worker would: `ORDERFLOW_RELAY=off`, metrics on a port of their
own. The figures are written between the markers of docs/scaling.md's "Measured" section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import psutil
import requests

from app.config import Settings

from .backlog import (
    _cpu_by_role,
    _role,
    _role_deltas,
    _watch,
    captures_per_order,
    confirmed,
    write_backlog,
)
from .backlog import _engine as bench_engine
from .environment import (
    DOCS,
    ROOT,
    Database,
    commit,
    now_text,
    postgres_available,
    postgres_database,
    redis_server,
    sqlite_database,
)
from .load import ORDER_BODY
from .stack import BenchStack, free_ports, running_stack, stop_process, tail, wait_http

GROUPS = (1, 2, 3)
DEFAULT_BACKLOG = 4000
DEFAULT_ORDERS = 1000
PLACEMENT_CLIENTS = 8
DOCUMENT = DOCS / "scaling.md"
BEGIN, END = "<!-- measured: begin (python -m bench.scaling) -->", "<!-- measured: end -->"
ORDER = json.loads(ORDER_BODY)


def _say(message: str) -> None:
    print(f"[scaling] {message}", file=sys.stderr, flush=True)


# --- extra worker groups ------------------------------------------------------------------------------


def _worker_argv(settings: Settings) -> list[str]:
    from app.stack.supervisor import stack_processes

    return next(spec.argv for spec in stack_processes(settings) if spec.name == "worker")


@contextmanager
def extra_groups(stack: BenchStack, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` more worker groups beside the stack's own, as other hosts would run them: no relay, metrics
    on ports of their own, the same broker, database, Redis and payment service."""
    settings = Settings.from_env(stack.env)
    argv = _worker_argv(settings)
    started: list[subprocess.Popen[bytes]] = []
    ports = free_ports(count) if count else []
    try:
        for number, port in enumerate(ports, start=2):
            metrics = stack.log.parent / f"metrics-group{number}"
            metrics.mkdir(parents=True, exist_ok=True)
            env = dict(stack.env)
            env.update(
                {
                    "ORDERFLOW_RELAY": "off",
                    "WORKER_METRICS_PORT": str(port),
                    "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                    **{f"{kind.upper()}_URL": url for kind, url in stack.proxies.items()},
                }
            )
            log = stack.log.parent / f"worker-group{number}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [*argv, f"--hostname=group{number}@%h"], cwd=ROOT, env=env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            started.append(process)
            wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60, process=process, log=log)
        yield started
    finally:
        for process in started:
            stop_process(process, grace=20, group=True)


# --- connections ---------------------------------------------------------------------------------------


def _kind(process: psutil.Process, parents: dict[int, str]) -> str:
    try:
        info = {"pid": process.pid, "ppid": process.ppid(), "name": process.name(), "cmdline": process.cmdline()}
    except psutil.Error:
        return "gone"
    return _role(SimpleNamespace(info=info), parents)  # type: ignore[arg-type]


def _ports(url: str, default: int) -> int | None:
    if url.startswith("unix://"):
        return None
    return urlsplit(url).port or default


@dataclass
class Connections:
    """The most connections to the database and to Redis seen at once, per kind of process."""

    database: dict[str, int] = field(default_factory=dict)
    redis: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)

    def sample(self, roots: Sequence[int], db_port: int | None, redis_port: int | None) -> None:
        processes: list[psutil.Process] = []
        for root in roots:
            try:
                parent = psutil.Process(root)
                processes += [parent, *parent.children(recursive=True)]
            except psutil.Error:
                continue
        parents: dict[int, str] = {}
        for process in processes:
            try:
                parents[process.pid] = " ".join(process.cmdline())
            except psutil.Error:
                continue
        db_now: Counter[str] = Counter()
        redis_now: Counter[str] = Counter()
        kinds_now: Counter[str] = Counter()
        for process in processes:
            kind = _kind(process, parents)
            if kind in ("gone", "other processes", "bench driver", "PostgreSQL", "Redis"):
                continue
            kinds_now[kind] += 1
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.Error:
                continue
            for connection in connections:
                if not connection.raddr or connection.status != psutil.CONN_ESTABLISHED:
                    continue
                if connection.raddr.port == db_port:
                    db_now[kind] += 1
                elif connection.raddr.port == redis_port:
                    redis_now[kind] += 1
        for seen, now in ((self.database, db_now), (self.redis, redis_now), (self.processes, kinds_now)):
            for kind, number in now.items():
                seen[kind] = max(seen.get(kind, 0), number)


# --- the measurements ----------------------------------------------------------------------------------


@dataclass
class GroupDrain:
    groups: int
    count: int
    seconds: float
    done: int
    cpu_ms_per_job: float
    role_ms: dict[str, float]
    busy: float
    connections: Connections
    ledger: dict[int, int]

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def drain(stack: BenchStack, db: Database, groups: int, count: int, *, timeout: float) -> GroupDrain:
    settings = Settings.from_env(stack.env)
    engine = bench_engine(db)
    db_port = _ports(db.url, 5432) if not db.url.startswith("sqlite") else None
    redis_port = _ports(settings.redis_url, 6379)
    try:
        with extra_groups(stack, groups - 1) as extras, stack.chaos_client() as chaos:
            before = confirmed(engine)
            stack.pause_workers()
            for process in extras:
                os.killpg(process.pid, signal.SIGSTOP)
            try:
                chaos.disable("payment")
                ids = write_backlog(db, settings, count)
                chaos.enable("payment")
            finally:
                stack.resume_workers()
                for process in extras:
                    os.killpg(process.pid, signal.SIGCONT)
            connections = Connections()
            roots = [stack.process.pid, *(process.pid for process in extras)]

            def progress() -> int:
                connections.sample(roots, db_port, redis_port)
                return confirmed(engine) - before

            watched = _watch(count, progress, timeout=timeout)
            ledger = captures_per_order(stack, ids)
    finally:
        engine.dispose()
    cores = psutil.cpu_count() or 1
    return GroupDrain(
        groups, count, watched.seconds, watched.done, watched.cpu_ms_per_job, watched.role_ms_per_job(),
        watched.cpu_seconds / (watched.seconds * cores) if watched.seconds else 0.0, connections,
        dict(sorted(ledger.items())),
    )


@dataclass
class Placement:
    orders: int
    seconds: float
    statuses: dict[int, int]
    role_ms: dict[str, float]
    connections: Connections


def place(stack: BenchStack, db: Database, orders: int) -> Placement:
    """`orders` orders through the API, payment healthy, from PLACEMENT_CLIENTS clients at once; the CPU
    each kind of process spent on them (the workers' share is their notification work)."""
    settings = Settings.from_env(stack.env)
    db_port = _ports(db.url, 5432) if not db.url.startswith("sqlite") else None
    redis_port = _ports(settings.redis_url, 6379)
    connections = Connections()
    statuses: Counter[int] = Counter()
    local = threading.local()

    def one(_: int) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        return session.post(f"{stack.api}/api/orders", json=ORDER, timeout=30).status_code

    roles_before = _cpu_by_role()
    started = time.monotonic()
    with ThreadPoolExecutor(PLACEMENT_CLIENTS) as pool:
        futures = [pool.submit(one, i) for i in range(orders)]
        while not all(f.done() for f in futures):
            connections.sample([stack.process.pid], db_port, redis_port)
            time.sleep(0.25)
        statuses.update(f.result() for f in futures)
    seconds = time.monotonic() - started
    deltas = _role_deltas(roles_before)
    role_ms = {role: 1000 * value / orders for role, value in deltas.items() if role != "bench driver"}
    return Placement(orders, seconds, dict(statuses), role_ms, connections)


# --- the document --------------------------------------------------------------------------------------

ROLE_ORDER = ("order API", "Celery pool processes", "Celery main process", "PostgreSQL", "Redis", "simulators",
              "chaos proxy")


def _roles(role_ms: dict[str, float]) -> str:
    shown = [f"{role} {role_ms[role]:.2f}" for role in ROLE_ORDER if role_ms.get(role, 0.0) >= 0.01]
    return ", ".join(shown)


def _rest(role_ms: dict[str, float]) -> float:
    """CPU per order or job outside the stack's processes: the kernel's network and scheduling work, and
    whatever else the machine was running (the bench driver is left out)."""
    return max(0.0, sum(value for role, value in role_ms.items() if role not in ROLE_ORDER and role != "bench driver"))


def _connections_line(connections: Connections, kind: str) -> str:
    return (
        f"{connections.processes.get(kind, 0)} processes, at most {connections.database.get(kind, 0)} database "
        f"and {connections.redis.get(kind, 0)} Redis connections at once"
    )


def render(db: Database, placement: Placement, drains: list[GroupDrain], *, command: str) -> str:
    cores = psutil.cpu_count() or 1
    one = drains[0]
    lines = [
        f"Measured {now_text()} at commit `{commit()}` with `{command}` on {cores} cores; database: {db.note}.",
        "",
        f"**Placement**: {placement.orders} orders from {PLACEMENT_CLIENTS} clients at once, payment healthy, in "
        f"{placement.seconds:.1f} s; answers " + ", ".join(f"{k}: {v}" for k, v in sorted(placement.statuses.items()))
        + ".",
        "",
        "| process | CPU per order (ms) |",
        "|---|---|",
        *(f"| {role} | {placement.role_ms.get(role, 0.0):.2f} |" for role in ROLE_ORDER),
        f"| all of the stack | {sum(placement.role_ms.get(role, 0.0) for role in ROLE_ORDER):.2f} |",
        "",
        f"API connections under that load: {_connections_line(placement.connections, 'order API')}. "
        f"The kernel and the rest of the machine took {_rest(placement.role_ms):.2f} ms per order besides.",
        "",
        "**Backlog drain** of the same backlog with 1, 2 and 3 worker groups (each: one Celery main process and "
        "its prefork pool, the stack worker's options; the extra groups without the relay):",
        "",
        "| groups | pool processes | drain (jobs/s) | vs 1 group | CPU per job, whole machine (ms) | cores busy | "
        "database connections (workers) | Redis connections (workers) | one capture per order |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in drains:
        pools = d.connections.processes.get("Celery pool processes", 0)
        db_conns = d.connections.database.get("Celery pool processes", 0) + d.connections.database.get(
            "Celery main process", 0)
        redis_conns = d.connections.redis.get("Celery pool processes", 0) + d.connections.redis.get(
            "Celery main process", 0)
        exact = f"{d.ledger.get(1, 0)}/{d.count}"
        lines.append(
            f"| {d.groups} | {pools} | {d.rate:,.0f} | {d.rate / one.rate if one.rate else 0:.2f} | "
            f"{d.cpu_ms_per_job:.2f} | {d.busy:.0%} | {db_conns} | {redis_conns} | {exact} |"
        )
    lines += ["", "CPU per job by process (ms), per drain:", ""]
    lines += [f"- {d.groups} group{'s' if d.groups > 1 else ''}: {_roles(d.role_ms)}; kernel and rest of the "
              f"machine {_rest(d.role_ms):.2f}." for d in drains]
    cheapest = min((d for d in drains if d.cpu_ms_per_job), key=lambda d: d.cpu_ms_per_job, default=one)
    ceiling = cores * 1000 / cheapest.cpu_ms_per_job if cheapest.cpu_ms_per_job else 0.0
    lines += [
        "",
        f"With every process on one machine, a job costs at least {cheapest.cpu_ms_per_job:.2f} ms of CPU in all "
        f"(with {cheapest.groups} group{'s' if cheapest.groups > 1 else ''}), so {cores} cores cap the drain near "
        f"{ceiling:,.0f} jobs/s whatever the number of groups.",
    ]
    return "\n".join(lines)


def write_document(text: str, path: Path = DOCUMENT) -> None:
    current = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(current):
        raise SystemExit(f"{path} has no measured section ({BEGIN} ... {END})")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", current))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help=f"orders per drain ({DEFAULT_BACKLOG})")
    parser.add_argument("--orders", type=int, default=DEFAULT_ORDERS, help=f"orders placed ({DEFAULT_ORDERS})")
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    command = "python -m bench.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
    with ExitStack() as resources:
        target = resources.enter_context(redis_server())
        # A fleet shares one PostgreSQL: measure on it when it answers, else on the embedded SQLite.
        postgres, source = postgres_available()
        db = resources.enter_context(postgres_database(postgres, source) if postgres else sqlite_database())
        tmp = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="orderflow-scaling-")))
        _say(f"starting the stack; database: {db.note}")
        stack = resources.enter_context(running_stack(db, target, tmp / "var"))
        _say(f"placing {args.orders} orders")
        placement = place(stack, db, args.orders)
        drains = []
        for groups in GROUPS:
            _say(f"draining {args.backlog} orders with {groups} worker group(s)")
            drains.append(drain(stack, db, groups, args.backlog, timeout=600))
            d = drains[-1]
            _say(f"  {d.rate:.0f} jobs/s, {d.cpu_ms_per_job:.2f} ms CPU per job, ledger {d.ledger}")
            if d.done < d.count:
                _say(f"  not drained: {d.done}/{d.count}\n{tail(stack.log)}")
        text = render(db, placement, drains, command=command.strip())
    write_document(text, args.output)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
