"""The fault schedule is a pure function of the seed, the duration and the database, and keeps its bounds."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from app.policies import load_policies
from campaign.clients import make_intent, retryable
from campaign.history import Attempt
from campaign.policies import policy_for
from campaign.schedule import (
    FAST_OUTAGE_HOLD,
    MAX_HOLD,
    REPLAY,
    REPLAY_AFTER,
    SLOW_OUTAGE_HOLD,
    kinds_for,
    make_schedule,
)


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
            assert 0 < fault.at < 60 and 0 <= fault.hold <= MAX_HOLD and fault.heal_at <= 60, fault


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_ci_run_meets_every_kind_of_fault(database: str) -> None:
    kinds = {f.kind for f in make_schedule(7, 75, database=database)}
    assert kinds == {*kinds_for(database), REPLAY}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_short_run_has_several_database_faults(database: str) -> None:
    counts = [sum(1 for f in make_schedule(seed, 75, database=database) if f.kind.startswith("db_"))
              for seed in range(40)]
    assert sum(counts) / len(counts) >= 4.5 and min(counts) >= 1, counts
    assert sum(1 for f in make_schedule(7, 75, database=database) if f.kind.startswith("db_")) >= 3


def test_the_storm_terminates_backends_on_postgresql_and_takes_the_lock_in_bursts_on_sqlite() -> None:
    storms = [f for seed in range(10) for f in make_schedule(seed, 120, database="postgresql") if f.kind == "db_storm"]
    assert storms and all(f.params == {"interval": 0.3, "busy_only": False} for f in storms)
    assert all(3 <= f.hold <= 8 or f.heal_at == 120 for f in storms)  # one starting late ends with the run
    storms = [f for seed in range(10) for f in make_schedule(seed, 120, database="sqlite") if f.kind == "db_storm"]
    assert storms
    for storm in storms:
        stalls = storm.params["stalls"]
        assert len(stalls) >= 2 and all(0.3 <= s <= 2.5 for s in stalls)
        assert storm.hold <= round(sum(stalls) + storm.params["pause"] * len(stalls), 2)


def test_odd_seeds_give_up_and_even_seeds_defer() -> None:
    assert policy_for(8).name == "defer" and policy_for(8).minimum_throughput is None
    give_up = [policy_for(seed) for seed in range(1, 40, 2)]
    assert {p.name for p in give_up} == {"give-up"}
    assert {p.max_retries for p in give_up} == {2, 3}
    assert policy_for(7) == policy_for(7)


@pytest.mark.parametrize("seed", [7, 8])
def test_the_policy_file_is_one_the_stack_accepts(seed: int, tmp_path: Path) -> None:
    policy = policy_for(seed)
    path = tmp_path / "resilience.toml"
    path.write_text(policy.toml())
    loaded = load_policies(path)
    assert loaded.jobs_payment.max_retries == policy.max_retries
    assert loaded.jobs_payment.backoff_max == policy.backoff_max
    assert loaded.dependencies["payment"].circuit_breaker is not None
    assert loaded.dependencies["payment"].circuit_breaker.minimum_throughput == (policy.minimum_throughput or 10)
    assert loaded.dependencies["payment"].circuit_breaker.break_duration == 3.0


def test_under_the_give_up_policy_payment_outages_last_until_jobs_give_up() -> None:
    for seed in range(1, 30, 2):
        for fault in make_schedule(seed, 300, database="sqlite"):
            if fault.target != "payment" or fault.heal_at >= 300:
                continue
            if fault.kind in ("simulator_5xx", "fail_after_capture", "proxy_disabled"):
                assert fault.hold >= FAST_OUTAGE_HOLD[0], fault
            if fault.kind in ("toxic_timeout", "simulator_latency"):
                assert fault.hold >= SLOW_OUTAGE_HOLD[0], fault


def test_dead_letters_are_replayed_a_few_seconds_after_each_payment_fault_heals() -> None:
    for seed in (7, 8):
        schedule = make_schedule(seed, 120, database="postgresql")
        replays = [f for f in schedule if f.kind == REPLAY]
        assert replays and all(f.hold == 0 and f.target == "admin" and f.at < 120 for f in replays)
        for fault in schedule:
            if fault.target == "payment" and fault.hold > 0 and fault.heal_at + REPLAY_AFTER[1] < 120:
                # one replay after it heals, unless another one just came
                assert any(fault.heal_at < r.at <= fault.heal_at + REPLAY_AFTER[1] + REPLAY_AFTER[0]
                           for r in replays), fault
        assert [f.id for f in schedule] == list(range(1, len(schedule) + 1))
        assert [f.at for f in schedule] == sorted(f.at for f in schedule)


def test_sqlite_gets_no_backend_kills() -> None:
    assert all(f.kind != "db_kill" for seed in range(10) for f in make_schedule(seed, 120, database="sqlite"))
    assert "db_kill" in kinds_for("postgresql") and "db_kill" not in kinds_for("sqlite")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_faults_on_one_resource_never_overlap(database: str) -> None:
    exclusive = ("simulator", "db_lock", "db_kill", "redis_restart", "flag_off", "circuit_isolated", "proxy")
    # A storm is a write lock on SQLite, backends terminated on PostgreSQL.
    storm = "db_lock" if database == "sqlite" else "db_kill"
    for seed in range(20):
        held: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for fault in make_schedule(seed, 300, database=database):
            family = "simulator" if fault.kind.startswith("simulator") or fault.kind == "fail_after_capture" \
                else "db_lock" if fault.kind == "db_stall" else storm if fault.kind == "db_storm" else fault.kind
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
