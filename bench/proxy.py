"""Benchmark 5: what the chaos proxy adds to a small keep-alive request with no toxic.

A simulator and the chaos proxy run as processes of their own; one client times the same small request
(`GET /stock/1`) over one keep-alive connection straight to the simulator and over one through the proxy,
in alternating batches, and compares medians.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import time

from .results import BenchmarkResult, Measurement
from .stack import free_ports, serving

GOAL_US = 100.0


def _batch(conn: http.client.HTTPConnection, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("GET", "/stock/1")
        response = conn.getresponse()
        response.read()
        samples.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET /stock/1 answered {response.status}")
    return samples


def run(result: BenchmarkResult, *, requests_per_batch: int = 500, batches: int = 10) -> dict[str, float]:
    sim, control, listen = free_ports(3)
    py = sys.executable
    with (
        serving(
            [py, "-m", "simulators", "inventory", "--host", "127.0.0.1", "--port", str(sim)],
            f"http://127.0.0.1:{sim}/health",
        ),
        serving(
            [py, "-m", "chaosproxy", "--host", "127.0.0.1", "--port", str(control)],
            f"http://127.0.0.1:{control}/version",
        ),
    ):
        from chaosproxy.client import ToxiproxyClient

        with ToxiproxyClient(f"http://127.0.0.1:{control}") as chaos:
            chaos.create_proxy("inventory", f"127.0.0.1:{listen}", f"127.0.0.1:{sim}")
        direct = http.client.HTTPConnection("127.0.0.1", sim, timeout=5)
        proxied = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        try:
            _batch(direct, 200)  # warm-up: connections open, code paths hot
            _batch(proxied, 200)
            direct_samples: list[float] = []
            proxied_samples: list[float] = []
            for _ in range(batches):
                direct_samples += _batch(direct, requests_per_batch)
                proxied_samples += _batch(proxied, requests_per_batch)
        finally:
            direct.close()
            proxied.close()
    direct_us = statistics.median(direct_samples) * 1e6
    proxied_us = statistics.median(proxied_samples) * 1e6
    added = proxied_us - direct_us
    command = "python -m bench proxy"
    result.add(
        Measurement(
            "median latency of GET /stock/1 through the proxy",
            "µs",
            proxied_us,
            direct_us,
            "direct connection to the same simulator",
            command,
        )
    )
    result.add(
        Measurement(
            "added latency per request (median, no toxic)",
            "µs",
            added,
            GOAL_US,
            "the goal's bound (100 µs)",
            command,
            "< 100 µs",
            1.0,
            "lower",
        )
    )
    p90_added = (
        statistics.quantiles(proxied_samples, n=10)[-1] - statistics.quantiles(direct_samples, n=10)[-1]
    ) * 1e6
    result.notes.append(
        f"{batches} alternating batches of {requests_per_batch} requests each way over one keep-alive "
        f"connection (Python http.client); the p90 difference is {p90_added:.0f} µs."
    )
    return {"direct_us": direct_us, "proxied_us": proxied_us, "added_us": added}
