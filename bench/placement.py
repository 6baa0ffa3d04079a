"""Benchmark 2: order placement throughput and latency against a naive endpoint served the same way, on the
database the stack runs on (`python -m bench` runs it on SQLite and on PostgreSQL, one stack each)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sqlalchemy import func, select

from . import profiling
from .environment import PLOTS, ROOT, Database, binary
from .load import LoadResult, run_wrk
from .plots import latency_plot
from .results import BenchmarkResult, Measurement
from .stack import BenchStack, free_ports, stop_process, wait_http

REAL_TIME_PAYMENTS = "RealTimePayments"
THROUGHPUT_GOAL = 0.9  # of the naive baseline's orders/s, healthy and flag off, on each database


@dataclass(frozen=True)
class LoadOptions:
    duration: float = 12.0
    warmup: float = 3.0
    connections: int = 16
    profile_seconds: float = 8.0
    heavy_connections: int = 64  # the second load: 0 non-2xx under 16 and under 64 connections
    heavy_duration: float = 8.0


@contextmanager
def baseline_server(stack: BenchStack) -> Iterator[str]:
    """The baseline app under gunicorn gthread, 2 processes x 8 threads, like the order API."""
    port = free_ports(1)[0]
    env = dict(stack.env)
    env.update({"INVENTORY_URL": stack.proxies["inventory"], "PAYMENT_URL": stack.proxies["payment"]})
    log = stack.log.parent / "baseline.log"
    argv = [
        binary("gunicorn"),
        "-k",
        "gthread",
        "-w",
        "2",
        "--threads",
        "8",
        "--keep-alive",
        "5",
        "--log-level",
        "warning",
        "-b",
        f"127.0.0.1:{port}",
        "bench.baseline_app:create_app()",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", timeout=30, process=process, log=log)
            yield url
        finally:
            stop_process(process, grace=10)


def pending_orders(db: Database) -> int:
    from app.adapters.db import make_engine
    from app.adapters.sql.tables import orders

    engine = make_engine(db.url, schema=db.schema, pool_size=1)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(orders).where(orders.c.status == "PaymentPending")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def wait_drained(db: Database, *, timeout: float) -> int:
    """Wait until the workers have no PaymentPending order left (or `timeout`); returns what is left."""
    deadline = time.monotonic() + timeout
    left = pending_orders(db)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = pending_orders(db)
    return left


def compare(ours_url: str, base_url: str, options: LoadOptions) -> tuple[LoadResult, LoadResult]:
    """Warm both up, then load ours and the baseline one after the other, within the same minute."""
    for url in (ours_url, base_url):
        run_wrk(url, label="warm-up", duration=options.warmup, connections=options.connections)
    ours = run_wrk(ours_url, label="ours", duration=options.duration, connections=options.connections)
    base = run_wrk(base_url, label="baseline", duration=options.duration, connections=options.connections)
    return ours, base


def _rows(
    result: BenchmarkResult,
    case: str,
    ours: LoadResult,
    base: LoadResult,
    *,
    baseline_name: str,
    group: str,
) -> Measurement:
    """The case's rows; returns the throughput row (the one with the goal)."""
    throughput = result.add(
        Measurement(
            f"{case}: orders/s",
            "orders/s",
            ours.ok_per_second,
            base.ok_per_second,
            baseline_name,
            ours.command,
            f">= {THROUGHPUT_GOAL:.0%} of the baseline",
            THROUGHPUT_GOAL,
            "higher",
            group=group,
        )
    )
    for p in (50, 99):
        result.add(
            Measurement(f"{case}: p{p} latency", "ms", ours.p(p), base.p(p), baseline_name, ours.command,
                        group=group)
        )
    result.add(non_2xx_row(case, ours, base, baseline_name=baseline_name, group=group))
    for load in (ours, base):
        if load.socket_errors or load.timeouts:
            result.notes.append(
                f"{group}, {case}, {load.label}: {load.socket_errors} socket errors, {load.timeouts} timeouts "
                "(not counted as orders)."
            )
    return throughput


def non_2xx_row(
    case: str, ours: LoadResult, base: LoadResult | None, *, baseline_name: str, group: str
) -> Measurement:
    """Answers other than 2xx to valid orders: the goal is none, whatever the baseline answered."""
    return Measurement(
        f"{case}: non-2xx answers",
        "",
        float(ours.non_2xx),
        None if base is None else float(base.non_2xx),
        baseline_name,
        ours.command,
        "0 non-2xx answers",
        0.0,
        "at_most",
        note=f"of {ours.requests:,} requests" + ("" if base is None else f", baseline of {base.requests:,}"),
        group=group,
    )


