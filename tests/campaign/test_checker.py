"""Each invariant of the campaign's checker, shown able to fail on a small synthetic run, and silent on a clean one."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from campaign.checker import INVARIANTS, LedgerOutage, Violation, check
from campaign.history import Intent
from campaign.snapshot import DeadLetterRow, JobRow
from tests.campaign.synthetic import (
    DEADLINE,
    DECLINED,
    NO_STOCK,
    T0,
    VALID,
    WALL0,
    attempt,
    capture,
    clean_run,
    letter,
    order,
    replay,
    with_orders,
)


def found(run: dict[str, Any]) -> list[Violation]:
    return check(**run)


def invariants(run: dict[str, Any]) -> set[str]:
    return {v.invariant for v in found(run)}


def test_a_clean_run_shows_no_violation() -> None:
    assert found(clean_run()) == []


def test_two_orders_for_one_key_break_one_key_one_order() -> None:
    run = clean_run()
    run = with_orders(run, order("o9", VALID, "Confirmed", created=0.5))
    run["ledger"] = [*run["ledger"], capture("o9")]
    violations = [v for v in found(run) if v.invariant == "one-key-one-order"]
    assert len(violations) == 1
    assert violations[0].subject == "k-valid"
    assert "2 orders" in violations[0].message and "2 captures" in violations[0].message
    # The slice of history that shows it: the key's requests, both orders and both captures.
    evidence = violations[0].evidence
    assert len(evidence["attempts"]) == 3
    assert {o["id"] for o in evidence["orders"]} == {"o1", "o9"}
    assert {c["order_id"] for c in evidence["ledger"]} == {"o1", "o9"}


def test_answers_naming_two_orders_break_one_key_one_order() -> None:
    run = clean_run()
    run = with_orders(run, order("o7", NO_STOCK, "Confirmed"))
    run["ledger"] = [*run["ledger"], capture("o7")]
    run["attempts"] = [*run["attempts"], attempt("k-valid", 201, n=3, sent=4.0, body={"id": "o7"})]
    violations = [v for v in found(run) if v.invariant == "one-key-one-order" and v.subject == "k-valid"]
    assert violations and "2 different orders" in violations[0].message
    assert "orders of other intents" in violations[0].message


def test_a_503_saying_nothing_changed_after_its_order_was_stored_breaks_one_key_one_order() -> None:
    run = clean_run()
    # The first request stored o1 at 0.1 s and answered 503 naming no order at 2 s.
    run = with_orders(run, order("o1", VALID, "Confirmed", created=0.1))
    violations = [v for v in found(run) if v.invariant == "one-key-one-order"]
    assert len(violations) == 1 and "answered 503 naming no order" in violations[0].message


def test_a_503_while_an_earlier_request_may_still_run_proves_nothing() -> None:
    run = clean_run()
    run = with_orders(run, order("o1", VALID, "Confirmed", created=0.1))
    # An earlier request timed out on the client's side: the order may be its work, not the 503's.
    run["attempts"] = [attempt("k-valid", None, sent=-1.0, elapsed=0.5, error="ReadTimeout"), *run["attempts"]]
    assert "one-key-one-order" not in invariants(run)


def test_a_422_for_a_key_that_stored_an_order_breaks_one_key_one_order() -> None:
    run = clean_run()
    run = with_orders(run, order("o5", NO_STOCK, "Confirmed"))
    run["ledger"] = [*run["ledger"], capture("o5")]
    violations = [v for v in found(run) if v.invariant == "one-key-one-order"]
    assert [v.subject for v in violations] == ["k-stock"] and "422" in violations[0].message


def test_an_order_no_client_asked_for_breaks_one_key_one_order() -> None:
    stranger = Intent("nobody", 9, "valid", {"customer_id": 5, "lines": [{"product_id": 4, "quantity": 1}]}, 0.0)
    run = with_orders(clean_run(), order("o8", stranger, "PaymentFailed", failure_reason="declined"))
    violations = [v for v in found(run) if v.invariant == "one-key-one-order"]
    assert [v.subject for v in violations] == ["o8"]


def test_an_answer_naming_a_missing_order_breaks_told_orders_exist() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"], attempt("k-stock", 503, n=1, sent=3.0,
                                                 body={"type": "/problems/database-unavailable", "order_id": "gone"})]
    violations = [v for v in found(run) if v.invariant == "told-orders-exist"]
    assert [v.subject for v in violations] == ["k-stock"] and "gone" in violations[0].message


def test_a_location_naming_a_missing_order_breaks_told_orders_exist() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"], attempt("k-stock", 201, n=1, sent=3.0, body="?", location="/api/orders/x")]
    assert "told-orders-exist" in invariants(run)


@pytest.mark.parametrize(
    ("status", "reason", "captures", "words"),
    [
        ("Confirmed", None, 0, "Confirmed with 0 captures"),
        ("Confirmed", None, 2, "Confirmed with 2 captures"),
        ("PaymentFailed", "retries_exhausted", 1, "yet charged 1"),
        ("PaymentPending", None, 0, "still PaymentPending"),
    ],
)
def test_an_order_without_its_one_capture_breaks_payment_outcome(status: str, reason: str | None, captures: int,
                                                                 words: str) -> None:
    run = with_orders(clean_run(), order("o1", VALID, status, failure_reason=reason, created=2.6))
    run["ledger"] = [capture("o1", n) for n in range(captures)]
    violations = [v for v in found(run) if v.invariant == "payment-outcome"]
    assert [v.subject for v in violations] == ["o1"] and words in violations[0].message
    assert len(violations[0].evidence["ledger"]) == captures


def test_a_charge_without_an_order_breaks_payment_outcome() -> None:
    run = clean_run()
    run["ledger"] = [*run["ledger"], capture("never-stored")]
    violations = [v for v in found(run) if v.invariant == "payment-outcome"]
    assert [v.subject for v in violations] == ["never-stored"]


def test_an_http_500_breaks_no_500() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"], attempt("k-stock", 500, n=1, sent=3.0, body={"status": 500})]
    assert [v.subject for v in found(run) if v.invariant == "no-500"] == ["k-stock"]


def test_a_circuit_left_open_breaks_settled() -> None:
    run = clean_run()
    run["circuits"] = [{"name": "payment", "state": "open"}, {"name": "inventory", "state": "closed"}]
    assert [v.subject for v in found(run) if v.invariant == "settled"] == ["payment"]


def test_unreadable_circuits_break_settled() -> None:
    run = clean_run()
    run["circuits"] = None
    assert "settled" in invariants(run)


@pytest.mark.parametrize(
    "job",
    [
        JobRow("o1", "pending", 3, next_attempt_at=T0),
        JobRow("o1", "running", 1, lease_until=T0 + timedelta(minutes=1)),  # the snapshot is at 5 minutes
    ],
)
def test_a_job_left_pending_or_past_its_lease_breaks_settled(job: JobRow) -> None:
    run = with_orders(clean_run(), jobs=(job, JobRow("o2", "done")))
    assert [v.subject for v in found(run) if v.invariant == "settled"] == ["o1"]


def test_a_job_running_within_its_lease_is_not_a_settle_violation() -> None:
    job = JobRow("o1", "running", 1, lease_until=T0 + timedelta(minutes=6))
    run = with_orders(clean_run(), jobs=(job, JobRow("o2", "done")))
    assert "settled" not in invariants(run)


def test_an_order_given_up_without_a_dead_letter_breaks_dead_letters() -> None:
    run = with_orders(clean_run(), order("o1", VALID, "PaymentFailed", failure_reason="retries_exhausted"))
    run["ledger"] = []
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"] and "0 unreplayed" in violations[0].message


def test_a_dead_letter_for_a_confirmed_order_breaks_dead_letters() -> None:
    run = with_orders(clean_run(), dead_letters=(DeadLetterRow(1, "o1", 7, "503"),))
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"]
    assert violations[0].evidence["dead_letters"][0]["id"] == 1


def test_a_rejected_order_with_its_dead_letter_is_consistent() -> None:
    # Dead-lettered once, replayed by the campaign, rejected again: a new dead letter, not replayed.
    run = with_orders(clean_run(), order("o1", VALID, "PaymentFailed", failure_reason="rejected", created=2.6),
                      dead_letters=(DeadLetterRow(1, "o1", 3, "503", T0), DeadLetterRow(2, "o1", 1, "400")))
    run["ledger"] = []
    run["replays"] = [replay(1, "o1", 202)]
    assert invariants(run) == set()


# -- dead letters and their replays -----------------------------------------------------------------


def given_up_once_and_replayed(confirmed_at: float = 40.0) -> dict[str, Any]:
    """o1 dead-lettered at 20 s with no capture, replayed by the campaign at 30 s, captured and confirmed."""
    run = with_orders(clean_run(), dead_letters=(letter(1, "o1", written=20.0, replayed=30.0),))
    run["ledger"] = [capture("o1", at=confirmed_at)]
    run["replays"] = [replay(1, "o1", 202, sent=30.0)]
    return run


def test_a_replayed_order_confirmed_with_one_capture_is_consistent() -> None:
    assert found(given_up_once_and_replayed()) == []


def test_a_dead_letter_marked_replayed_that_nobody_replayed_breaks_dead_letters() -> None:
    run = given_up_once_and_replayed()
    run["replays"] = []
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"] and "never replayed" in violations[0].message


def test_an_accepted_replay_whose_letter_stays_unreplayed_breaks_dead_letters() -> None:
    run = with_orders(clean_run(), order("o1", VALID, "PaymentFailed", failure_reason="retries_exhausted",
                                         created=2.6), dead_letters=(letter(1, "o1"),))
    run["ledger"] = []
    run["replays"] = [replay(1, "o1", 202)]
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"] and "accepted (202)" in violations[0].message
    assert violations[0].evidence["replays"][0]["dead_letter"] == 1


def test_an_order_failed_again_after_its_replay_without_a_new_letter_breaks_dead_letters() -> None:
    run = given_up_once_and_replayed()
    run = with_orders(run, order("o1", VALID, "PaymentFailed", failure_reason="retries_exhausted", created=2.6))
    run["ledger"] = []
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"]
    assert "again after dead letter 1 was replayed" in violations[0].message


def test_an_unreplayed_letter_under_a_newer_replayed_one_breaks_dead_letters() -> None:
    run = with_orders(clean_run(), order("o1", VALID, "PaymentFailed", failure_reason="retries_exhausted",
                                         created=2.6),
                      dead_letters=(letter(1, "o1", written=10.0), letter(2, "o1", written=20.0, replayed=30.0)))
    run["ledger"] = []
    run["replays"] = [replay(2, "o1", 202)]
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"] and "under a newer one" in violations[0].message


def test_a_first_replay_answered_already_replayed_breaks_dead_letters() -> None:
    run = given_up_once_and_replayed()
    already = {"type": "/problems/dead-letter-already-replayed", "status": 409}
    run["replays"] = [replay(1, "o1", 409, sent=29.0, body=already), *run["replays"]]
    violations = [v for v in found(run) if v.invariant == "dead-letters"]
    assert [v.subject for v in violations] == ["o1"] and "409 already replayed" in violations[0].message


def test_a_replay_after_one_that_got_no_answer_may_find_it_already_replayed() -> None:
    run = given_up_once_and_replayed()
    already = {"type": "/problems/dead-letter-already-replayed", "status": 409}
    run["replays"] = [replay(1, "o1", None, sent=30.0, error="ReadTimeout"),
                      replay(1, "o1", 409, sent=36.0, body=already)]
    assert found(run) == []


def test_an_http_500_on_a_replay_breaks_no_500() -> None:
    run = given_up_once_and_replayed()
    run["replays"] = [replay(1, "o1", 500, sent=29.0), *run["replays"]]
    assert [v.subject for v in found(run) if v.invariant == "no-500"] == ["dead letter 1"]


# -- the ledger decides every give-up ---------------------------------------------------------------


def test_a_dead_letter_for_an_order_already_captured_breaks_ledger_decides() -> None:
    # Captured at 10 s (fail_after_capture: the money taken, a 5xx answered), dead-lettered at 20 s, then
    # replayed and confirmed on that one capture: the end state is fine, the give-up was not.
    run = given_up_once_and_replayed(confirmed_at=10.0)
    violations = [v for v in found(run) if v.invariant == "ledger-decides"]
    assert [v.subject for v in violations] == ["o1"]
    assert "ledger held capture pay_o1_1" in violations[0].message
    assert violations[0].evidence["dead_letters"][0]["id"] == 1


def test_a_capture_landing_while_the_ledger_was_asked_is_not_a_ledger_violation() -> None:
    # 1 s before the dead letter: within the lookup that preceded it, so the ledger may not have shown it.
    run = given_up_once_and_replayed(confirmed_at=19.0)
    assert "ledger-decides" not in invariants(run)


def test_a_dead_letter_written_while_the_ledger_was_unreachable_breaks_ledger_decides() -> None:
    run = given_up_once_and_replayed()
    run["ledger_outages"] = [LedgerOutage(WALL0 + 15.0, WALL0 + 25.0, "#4 proxy_disabled payment")]
    violations = [v for v in found(run) if v.invariant == "ledger-decides"]
    assert [v.subject for v in violations] == ["o1"] and "could not be reached" in violations[0].message
    assert violations[0].evidence["outage"]["fault"] == "#4 proxy_disabled payment"


@pytest.mark.parametrize(("start", "end"), [(19.5, 30.0), (5.0, 19.9)])
def test_a_dead_letter_just_after_the_ledger_went_away_or_after_it_came_back_is_no_violation(start: float,
                                                                                             end: float) -> None:
    run = given_up_once_and_replayed()
    run["ledger_outages"] = [LedgerOutage(WALL0 + start, WALL0 + end, "#4 toxic_timeout payment")]
    assert found(run) == []


# -- keys sent twice --------------------------------------------------------------------------------

CREATED = {"id": "o1", "status": "Confirmed"}
IN_USE = {"type": "/problems/idempotency-key-in-use", "status": 409}


def test_a_concurrent_copy_told_in_use_then_given_the_order_is_consistent() -> None:
    run = clean_run()
    run["intents"] = [replace(VALID, duplicate="concurrent"), *run["intents"][1:]]
    run["attempts"] = [*[a for a in run["attempts"] if a.copy != "after"],
                       attempt("k-valid", 409, sent=2.55, body=IN_USE, copy="concurrent"),
                       attempt("k-valid", 201, n=1, sent=3.6, body=CREATED, location="/api/orders/o1",
                               replayed=True, copy="concurrent")]
    assert found(run) == []


def test_a_copy_answered_with_another_order_breaks_idempotent_replay() -> None:
    run = clean_run()
    run = with_orders(run, order("o7", NO_STOCK, "Confirmed"))
    run["ledger"] = [*run["ledger"], capture("o7")]
    run["attempts"] = [*run["attempts"][:2], attempt("k-valid", 201, sent=3.0, body={"id": "o7"}, replayed=True,
                                                      copy="after"), *run["attempts"][3:]]
    violations = [v for v in found(run) if v.invariant == "idempotent-replay"]
    assert [v.subject for v in violations] == ["k-valid"]
    assert "the after copy was answered 201 ['o7'], the first request 201 ['o1']" in violations[0].message


def test_a_copy_answered_422_for_a_key_that_made_an_order_breaks_idempotent_replay() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"][:2], attempt("k-valid", 422, sent=3.0, body={"type": "/problems/out-of-stock"},
                                                      copy="after"), *run["attempts"][3:]]
    assert "idempotent-replay" in invariants(run)


def test_a_copy_after_the_answer_without_the_replay_header_breaks_idempotent_replay() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"][:2], attempt("k-valid", 201, sent=3.0, body=CREATED, copy="after"),
                       *run["attempts"][3:]]
    violations = [v for v in found(run) if v.invariant == "idempotent-replay"]
    assert [v.subject for v in violations] == ["k-valid"]
    assert "2 answers [201, 201] without Idempotent-Replayed" in violations[0].message
    assert "without Idempotent-Replayed, not the stored 201 replayed" in violations[0].message


def test_a_copy_of_a_declined_order_may_get_that_order_as_it_is_now() -> None:
    # The 402 was not stored (the database failed after the order was): a replay of the order as it is now.
    run = clean_run()
    run["intents"] = [run["intents"][0], replace(DECLINED, duplicate="after"), run["intents"][2]]
    run["attempts"] = [*run["attempts"], attempt("k-declined", 201, sent=1.5, body={"id": "o2"}, replayed=True,
                                                 location="/api/orders/o2", copy="after")]
    assert found(run) == []


def test_a_copy_told_in_use_for_ever_breaks_idempotent_replay() -> None:
    run = clean_run()
    run["intents"] = [replace(VALID, duplicate="concurrent"), *run["intents"][1:]]
    stuck = [attempt("k-valid", 409, n=n, sent=2.6 + 2 * n, body=IN_USE, copy="concurrent") for n in range(15)]
    run["attempts"] = [*[a for a in run["attempts"] if a.copy != "after"], *stuck]
    violations = [v for v in found(run) if v.invariant == "idempotent-replay"]
    assert [v.subject for v in violations] == ["k-valid"]
    assert "told in use for 28.2 s and never answered" in violations[0].message


def test_a_503_of_one_copy_while_the_other_stored_the_order_proves_nothing() -> None:
    # The first request (sent at 0.0) stored o1 at 0.1 s and answered 201; the copy, sent at 0.05 s, met a
    # stalled database and said nothing was changed, which is true of its own request.
    run = clean_run()
    run["intents"] = [replace(VALID, duplicate="concurrent"), *run["intents"][1:]]
    run = with_orders(run, order("o1", VALID, "Confirmed", created=0.1))
    unavailable = {"type": "/problems/database-unavailable", "status": 503}
    run["attempts"] = [attempt("k-valid", 201, elapsed=0.3, body=CREATED, location="/api/orders/o1"),
                       attempt("k-valid", 503, sent=0.05, elapsed=2.0, body=unavailable, copy="concurrent"),
                       attempt("k-valid", 201, n=1, sent=2.5, body=CREATED, replayed=True, copy="concurrent"),
                       *run["attempts"][3:]]
    assert found(run) == []


def test_a_request_over_the_deadline_breaks_the_time_bound() -> None:
    run = clean_run()
    run["attempts"] = [*run["attempts"], attempt("k-stock", None, n=1, sent=3.0, elapsed=DEADLINE + 1.5,
                                                 error="ReadTimeout")]
    violations = [v for v in found(run) if v.invariant == "time-bound"]
    assert [v.subject for v in violations] == ["k-stock"] and "11.50 s" in violations[0].message


def test_every_invariant_has_a_test_that_makes_it_fail() -> None:
    names = {name.replace("-", "_") for name in INVARIANTS}
    tests = {name for name in globals() if name.startswith("test_")}
    for name in names:
        assert any(name in test and "break" in test for test in tests), name
