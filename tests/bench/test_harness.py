"""The bench harness itself: benchmark 1 with tiny counts, the document writer, the profile summary."""

from __future__ import annotations

import json
from pathlib import Path

from bench import policy
from bench.environment import ROOT
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
