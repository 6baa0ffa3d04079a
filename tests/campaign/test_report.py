"""The report shows each violation with its slice of history, and its JSON holds the whole run."""

from __future__ import annotations

import json
from pathlib import Path

from campaign.checker import LedgerOutage, check
from campaign.faults import Applied
from campaign.history import History
from campaign.policies import policy_for
from campaign.report import summary, write_json
from campaign.runner import Options, Result, replay_command
from campaign.schedule import make_schedule
from campaign.snapshot import JobRow
from tests.campaign.synthetic import VALID, WALL0, attempt, capture, clean_run, letter, order, replay, with_orders


def result_with_a_double_order() -> Result:
    run = with_orders(clean_run(), order("o9", VALID, "Confirmed", created=0.5),
                      jobs=(JobRow("o1", "done"), JobRow("o9", "done")))
    run["ledger"] = [capture("o1"), capture("o9")]
    history = History()
    for intent in run["intents"]:
        history.add_intent(intent)
    for made in run["attempts"]:
        history.add_attempt(made)
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


def result_with_a_dead_letter_charged() -> Result:
    """o1 captured at 10 s, dead-lettered at 20 s while the ledger was unreachable, replayed, confirmed; its
    key sent again after the answer."""
    run = with_orders(clean_run(), dead_letters=(letter(1, "o1", written=20.0, replayed=30.0),))
    run["ledger"] = [capture("o1", at=10.0)]
    run["replays"] = [replay(1, "o1", 202)]
    run["ledger_outages"] = [LedgerOutage(WALL0 + 15.0, WALL0 + 25.0, "#4 proxy_disabled payment")]
    run["attempts"] = [*run["attempts"][:2], attempt("k-valid", 201, sent=3.0, body={"id": "o1"}, replayed=True,
                                                      copy="after"), *run["attempts"][3:]]
    history = History()
    for intent in run["intents"]:
        history.add_intent(intent)
    for made in run["attempts"]:
        history.add_attempt(made)
    for sent in run["replays"]:
        history.add_replay(sent)
    options = Options(seed=7, duration=60, clients=2, settle=90, json_path=None, database_url=None)
    return Result(options, "sqlite", "SQLite", "abc123", replay_command(options), (), [], history,
                  policy_for(7), final_replay="0 of 0 dead letters replayed", ledger_outages=run["ledger_outages"],
                  snapshot=run["snapshot"], ledger=run["ledger"], circuits=run["circuits"],
                  violations=check(**run), settled_after=1.0)


def test_the_summary_shows_the_policy_the_copies_the_replays_and_the_ledger_outages() -> None:
    text = summary(result_with_a_dead_letter_charged())
    assert "policy give-up" in text and "max_retries" in text
    assert "payment ledger unreachable for  10.0 s: #4 proxy_disabled payment" in text
    assert "sent twice (after)  1 keys; their copies' requests: 201 replayed x1" in text
    assert "dead-letter replays  1 letters, 1 requests: 202 x1; after healing: 0 of 0" in text
    assert "dead letters 1 (1 replayed)" in text
    # Both ledger violations, each with the dead letter, its replay and the copy's request.
    assert text.count("[ledger-decides] o1") == 2
    assert "replay of dead letter 1 (#9)" in text and "[after copy]" in text
    assert "ledger unreachable {" in text


def test_the_json_report_holds_the_policy_the_replays_and_the_outages(tmp_path: Path) -> None:
    path = tmp_path / "7.json"
    write_json(result_with_a_dead_letter_charged(), path)
    report = json.loads(path.read_text())
    assert report["policy"]["name"] == "give-up" and "[jobs.payment]" in report["policy"]["text"]
    assert report["history"]["replays"][0]["status"] == 202
    assert report["ledger_outages"][0]["fault"] == "#4 proxy_disabled payment"
    assert report["violation_counts"] == {"ledger-decides": 2}
    assert report["snapshot"]["dead_letters"][0]["dead_lettered_at"].startswith("2025-01-01T12:00:20")
