"""The report shows each violation with its slice of history, and its JSON holds the whole run."""

from __future__ import annotations

import json
from pathlib import Path

from campaign.checker import check
from campaign.faults import Applied
from campaign.history import History
from campaign.report import summary, write_json
from campaign.runner import Options, Result, replay_command
from campaign.schedule import make_schedule
from campaign.snapshot import JobRow
from tests.campaign.synthetic import VALID, capture, clean_run, order, with_orders


def result_with_a_double_order() -> Result:
    run = with_orders(clean_run(), order("o9", VALID, "Confirmed", created=0.5),
                      jobs=(JobRow("o1", "done"), JobRow("o9", "done")))
    run["ledger"] = [capture("o1"), capture("o9")]
    history = History()
    for intent in run["intents"]:
        history.add_intent(intent)
    for attempt in run["attempts"]:
        history.add_attempt(attempt)
    options = Options(seed=7, duration=60, clients=2, settle=90, json_path=None,
                      database_url="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schedule = make_schedule(7, 60, database="postgresql")
    applied = [Applied(schedule[0], applied_at=schedule[0].at, healed_at=schedule[0].heal_at),
               Applied(schedule[1], error="RuntimeError: no such process alive at that moment")]
    return Result(options, "postgresql", "PostgreSQL 127.0.0.1", "abc123", replay_command(options), schedule,
                  applied, history, snapshot=run["snapshot"], ledger=run["ledger"], circuits=run["circuits"],
                  violations=check(**run), settled_after=4.2)


def test_the_summary_shows_the_violation_with_its_history_and_the_replay_command() -> None:
    text = summary(result_with_a_double_order())
    assert "[one-key-one-order] k-valid: 2 orders stored for one key" in text
    assert "order o9" in text and "capture pay_o9_1" in text  # the order rows and the ledger entries
    assert "attempt 0" in text and "503" in text  # the key's requests and answers
    assert "FAILED: 1 violation(s)" in text
    assert "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test make campaign SEED=7 DURATION=60" in text
    assert "no such process alive" in text  # a fault that could not be applied is shown


def test_the_json_report_holds_schedule_history_snapshot_and_violations(tmp_path: Path) -> None:
    path = tmp_path / "7.json"
    write_json(result_with_a_double_order(), path)
    report = json.loads(path.read_text())
    assert report["seed"] == 7 and report["replay"].endswith("SETTLE=90")
    assert len(report["schedule"]) == len(make_schedule(7, 60, database="postgresql"))
    assert report["violation_counts"] == {"one-key-one-order": 1}
    assert {o["id"] for o in report["snapshot"]["orders"]} == {"o1", "o2", "o9"}
    assert len(report["history"]["attempts"]) == 5 and len(report["ledger"]) == 2