def run(
    result: BenchmarkResult,
    stack: BenchStack,
    db: Database,
    *,
    options: LoadOptions = LoadOptions(),
    profile: bool = True,
) -> dict[str, LoadResult]:
    ours_url = f"{stack.api}/api/orders"
    loads: dict[str, LoadResult] = {}
    group = db.kind
    with baseline_server(stack) as base_url:
        ours, base = compare(ours_url, f"{base_url}/healthy", options)
        loads.update({"healthy_ours": ours, "healthy_base": base})
        healthy = _rows(
            result,
            "(a) healthy payment",
            ours,
            base,
            baseline_name=f"naive Flask: inventory GET + payment POST (requests), same writes, {group}",
            group=group,
        )
        plot = f"placement-healthy-{db.slug}.png"
        latency_plot(
            PLOTS / plot,
            title=f"Order placement on {group}, healthy payment (2 x 8 gthread)",
            series={"OrderFlow": ours, "naive baseline": base},
        )
        result.plots.append(f"bench/{plot}")
        if profile and healthy.met is False:
            result.notes += _profile(stack, ours_url, options, f"{group} (a)")

        stack.set_flag(REAL_TIME_PAYMENTS, False)
        try:
            ours, base = compare(ours_url, f"{base_url}/deferred", options)
            loads.update({"deferred_ours": ours, "deferred_base": base})
            flag_off = _rows(
                result,
                "(b) flag RealTimePayments off",
                ours,
                base,
                baseline_name=f"naive Flask: inventory GET + same INSERTs + one Celery enqueue, {group}",
                group=group,
            )
            plot = f"placement-flag-off-{db.slug}.png"
            latency_plot(
                PLOTS / plot,
                title=f"Order placement on {group}, RealTimePayments off",
                series={"OrderFlow": ours, "naive baseline": base},
            )
            result.plots.append(f"bench/{plot}")
            if profile and flag_off.met is False:
                result.notes += _profile(stack, ours_url, options, f"{group} (b)")
        finally:
            stack.set_flag(REAL_TIME_PAYMENTS, True)
    loads.update(heavy(result, stack, group=group, options=options))
    if any(note.startswith("wrk: ") for note in result.notes):
        return loads
    result.notes.append(
        f"wrk: 1 thread, {options.connections} keep-alive connections, {options.duration:g} s per run "
        "after a "
        f'{options.warmup:g} s warm-up of each; body `{{"customer_id": 7, "lines": [{{"product_id": 1, '
        '"quantity": 1}]}`. The stack\'s Celery workers run throughout (relay, notifications, and in (b) the '
        "payment jobs of both ours' and the baseline's orders). Each database has a stack of its own (what "
        "`make run` starts), and the baseline runs on the same database as ours, beside it. (c): ours alone, "
        f"{options.heavy_connections} connections, {options.heavy_duration:g} s in each mode, right after (b), "
        "the circuit isolated for the third."
    )
    return loads


def _profile(stack: BenchStack, url: str, options: LoadOptions, case: str) -> list[str]:
    workers = stack.api_workers()
    if not workers or not profiling.available():
        return [f"{case}: no profile (py-spy or the API processes not found)."]
    _, lines = profiling.profile_while(
        workers[0],
        lambda: run_wrk(
            url, label="profiled", duration=options.profile_seconds, connections=options.connections
        ),
        seconds=options.profile_seconds,
    )
    return [f"{case} profile of one API process under the same load (py-spy): " + "; ".join(lines)]


def heavy(result: BenchmarkResult, stack: BenchStack, *, group: str, options: LoadOptions) -> dict[str, LoadResult]:
    """Ours alone under `heavy_connections` connections in each mode (healthy, flag off, circuit open): every
    valid order must still get a 2xx."""
    url = f"{stack.api}/api/orders"
    connections = options.heavy_connections
    loads: dict[str, LoadResult] = {}

    def load(case: str, key: str) -> None:
        ours = run_wrk(url, label=case, duration=options.heavy_duration, connections=connections)
        loads[key] = ours
        row = non_2xx_row(f"(c) {connections} connections, {case}", ours, None, baseline_name="none", group=group)
        result.add(replace(row, note=f"{row.note}; {ours.ok_per_second:,.0f} orders/s, p99 {ours.p(99):,.0f} ms, "
                                     f"slowest {ours.max_ms:,.0f} ms"))

    load("healthy payment", "heavy_healthy")
    stack.set_flag(REAL_TIME_PAYMENTS, False)
    try:
        load("flag RealTimePayments off", "heavy_flag_off")
    finally:
        stack.set_flag(REAL_TIME_PAYMENTS, True)
    stack.isolate("payment")
    try:
        load("circuit open (isolated)", "heavy_circuit_open")
    finally:
        stack.reset("payment")
    return loads
