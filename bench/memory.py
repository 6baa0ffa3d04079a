"""Benchmark 6: resident memory of an API process and a worker process, and whether it grows.

Each round is a healthy-payment load on the API and a backlog drain on the workers; RSS is read after each.
Round 3 against round 1 tells growth; the first round's pools, caches and imports are the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backlog import drain_ours
from .environment import PLOTS, Database
from .load import run_wrk
from .plots import bars_plot
from .results import BenchmarkResult, Measurement
from .stack import BenchStack, rss_mib

GROWTH_LIMIT = 1.05  # within 5 % of round 1


@dataclass(frozen=True)
class Rss:
    api: float  # the larger of the gunicorn workers
    worker: float  # the larger of the Celery pool processes

    @classmethod
    def of(cls, stack: BenchStack) -> Rss:
        api = max((rss_mib(pid) for pid in stack.api_workers()), default=0.0)
        pool = stack.worker_processes()[1:]
        return cls(api, max((rss_mib(pid) for pid in pool), default=0.0))


def run(
    result: BenchmarkResult,
    stack: BenchStack,
    db: Database,
    *,
    rounds: int = 3,
    load_seconds: float = 8.0,
    backlog: int = 500,
    after: dict[str, Rss] | None = None,
) -> list[Rss]:
    command = f"python -m bench memory (x{rounds}: wrk {load_seconds:g} s + drain {backlog})"
    seen: list[Rss] = []
    for _ in range(rounds):
        run_wrk(f"{stack.api}/api/orders", label="memory round", duration=load_seconds)
        drain_ours(stack, db, backlog, timeout=300, profile_seconds=0.0)
        seen.append(Rss.of(stack))
    for name, rss in (after or {}).items():
        result.add(Measurement(f"API process RSS after {name}", "MiB", rss.api, None, "", "python -m bench"))
        result.add(
            Measurement(f"worker process RSS after {name}", "MiB", rss.worker, None, "", "python -m bench")
        )
    first, last = seen[0], seen[-1]
    result.add(
        Measurement(
            f"API process RSS after round {rounds}",
            "MiB",
            last.api,
            first.api,
            "after round 1",
            command,
            "no growth (<= +5%)",
            GROWTH_LIMIT,
            "lower",
        )
    )
    result.add(
        Measurement(
            f"worker process RSS after round {rounds}",
            "MiB",
            last.worker,
            first.worker,
            "after round 1",
            command,
            "no growth (<= +5%)",
            GROWTH_LIMIT,
            "lower",
        )
    )
    result.raw["rounds"] = [{"api_mib": r.api, "worker_mib": r.worker} for r in seen]
    result.notes.append(
        "RSS per round (API / worker, MiB): "
        + ", ".join(f"{r.api:.1f} / {r.worker:.1f}" for r in seen)
        + ". API: the larger of the two gunicorn workers; worker: the larger of the two prefork "
        "pool processes."
    )
    bars_plot(
        PLOTS / "memory.png",
        title="RSS after each round",
        ylabel="MiB",
        groups={
            f"round {i + 1}": {"API process": r.api, "worker process": r.worker} for i, r in enumerate(seen)
        },
    )
    result.plots.append("bench/memory.png")
    return seen
