"""Benchmark 3: placement with the payment circuit open, and with payment hanging until the circuit opens."""

from __future__ import annotations

import time

from app.policies import load_policies

from .environment import PLOTS, ROOT, Database
from .load import LoadResult, run_wrk
from .placement import LoadOptions, non_2xx_row
from .plots import latency_plot
from .results import BenchmarkResult, Measurement
from .stack import BenchStack

HANG_TOXIC = "bench_hang"


def run(
    result: BenchmarkResult,
    stack: BenchStack,
    db: Database,
    *,
    options: LoadOptions | None = None,
    hang_seconds: float = 15.0,
) -> dict[str, LoadResult]:
    """One database's part of the benchmark: its rows are grouped under the database's name."""
    options = options or LoadOptions()
    group = db.kind
    url = f"{stack.api}/api/orders"
    payment = load_policies(ROOT / "resilience.toml").dependencies["payment"]
    total_ms = payment.total_timeout * 1000
    run_wrk(url, label="warm-up", duration=options.warmup, connections=options.connections)
    healthy = run_wrk(url, label="healthy", duration=options.duration, connections=options.connections)

    stack.isolate("payment")
    try:
        isolated = run_wrk(
            url, label="circuit open", duration=options.duration, connections=options.connections
        )
    finally:
        stack.reset("payment")
    result.add(
        Measurement(
            "circuit open (isolated): p99 latency",
            "ms",
            isolated.p(99),
            healthy.p(99),
            "healthy payment p99, same minute",
            isolated.command,
            "<= healthy p99",
            1.0,
            "lower",
            group=group,
        )
    )
    result.add(
        Measurement(
            "circuit open (isolated): orders/s",
            "orders/s",
            isolated.ok_per_second,
            healthy.ok_per_second,
            "healthy payment, same minute",
            isolated.command,
            group=group,
        )
    )
    bound = result.add(
        Measurement(
            "circuit open (isolated): slowest request",
            "ms",
            isolated.max_ms,
            250.0,
            "the contract's bound with the circuit open (250 ms)",
            isolated.command,
            "<= 250 ms",
            1.0,
            "lower",
            group=group,
        )
    )
    result.add(
        non_2xx_row(
            "circuit open (isolated)", isolated, healthy, baseline_name="healthy payment, same minute", group=group
        )
    )

    hanging = _hanging(stack, url, options, hang_seconds)
    slowest = result.add(
        Measurement(
            "payment hanging (chaos `timeout` toxic) until the circuit opens: slowest request",
            "ms",
            hanging.max_ms,
            total_ms,
            f"payment total_timeout ({payment.total_timeout:g} s)",
            hanging.command,
            "no request slower than total_timeout",
            1.0,
            "lower",
            group=group,
        )
    )
    result.add(
        Measurement(
            "payment hanging: p99 latency",
            "ms",
            hanging.p(99),
            healthy.p(99),
            "healthy payment p99",
            hanging.command,
            group=group,
        )
    )
    result.add(
        Measurement(
            "payment hanging: orders/s",
            "orders/s",
            hanging.ok_per_second,
            healthy.ok_per_second,
            "healthy payment",
            hanging.command,
            group=group,
        )
    )
    for load in (isolated, hanging):
        if load.non_2xx or load.socket_errors or load.timeouts:
            result.notes.append(
                f"{group}, {load.label}: {load.non_2xx} non-2xx, {load.socket_errors} socket errors, "
                f"{load.timeouts} wrk timeouts."
            )
    if not any(note.startswith("Circuit open: ") for note in result.notes):
        result.notes.append(
            f"Circuit open: `POST /admin/circuits/payment/isolate`, then {options.duration:g} s of wrk. "
            "Hanging: a `timeout` toxic (timeout 0: hold the data) on the payment proxy's upstream for "
            f"{hang_seconds:g} s of wrk (--timeout 15 s), starting with the circuit closed; the requests caught "
            "before the circuit opens "
            f"wait out attempt_timeout {payment.attempt_timeout:g} s, a retry, and the rest of total_timeout "
            f"{payment.total_timeout:g} s counted from the request's start, less the reserve kept for the work "
            "after the call (app/services/ordering.py `PAYMENT_RESERVE`): the order's own work before the call "
            "(catalog, inventory, the INSERT) is paid out of the payment's time."
        )
    if slowest.met is False:
        result.notes.append(
            f"{group}: the slowest request took {hanging.max_ms - total_ms:.0f} ms longer than total_timeout: the "
            "payment call ends `PAYMENT_RESERVE` before total_timeout counted from the request's start "
            "(app/services/ordering.py `OrderPlacement.payment_deadline`), so the work after it (the "
            "attempt's transaction in `OrderPlacement._pay_in_real_time`, the response) took longer than "
            "the reserve, or the request waited in gunicorn before its clock started. The contract's bound "
            f"for the whole request, request_deadline + 1 s, held (slowest {hanging.max_ms / 1000:.2f} s)."
        )
    if bound.met is False:
        result.notes.append(
            f"{group}: with the circuit open, requests passed the contract's 250 ms (p99 {isolated.p(99):.0f} ms, "
            f"slowest {isolated.max_ms:.0f} ms). With 16 connections on 2 cores the latency is mostly "
            "queueing behind the other requests: each one still reads the circuit state from Redis "
            "(app/adapters/payment_client.py `PaymentClient.circuit_break_until` -> `CircuitBreaker.snapshot` -> "
            "the `_ADMIN` script), makes the inventory GET (through the hedging policy, which starts a thread "
            "per attempt, and the shared circuit's admission script) and the INSERT transaction (a pooled "
            "checkout with its ping, three statements, the commit), and the cores are shared with wrk, "
            "the database, Redis, the simulators and the chaos proxy. The catalog comes from a per-process copy "
            "and the job is stored due at the break's end (isolated: 5 s later, when a worker would look "
            "again), so no catalog read, no broker message and no immediate deferral by a worker is paid "
            "per order."
        )
    plot = f"degraded-{db.slug}.png"
    latency_plot(
        PLOTS / plot,
        title=f"Order placement on {group} with payment degraded",
        series={"healthy": healthy, "circuit open": isolated, "payment hanging": hanging},
    )
    result.plots.append(f"bench/{plot}")
    return {"healthy": healthy, "isolated": isolated, "hanging": hanging}


def _hanging(stack: BenchStack, url: str, options: LoadOptions, seconds: float) -> LoadResult:
    with stack.chaos_client() as chaos:
        chaos.add_toxic(
            "payment", type="timeout", name=HANG_TOXIC, stream="upstream", attributes={"timeout": 0}
        )
        try:
            return run_wrk(
                url, label="payment hanging", duration=seconds, connections=options.connections, timeout=15.0
            )
        finally:
            chaos.remove_toxic("payment", HANG_TOXIC)
            time.sleep(0.2)
            stack.reset("payment")
