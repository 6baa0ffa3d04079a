"""Benchmark 1: what the policies cost per call on the happy path, in this process.

Every contender wraps the same do-nothing call; its overhead is its time per call minus the bare call's.
Contenders are timed in interleaved rounds (each round times every contender once) and the median round
is kept, so a noisy second hurts all of them alike.

Then a real dependency call: a GET to a simulator in a process of its own, through the pipeline and the
HTTP transport, against the same GET made with a bare `requests.Session` (and with urllib3's pool used
directly), timed the same way.
"""

from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.adapters import redis_breaker_store
from app.adapters.redis_breaker_store import _ACQUIRE, RedisBreakerStore, connection_factory, pack_command
from app.policies import parse_policies
from app.resilience import (
    Bulkhead,
    CircuitBreaker,
    LocalBreakerStore,
    ResiliencePipeline,
    RetryPolicy,
    build_pipeline,
)

from .results import BenchmarkResult, Measurement
from .stack import free_ports, serving

Timer = Callable[[int], float]  # runs n calls, returns seconds


@dataclass(frozen=True)
class PolicyCounts:
    calls: int = 20_000  # per round, in-process contenders
    redis_calls: int = 2_000  # per round, contenders that talk to Redis
    rounds: int = 7
    http_calls: int = 100  # per round, contenders that make an HTTP request
    http_rounds: int = 15  # more, shorter rounds: a round trip is at the mercy of the machine's other work


def _timer(fn: Callable[[], Any]) -> Timer:
    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - started

    return run


def _noop(*_: Any) -> None:
    return None


def our_pipeline(*, store: Any = None) -> ResiliencePipeline[Any]:
    """Retry, attempt and total timeouts, bulkhead and circuit breaker, with the payment defaults."""
    policies = parse_policies("")
    pay = policies.dependencies["payment"]
    assert pay.circuit_breaker is not None and pay.bulkhead is not None
    cb = pay.circuit_breaker
    breaker = CircuitBreaker(
        "payment",
        failure_ratio=cb.failure_ratio,
        sampling_duration=cb.sampling_duration,
        minimum_throughput=cb.minimum_throughput,
        break_duration=cb.break_duration,
        probe_timeout=pay.attempt_timeout,
        store=store or LocalBreakerStore(),
    )
    return ResiliencePipeline(
        "payment",
        attempt_timeout=pay.attempt_timeout,
        total_timeout=pay.total_timeout,
        retry=RetryPolicy(
            max_retries=pay.retry.max_retries,
            base_delay=pay.retry.base_delay,
            max_delay=pay.retry.max_delay,
            backoff=pay.retry.backoff,
            jitter=pay.retry.jitter,
        ),
        breaker=breaker,
        bulkhead=Bulkhead(
            max_concurrency=pay.bulkhead.max_concurrency, max_queue=pay.bulkhead.max_queue, name="payment"
        ),
    )


def full_payment_pipeline(*, store: Any = None) -> ResiliencePipeline[Any]:
    """The `[dependencies.payment]` section as the API builds it: the above plus the retry budget."""
    return build_pipeline("payment", parse_policies("").dependencies["payment"], store=store, hedging=False)


def tenacity_call() -> Callable[[], Any]:
    import tenacity

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(2),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=2.0),
        retry=tenacity.retry_if_exception_type(OSError),
        reraise=True,
    )
    def call() -> None:
        return None

    return call


def pybreaker_call() -> Callable[[], Any]:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=10, reset_timeout=30)
    return lambda: breaker.call(_noop)


