"""The bench harness itself: benchmark 1 with tiny counts, the document writer, the profile summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import policy
from bench.environment import POSTGRES_URL, ROOT, Database, postgres_url
from bench.load import _SCRIPT, PERCENTILES, LoadResult
from bench.profiling import summarise
from bench.report import document, table
from bench.results import BenchmarkResult, Measurement, load_results, save_results

TINY = policy.PolicyCounts(calls=200, redis_calls=20, http_calls=0, rounds=2)


def _result() -> BenchmarkResult:
    return BenchmarkResult(
        "policy", "Policy overhead per call", "2026-01-01 00:00 UTC", "abc123", "python -m bench"
    )


def test_policy_benchmark_with_tiny_counts_measures_ours_against_tenacity() -> None:
    result = policy.run(_result(), counts=TINY)

    first = result.measurements[0]
    assert first.baseline_name.startswith("tenacity")
    assert first.ours > 0 and first.baseline is not None and first.baseline > 0
    assert first.ratio == first.ours / first.baseline
    assert first.met in (True, False)
    assert {"bare", "ours", "tenacity", "pybreaker"} <= set(result.raw["per_call_us"])


def test_policy_benchmark_times_a_dependency_call_against_bare_requests() -> None:
    counts = policy.PolicyCounts(calls=10, redis_calls=0, rounds=2, http_calls=20, http_rounds=2)
    result = policy.run(_result(), counts=counts)

    call = next(m for m in result.measurements if m.name.startswith("dependency call"))
    assert call.baseline_name.startswith("a bare `requests.Session")
    assert call.ours > 0 and call.baseline is not None and call.baseline > 0 and call.met in (True, False)
    assert set(result.raw["http_cpu_per_call_us"]) == {"requests", "pipeline_local", "transport", "urllib3"}
    again = policy.run(_result(), counts=counts, previous=result)
    assert any(note.startswith("The run before this one (commit `abc123`") for note in again.notes)


def test_document_has_one_table_per_benchmark_with_commit_and_verdict() -> None:
    result = policy.run(_result(), counts=TINY)

    text = document({"policy": result})

    assert "## 1. Policy overhead per call" in text
    assert "commit `abc123`" in text and "2026-01-01 00:00 UTC" in text
    assert "| measure | baseline | baseline figure | our figure | ratio | goal | command |" in text
    assert "<= 1/4 of tenacity: **" in text
    assert "Not run yet: placement" in text


def test_a_missed_goal_says_by_how_much() -> None:
    slow = Measurement(
        "orders/s", "orders/s", 60.0, 100.0, "naive", limit=0.8, direction="higher", goal=">= 80%"
    )
    over = Measurement("p99", "ms", 30.0, 10.0, "healthy", limit=2.0, direction="lower", goal="<= 2x")

    assert slow.met is False and slow.miss.startswith("25% short")
    assert over.met is False and over.miss.startswith("1.50x over")
    assert "**missed** (25% short" in table([slow])


def test_results_survive_a_round_trip_through_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    result = _result()
    result.add(Measurement("x", "µs", 1.0, 4.0, "b", limit=0.25, direction="lower"))

    save_results(path, {"policy": result})
    loaded = load_results(path)

    assert loaded["policy"].measurements[0].ratio == 0.25
    assert json.loads(path.read_text())["policy"]["commit"] == "abc123"


def test_profile_summary_names_our_heaviest_functions() -> None:
    ours = f"run ({ROOT}/app/services/ordering.py:10)"
    collapsed = "\n".join(
        [
            f"thread (0x1);{ours};execute (/x/site-packages/sqlalchemy/engine.py:5) 30",
            f"thread (0x1);{ours} 10",
            "thread (0x2);wait (/x/lib/python3.11/threading.py:3) 60",
        ]
    )

    lines = summarise(collapsed)

    assert lines[0] == "100 samples of busy threads"
    assert any("40.0%: run (app/services/ordering.py)" in line for line in lines)
    assert any(line.startswith("self 60.0%: wait") for line in lines)


def test_wrk_script_reports_every_percentile_as_json() -> None:
    script = _SCRIPT % {"body": "{}", "percentiles": ", ".join(str(p) for p in PERCENTILES)}
    load = LoadResult(
        "ours",
        "wrk",
        requests=100,
        seconds=2.0,
        non_2xx=10,
        socket_errors=0,
        timeouts=0,
        min_ms=1,
        max_ms=9,
        mean_ms=3,
        percentiles_ms={50.0: 2.0, 99.0: 8.0},
    )

    assert "BENCH_JSON" in script and "latency:percentile(p)" in script
    assert load.ok_per_second == 45.0 and load.p(99) == 8.0


def test_a_benchmark_run_on_two_databases_shows_one_table_for_each() -> None:
    result = BenchmarkResult("placement", "Order placement", "2026-01-01 00:00 UTC", "abc123", "python -m bench")
    for group, ours in (("SQLite", 80.0), ("PostgreSQL", 95.0)):
        result.add(Measurement("(a) healthy payment: orders/s", "orders/s", ours, 100.0, "naive", limit=0.9,
                               direction="higher", goal=">= 90%", group=group))

    text = document({"placement": result})

    sqlite, postgres = text.index("### SQLite"), text.index("### PostgreSQL")
    assert sqlite < postgres
    assert "**missed**" in text[sqlite:postgres] and "**met**" in text[postgres:]
    assert text.count("| measure | baseline |") == 2
    assert "commit `abc123`" in text and "command `python -m bench`" in text


def test_a_goal_on_our_own_figure_counts_errors_whatever_the_baseline_did() -> None:
    clean = Measurement("non-2xx", "answers", 0.0, 3.0, "naive", goal="0", limit=0.0, direction="at_most")
    failing = Measurement("non-2xx", "answers", 1.0, 0.0, "naive", goal="0", limit=0.0, direction="at_most")

    assert clean.met is True and clean.ratio == 0.0
    assert failing.met is False and failing.ratio is None and failing.miss == "1 vs <= 0"


def test_benchmarks_run_on_postgresql_from_database_url_or_else_the_machines() -> None:
    named = "postgresql+psycopg://me@db.example:5433/orders"

    assert postgres_url({"DATABASE_URL": named}) == (named, "DATABASE_URL")
    assert postgres_url({"DATABASE_URL": "sqlite:///var/orderflow.db"})[0] == POSTGRES_URL
    assert postgres_url({})[0] == POSTGRES_URL
    assert Database("sqlite:///x.db", None, "").kind == "SQLite"
    assert Database(named, "bench_1", "").slug == "postgresql"


def test_the_parts_of_a_benchmark_run_on_two_databases_add_up_to_one_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "RESULTS", tmp_path / "results.json")
    session = bench_main.Session(tmp_path / "benchmarks.md", "python -m bench placement")

    for group in ("SQLite", "PostgreSQL"):
        session.run(
            "placement",
            lambda r, group=group: r.add(Measurement("x", "ms", 1.0, 1.0, "b", group=group)),
            part=group,
        )

    result = load_results(tmp_path / "results.json")["placement"]
    assert [m.group for m in result.measurements] == ["SQLite", "PostgreSQL"]
    assert "### SQLite" in (tmp_path / "benchmarks.md").read_text()


def test_a_drain_watch_goes_on_until_the_notifications_are_sent_from_the_same_start() -> None:
    from bench import backlog

    confirmed = iter([1, 3, 3, 3, 3])
    sent = iter([0, 1, 2, 3])
    drain = backlog._watch(3, lambda: next(confirmed), timeout=30, then=lambda: next(sent))
    assert (drain.done, drain.count) == (3, 3)
    assert drain.notified_seconds is not None and drain.notified_seconds > drain.seconds
    assert [n for _, n in drain.notified_curve] == [0, 0, 1, 2, 3]
    assert drain.notified_cpu_seconds >= drain.cpu_seconds


def test_a_drain_whose_notifications_do_not_all_go_out_in_time_says_so() -> None:
    from bench import backlog

    drain = backlog._watch(2, lambda: 2, timeout=0.6, then=lambda: 1)
    assert drain.done == 2
    assert drain.notified_seconds is None
