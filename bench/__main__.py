"""`python -m bench [policy|proxy|placement|degraded|backlog|memory ...] [--backlog N] [--duration S]`."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from . import backlog as backlog_bench
from . import degraded, memory, placement, policy, proxy
from .environment import (
    DOCS,
    PLOTS,
    Database,
    RedisTarget,
    commit,
    now_text,
    postgres_available,
    postgres_database,
    redis_server,
    sqlite_database,
)
from .load import WrkMissing, require_wrk
from .report import ORDER, document
from .results import BenchmarkResult, load_results, save_results
from .stack import running_stack

TITLES = {
    "policy": "Policy overhead per call (happy path)",
    "placement": "Order placement throughput and latency",
    "degraded": "Degraded placement: payment circuit open, payment hanging",
    "backlog": "Backlog drain after a payment outage",
    "proxy": "Chaos proxy overhead",
    "memory": "Memory: RSS and growth over repeated rounds",
}
STACK_BENCHMARKS = ("placement", "degraded", "backlog", "memory")
# Run on SQLite (the embedded default) and on PostgreSQL, one stack each; the others on the last database.
PER_DATABASE = ("placement", "degraded")
RESULTS = PLOTS / "results.json"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of: {', '.join(ORDER)} (default: all)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=backlog_bench.DEFAULT_BACKLOG,
        help=f"orders in benchmark 4's backlog (default {backlog_bench.DEFAULT_BACKLOG})",
    )
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of each wrk run (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the memory benchmark (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of a missed goal")
    parser.add_argument("--output", type=Path, default=DOCS / "benchmarks.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(ORDER)})")
    return args


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Session:
    """Runs benchmarks one by one and rewrites the document after each, so a failure keeps what was done."""

    def __init__(self, output: Path, command: str) -> None:
        self.output = output
        self.command = command
        self.commit = commit()
        self.results = load_results(RESULTS)
        self.started: set[str] = set()  # benchmarks begun in this session: a second part adds to them
        self.header = [
            f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.system()} {platform.release()}."
        ]

    def run(
        self, key: str, body: Callable[[BenchmarkResult], object], *, notes: Sequence[str] = (), part: str = ""
    ) -> None:
        """One benchmark, or one `part` of it (a database): the parts of a session add to one result."""
        _say(f"{key}: {TITLES[key]}" + (f" ({part})" if part else ""))
        if key in self.started:
            result = self.results[key]
        else:
            result = BenchmarkResult(key, TITLES[key], now_text(), self.commit, self.command)
            self.started.add(key)
        shown = len(result.measurements)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        body(result)
        result.seconds += time.monotonic() - started
        result.notes += list(notes)
        result.notes.append(
            (f"{part}: " if part else "")
            + f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
            "(other work on the machine shows here)."
        )
        self.results[key] = result
        save_results(RESULTS, self.results)
        self.output.write_text(document(self.results, header_notes=self.header))
        for m in result.measurements[shown:]:
            verdict = "" if m.met is None else (" met" if m.met else f" MISSED {m.miss}")
            ratio = "" if m.ratio is None else f" ratio {m.ratio:.3f}"
            _say(f"  {m.name}: {m.ours:.4g} {m.unit} vs {m.baseline} {ratio}{verdict}")


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it (`--output` may point anywhere)."""
    try:
        return str(path.resolve().relative_to(DOCS.parent))
    except ValueError:
        return str(path)


def _stack_benchmarks(
    session: Session,
    args: argparse.Namespace,
    chosen: Sequence[str],
    db: Database,
    target: RedisTarget,
    resources: ExitStack,
) -> None:
    """The benchmarks that need the stack, on one database (with a stack of its own)."""
    chosen = [k for k in chosen if k in STACK_BENCHMARKS]
    if not chosen:
        return
    tmp = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="orderflow-bench-")))
    _say(f"starting the stack on {db.kind} (python -m app.stack, what `make run` execs)")
    stack = resources.enter_context(running_stack(db, target, tmp / "var"))
    notes = [f"{db.kind}: {db.note}. Redis: {target.note}."]
    options = placement.LoadOptions(duration=args.duration)
    after: dict[str, memory.Rss] = {}
    if "placement" in chosen:
        session.run(
            "placement",
            lambda r: placement.run(r, stack, db, options=options, profile=not args.no_profile),
            notes=notes,
            part=db.kind,
        )
        after["benchmark 2"] = memory.Rss.of(stack)
        placement.wait_drained(db, timeout=90)
    if "degraded" in chosen:
        session.run("degraded", lambda r: degraded.run(r, stack, db, options=options), notes=notes, part=db.kind)
    if "backlog" in chosen:
        session.run("backlog", lambda r: backlog_bench.run(r, stack, db, count=args.backlog), notes=notes)
        after["benchmark 4"] = memory.Rss.of(stack)
    if "memory" in chosen:
        session.run("memory", lambda r: memory.run(r, stack, db, rounds=args.rounds, after=after), notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    chosen = [k for k in ORDER if k in args.benchmarks] if args.benchmarks else list(ORDER)
    command = "python -m bench " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    if any(k in STACK_BENCHMARKS for k in chosen):
        try:
            require_wrk()
        except WrkMissing as exc:
            print(exc, file=sys.stderr)
            return 2
    started = time.monotonic()
    session = Session(args.output, command.strip())
    PLOTS.mkdir(parents=True, exist_ok=True)
    with ExitStack() as resources:
        target = resources.enter_context(redis_server())
        if "policy" in chosen:
            session.run(
                "policy",
                lambda r: policy.run(
                    r,
                    redis_url=target.url,
                    redis_prefix=target.prefix,
                    redis_note=target.note,
                    previous=session.results.get("policy"),
                ),
            )
        if "proxy" in chosen:
            session.run("proxy", lambda r: proxy.run(r))
        if any(k in STACK_BENCHMARKS for k in chosen):
            kinds = ["SQLite"] if any(k in PER_DATABASE for k in chosen) else []
            postgres, source = postgres_available()
            if postgres is not None:
                kinds.append("PostgreSQL")
            else:
                _say(f"PostgreSQL: {source}; running on SQLite only")
                session.header.append(f"PostgreSQL: {source}, so this run used SQLite alone.")
            if not kinds:
                kinds = ["SQLite"]
            for kind in kinds:
                last = kind == kinds[-1]
                with ExitStack() as per_database:
                    db = per_database.enter_context(
                        sqlite_database() if kind == "SQLite" else postgres_database(postgres or "", source)
                    )
                    _stack_benchmarks(
                        session, args, [k for k in chosen if k in PER_DATABASE or last], db, target, per_database
                    )
    _say(f"done in {time.monotonic() - started:.0f} s; wrote {_shown(args.output)} and {_shown(PLOTS)}/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