def measure(timers: dict[str, Timer], *, calls: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each timer over interleaved rounds (after one warm-up round)."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for round_no in range(rounds + 1):
        for name, timer in timers.items():
            gc.collect()
            elapsed = timer(calls) / calls
            if round_no:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(
    result: BenchmarkResult,
    *,
    counts: PolicyCounts = PolicyCounts(),
    redis_url: str | None = None,
    redis_prefix: str = "bench",
    redis_note: str = "",
    previous: BenchmarkResult | None = None,
) -> BenchmarkResult:
    ours = our_pipeline()
    full = full_payment_pipeline()
    timers: dict[str, Timer] = {
        "bare": _timer(lambda: _noop(None)),
        "ours": _timer(lambda: ours.execute(_noop)),
        "ours_full": _timer(lambda: full.execute(_noop)),
        "tenacity": _timer(tenacity_call()),
        "pybreaker": _timer(pybreaker_call()),
    }
    per_call = measure(timers, calls=counts.calls, rounds=counts.rounds)
    bare = per_call["bare"]
    overhead = {name: max(0.0, t - bare) * 1e6 for name, t in per_call.items() if name != "bare"}
    command = "python -m bench policy"
    result.raw["per_call_us"] = {name: t * 1e6 for name, t in per_call.items()}
    result.add(
        Measurement(
            "pipeline overhead per call: retry + attempt/total timeouts + bulkhead + local breaker",
            "µs",
            overhead["ours"],
            overhead["tenacity"],
            "tenacity 9 `@retry` (2 attempts, exponential jitter)",
            command,
            "<= 1/4 of tenacity",
            0.25,
            "lower",
        )
    )
    result.add(
        Measurement(
            "the same plus the retry budget (the payment section as the API builds it)",
            "µs",
            overhead["ours_full"],
            overhead["tenacity"],
            "tenacity 9 `@retry`",
            command,
            "",
            None,
            "none",
        )
    )
    result.add(
        Measurement(
            "pipeline overhead per call vs pybreaker",
            "µs",
            overhead["ours"],
            overhead["pybreaker"],
            "pybreaker `CircuitBreaker.call`",
            command,
            "",
            None,
            "none",
        )
    )
    result.notes.append(
        f"Median of {counts.rounds} interleaved rounds of {counts.calls:,} calls of a do-nothing function; "
        f"overhead = time per call minus the bare call's ({bare * 1e9:.0f} ns)."
    )
    if redis_url is not None:
        _shared(result, counts=counts, redis_url=redis_url, redis_prefix=redis_prefix, command=command)
    if counts.http_calls:
        _http(result, counts=counts, redis_url=redis_url, redis_prefix=redis_prefix, command=command,
              previous=previous)
    if redis_url is not None and redis_note:
        result.notes.append(f"Redis: {redis_note}.")
    return result


def _acquire_script_call(store: RedisBreakerStore) -> tuple[list[str], list[str]]:
    """The keys and arguments the store sends for a first attempt with the circuit closed, no budget."""
    open_, isolated, tripped, probe, _, budget = store._keys_of("payment")  # noqa: SLF001 - the store's layout
    keys = [open_, isolated, tripped, probe, budget]
    return keys, ["1", "0", "0", "0", "0", "0", "5000", "bench:1"]


class _WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _packed(connection: Any, command: list[bytes]) -> Callable[[], Any]:
    """One command packed beforehand, sent on a connection of its own: how the store sends its admission."""

    def call() -> Any:
        connection.send_packed_command(command, False)
        return connection.read_response()

    return call


def _shared(
    result: BenchmarkResult, *, counts: PolicyCounts, redis_url: str, redis_prefix: str, command: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=0.05, socket_connect_timeout=0.05)
    store = RedisBreakerStore(client, key_prefix=f"{redis_prefix}:policy")
    full_store = RedisBreakerStore(client, key_prefix=f"{redis_prefix}:policy-full")
    shared = our_pipeline(store=store)
    shared_full = full_payment_pipeline(store=full_store)
    ping_client = redis.Redis.from_url(redis_url, socket_timeout=0.05, socket_connect_timeout=0.05)
    # The acquire script on its own, sent as the store sends it but without the store and pipeline around
    # it: splits the store's cost into the round trip with the script and what the Python side adds. The
    # floor: a PING and an empty script sent the same way.
    script_keys, script_args = _acquire_script_call(store)
    acquire_sha = ping_client.script_load(_ACQUIRE)
    empty_sha = ping_client.script_load("return 0")
    lean = connection_factory(ping_client)()
    lean.connect()
    # A timed-out call is decided locally, which is cheaper than Redis: count them, the note says so.
    went_local = _WarningCount()
    logging.getLogger(redis_breaker_store.__name__).addHandler(went_local)
    timers: dict[str, Timer] = {
        "bare": _timer(lambda: _noop(None)),
        "ping": _timer(ping_client.ping),
        "ping_packed": _timer(_packed(lean, pack_command("PING"))),
        "empty_packed": _timer(_packed(lean, pack_command(
            "EVALSHA", empty_sha, str(len(script_keys)), *script_keys, *script_args))),
        "evalsha": _timer(_packed(lean, pack_command(
            "EVALSHA", acquire_sha, str(len(script_keys)), *script_keys, *script_args))),
        "shared": _timer(lambda: shared.execute(_noop)),
        "shared_full": _timer(lambda: shared_full.execute(_noop)),
    }
    try:
        per_call = measure(timers, calls=counts.redis_calls, rounds=counts.rounds)
    finally:
        logging.getLogger(redis_breaker_store.__name__).removeHandler(went_local)
        store.close()
        full_store.close()
        lean.disconnect()
        ping_client.close()
    bare = per_call["bare"]
    result.raw["shared_per_call_us"] = {name: t * 1e6 for name, t in per_call.items()}
    us = {name: (t - bare) * 1e6 for name, t in per_call.items()}
    ping = us["ping"]
    result.add(
        Measurement(
            "shared breaker (RedisBreakerStore) cost per call",
            "µs",
            us["shared"],
            ping,
            "one Redis PING (redis-py, same socket settings)",
            command,
            "<= 1 synchronous Redis round trip",
            1.0,
            "lower",
            note="pipeline as above, circuit state in Redis",
        )
    )
    for label, key in (
        ("of which: the store's acquire script alone (one EVALSHA, packed, on a connection of its own)", "evalsha"),
        ("floor: an EVALSHA of an empty script, sent the same way", "empty_packed"),
        ("floor: a PING sent the same way", "ping_packed"),
    ):
        result.add(Measurement(label, "µs", us[key], ping, "one Redis PING", command, "", None, "none"))
    result.notes.append(
        f"Where the shared breaker's cost goes: the round trip with the acquire script costs {us['evalsha']:.0f} µs "
        f"and the Python side (pipeline and `RedisBreakerStore._admit`) adds {us['shared'] - us['evalsha']:.0f} µs. "
        "The store sends one EVALSHA per attempt, packed once per circuit, flags and thread, on the thread's own "
        "connection (app/adapters/redis_breaker_store.py `RedisBreakerStore._call`); with the circuit closed the "
        "script (`_ACQUIRE`) reads the three flag keys with one MGET and answers a bare integer; with the retry "
        "budget on it also reads TIME and bumps one hash field (HINCRBY; a bucket's first write prunes old "
        "buckets and sets PEXPIRE). Outcomes cost no round trip (batched by the flusher thread). The floor on "
        f"this machine: a PING sent the same way costs {us['ping_packed']:.0f} µs "
        f"({us['ping_packed'] / ping:.2f} of redis-py's, whose generic command path - pool checkout with a "
        f"readiness check (a second recv), packing, instrumentation, response callbacks - is the rest), "
        f"an empty script {us['empty_packed']:.0f} µs "
        f"({us['empty_packed'] / us['ping_packed']:.2f} packed PINGs)."
        + (f" Redis did not answer within the 50 ms socket timeout {went_local.count} time(s): the calls of "
           "the following second were decided locally." if went_local.count else "")
    )
    result.add(
        Measurement(
            "shared breaker + shared retry budget (the API's payment pipeline)",
            "µs",
            us["shared_full"],
            ping,
            "one Redis PING",
            command,
            "<= 1 synchronous Redis round trip",
            1.0,
            "lower",
        )
    )


HTTP_GOAL = 1.2  # the pipeline, the watchdog and the transport add at most a fifth to a bare requests call


def _http_timer(fn: Callable[[], Any]) -> Callable[[int], tuple[float, float]]:
    """Runs n calls; returns (wall seconds, CPU seconds of this process)."""

    def run(n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    return run


def _measure_http(
    timers: dict[str, Callable[[int], tuple[float, float]]], *, calls: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds per call of each timer over interleaved rounds (after a warm-up round)."""
    wall: dict[str, list[float]] = {name: [] for name in timers}
    cpu: dict[str, list[float]] = {name: [] for name in timers}
    for round_no in range(rounds + 1):
        for name, timer in timers.items():
            gc.collect()
            spent_wall, spent_cpu = timer(calls)
            if round_no:
                wall[name].append(spent_wall / calls)
                cpu[name].append(spent_cpu / calls)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def _http(
    result: BenchmarkResult,
    *,
    counts: PolicyCounts,
    redis_url: str | None,
    redis_prefix: str,
    command: str,
    previous: BenchmarkResult | None,
) -> None:
    import requests
    import urllib3

    from app.adapters.http import HttpTransport

    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "simulators", "inventory", "--host", "127.0.0.1", "--port", str(port)]
    url = f"{base}/stock/1"
    local = full_payment_pipeline()
    shared: ResiliencePipeline[Any] | None = None
    store: Any = None
    client: Any = None
    if redis_url is not None:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=0.05, socket_connect_timeout=0.05)
        store = RedisBreakerStore(client, key_prefix=f"{redis_prefix}:policy-http")
        shared = full_payment_pipeline(store=store)
    with serving(argv, f"{base}/health"):
        session = requests.Session()
        transport = HttpTransport()
        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False)

        def through(pipeline: ResiliencePipeline[Any]) -> Callable[[], Any]:
            return lambda: pipeline.execute(lambda call: transport.request("GET", url, deadline=call.deadline))

        calls: dict[str, Callable[[], Any]] = {
            "requests": lambda: session.get(url, timeout=5),
            "pipeline_local": through(local),
            "transport": lambda: transport.request("GET", url, deadline=time.monotonic() + 5),
            "urllib3": lambda: pool.request("GET", "/stock/1", timeout=5),
        }
        if shared is not None:
            calls["pipeline"] = through(shared)
        for name, call in calls.items():  # every contender gets the same answer
            answer = call()
            status = getattr(answer, "status", None) or getattr(answer, "status_code", None)
            if status != 200:
                raise RuntimeError(f"{name}: GET {url} answered {status}")
        try:
            wall, cpu = _measure_http(
                {name: _http_timer(call) for name, call in calls.items()},
                calls=counts.http_calls,
                rounds=counts.http_rounds,
            )
        finally:
            transport.close()
            session.close()
            pool.close()
            if store is not None:
                store.close()
                client.close()
    us = {name: t * 1e6 for name, t in wall.items()}
    cpu_us = {name: t * 1e6 for name, t in cpu.items()}
    result.raw["http_per_call_us"] = us
    result.raw["http_cpu_per_call_us"] = cpu_us
    bare = "a bare `requests.Session().get`, same endpoint"
    goal = "<= 1.2x bare requests"
    result.add(
        Measurement(
            "dependency call: GET through the payment pipeline (local breaker) and the HTTP transport, time per call",
            "µs", us["pipeline_local"], us["requests"], bare, command, goal, HTTP_GOAL, "lower",
        )
    )
    result.add(
        Measurement(
            "the same, CPU time of the calling process per call",
            "µs", cpu_us["pipeline_local"], cpu_us["requests"], bare, command, goal, HTTP_GOAL, "lower",
        )
    )
    if "pipeline" in us:
        result.add(
            Measurement(
                "the same through the API's payment pipeline (shared breaker and retry budget in Redis), "
                "time per call",
                "µs", us["pipeline"], us["requests"], bare, command, "", None, "none",
            )
        )
    result.add(
        Measurement(
            "of which: the HTTP transport alone, CPU time per call",
            "µs", cpu_us["transport"], cpu_us["requests"], bare, command, "", None, "none",
        )
    )
    result.add(
        Measurement(
            "urllib3's pool used directly (`HTTPConnectionPool.request`), CPU time per call",
            "µs", cpu_us["urllib3"], cpu_us["requests"], bare, command, "", None, "none",
        )
    )
    shared_text = (
        f", through the API's payment pipeline {us['pipeline']:.0f} µs (one Redis round trip more, the shared "
        "breaker's cost measured above)" if "pipeline" in us else ""
    )
    result.notes.append(
        f"Dependency call: `GET /stock/1` of the inventory simulator, a process of its own on 127.0.0.1, over "
        f"one keep-alive connection per client; median of {counts.http_rounds} interleaved rounds of "
        f"{counts.http_calls} calls each way. Time per call is the round trip, the simulator's work included: "
        f"bare requests {us['requests']:.0f} µs, through the pipeline with a local breaker "
        f"{us['pipeline_local']:.0f} µs{shared_text}, the transport alone {us['transport']:.0f} µs, urllib3's "
        f"pool {us['urllib3']:.0f} µs. CPU time is what the calling process spends per call (all its threads): "
        f"the client code's own cost, which the machine's other work does not inflate as it does the round trip. "
        f"urllib3's pool used directly spends {cpu_us['requests'] - cpu_us['urllib3']:.0f} µs less per call than "
        f"requests, {cpu_us['transport'] - cpu_us['urllib3']:.0f} µs less than the transport."
    )
    before = previous.raw.get("http_cpu_per_call_us") if previous is not None else None
    before_wall = previous.raw.get("http_per_call_us") if previous is not None else None
    if previous is not None and before and before_wall:
        through_shared = (
            f"through the API's payment pipeline {before_wall['pipeline']:.0f} µs per call and "
            f"{before['pipeline']:.0f} µs of CPU, " if "pipeline" in before else ""
        )
        result.notes.append(
            f"The run before this one (commit `{previous.commit}`, {previous.date}): {through_shared}the "
            f"transport alone {before_wall['transport']:.0f} µs per call and {before['transport']:.0f} µs of CPU, "
            f"bare requests {before_wall['requests']:.0f} µs and {before['requests']:.0f} µs of CPU."
        )
