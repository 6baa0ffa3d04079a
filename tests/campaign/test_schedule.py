"""The fault schedule is a pure function of the seed, the duration and the database, and keeps its bounds."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict

import pytest

from campaign.clients import make_intent, retryable
from campaign.history import Attempt
from campaign.schedule import kinds_for, make_schedule


def test_one_seed_gives_one_schedule() -> None:
    assert make_schedule(7, 90, database="sqlite") == make_schedule(7, 90, database="sqlite")


def test_the_schedule_is_the_same_in_another_process() -> None:
    # No dependence on hash randomisation or on anything else of the process that draws it.
    code = "from campaign.schedule import make_schedule; print([f.to_json() for f in make_schedule(7, 90, " \
           "database='postgresql')])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert other.stdout.strip() == str([f.to_json() for f in make_schedule(7, 90, database="postgresql")])


def test_other_seeds_give_other_schedules() -> None:
    schedules = {tuple(f.to_json().__repr__() for f in make_schedule(seed, 90, database="sqlite"))
                 for seed in range(5)}
    assert len(schedules) == 5


def test_faults_stay_inside_the_run_and_heal_before_its_end() -> None:
    for seed in range(20):
        for fault in make_schedule(seed, 60, database="postgresql"):
            assert 0 < fault.at < 60 and 0 <= fault.hold <= 15 and fault.heal_at <= 60, fault


def test_a_short_run_meets_every_kind_of_fault() -> None:
    kinds = {f.kind for f in make_schedule(7, 75, database="postgresql")}
    assert kinds == set(kinds_for("postgresql"))


def test_sqlite_gets_no_backend_kills() -> None:
    assert all(f.kind != "db_kill" for seed in range(10) for f in make_schedule(seed, 120, database="sqlite"))
    assert "db_kill" in kinds_for("postgresql") and "db_kill" not in kinds_for("sqlite")


def test_faults_on_one_resource_never_overlap() -> None:
    exclusive = ("simulator", "db_stall", "db_kill", "redis_restart", "flag_off", "circuit_isolated", "proxy")
    for seed in range(20):
        held: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for fault in make_schedule(seed, 300, database="postgresql"):
            family = "simulator" if fault.kind.startswith("simulator") or fault.kind == "fail_after_capture" \
                else fault.kind
            if any(family.startswith(e) for e in exclusive):
                held[(family, fault.target)].append((fault.at, fault.heal_at))
        for spans in held.values():
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                assert start >= end, spans


def test_whole_worker_kills_stay_under_the_supervisors_restart_limit() -> None:
    for seed in range(20):
        kills = [f.at for f in make_schedule(seed, 600, database="sqlite") if f.kind == "kill_celery_worker"]
        for start in kills:
            assert sum(1 for t in kills if start <= t < start + 60) <= 3


def test_an_unknown_database_is_refused() -> None:
    with pytest.raises(ValueError):
        make_schedule(1, 60, database="oracle")


def test_every_intent_has_a_body_of_its_own() -> None:
    rng = random.Random(3)
    intents = [make_intent(rng, seed=3, client=c, number=n, started=0.0) for c in range(4) for n in range(400)]
    assert len({i.signature for i in intents}) == len(intents)
    assert len({i.key for i in intents}) == len(intents)
    assert {i.kind for i in intents} == {"valid", "declined", "out_of_stock"}
    for intent in intents:
        products = [line["product_id"] for line in intent.body["lines"]]
        assert (13 in products) == (intent.kind == "out_of_stock")
        assert (intent.body["customer_id"] == 402) == (intent.kind == "declined")


@pytest.mark.parametrize(
    ("status", "body", "again"),
    [
        (None, None, True),
        (503, {"type": "/problems/database-unavailable"}, True),
        (500, {}, True),
        (429, {}, True),
        (409, {"type": "/problems/idempotency-key-in-use"}, True),
        (409, {"type": "/problems/idempotency-key-reused"}, False),
        (201, {"id": "o1"}, False),
        (402, {"order_id": "o1"}, False),
        (422, {"type": "/problems/out-of-stock"}, False),
    ],
)
def test_a_careful_client_retries_only_what_may_succeed_later(status: int | None, body: object, again: bool) -> None:
    assert retryable(Attempt("k", 0, 0, 0.0, 0.1, 0.0, status, body)) is again
