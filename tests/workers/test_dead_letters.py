"""Dead letters: the admin routes, the CLI, and replay sending the order round again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from app.cli import main as cli
from app.config import Settings
from app.domain import OrderStatus
from app.policies import JobsPaymentConfig, parse_policies
from app.services import dead_letters
from app.services.payment_jobs import PaymentJobRunner, process_payment_job
from app.services.unit_of_work import PaymentDue
from tests.support import DatabaseHandle, FakeInventory, FakePayments, FakePublisher, fresh_database
from tests.workers.fakes import Clock, FakeJobGateway, dead_letters_of, job, order, place_order, uow_of

TOKEN = "dead-letter-admin-token"
CONFIG = JobsPaymentConfig(attempt_timeout=1.0, max_retries=1, backoff_base=0.1, backoff_max=0.2)


def dead_letter_an_order(uow: Any, clock: Clock) -> tuple[str, int]:
    order_id = place_order(uow, now=clock())
    return dead_letter_an_order_again(uow, clock, order_id)


def test_replay_puts_order_and_job_back_and_a_new_failure_makes_a_new_dead_letter(uow: Any) -> None:
    clock = Clock()
    order_id, letter_id = dead_letter_an_order(uow, clock)
    replayed = dead_letters.replay_dead_letter(uow, letter_id, now=clock)
    assert replayed.replayed_at == clock()
    assert PaymentDue(order_id) in uow.published
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.failure_reason) == (OrderStatus.PAYMENT_PENDING, None)
    restarted = job(uow, order_id)
    assert (restarted.state, restarted.retries, restarted.next_attempt_at) == ("pending", 0, clock())
    with pytest.raises(dead_letters.DeadLetterAlreadyReplayed):
        dead_letters.replay_dead_letter(uow, letter_id, now=clock)

    clock.advance(1)
    _, second_id = dead_letter_an_order_again(uow, clock, order_id)
    assert second_id != letter_id
    [second] = [d for d in dead_letters_of(uow, order_id) if d.id == second_id]
    # The new dead letter holds the attempts of the run after the replay only.
    assert second.attempts == 1 + CONFIG.max_retries


def dead_letter_an_order_again(uow: Any, clock: Clock, order_id: str) -> tuple[str, int]:
    runner = PaymentJobRunner(uow=uow, gateway=FakeJobGateway(["failed"]), config=CONFIG, now=clock)
    for _ in range(1 + CONFIG.max_retries):
        process_payment_job(order_id, runner=runner)
        clock.advance(1)
    [letter] = [d for d in dead_letters_of(uow, order_id) if d.replayed_at is None]
    return order_id, letter.id


def test_replay_after_recovery_confirms_the_order(uow: Any) -> None:
    clock = Clock()
    order_id, letter_id = dead_letter_an_order(uow, clock)
    dead_letters.replay_dead_letter(uow, letter_id, now=clock)
    runner = PaymentJobRunner(uow=uow, gateway=FakeJobGateway(["captured"]), config=CONFIG, now=clock)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    stored = order(uow, order_id)
    assert stored.status is OrderStatus.CONFIRMED
    assert stored.payment.attempts == (1 + CONFIG.max_retries) + 1  # never reset by a replay


def test_a_replay_asks_the_ledger_before_it_captures_again(uow: Any) -> None:
    """The payment service may have forgotten the order's key by the time of a replay: a capture made by the
    first run (the ledger has it) confirms the order instead of a second charge."""
    clock = Clock()
    order_id, letter_id = dead_letter_an_order(uow, clock)
    dead_letters.replay_dead_letter(uow, letter_id, now=clock)
    gateway = FakeJobGateway(["captured"], ledger=[{"id": "pay_first_run", "order_id": order_id}])
    runner = PaymentJobRunner(uow=uow, gateway=gateway, config=CONFIG, now=clock)
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    assert gateway.calls == [] and gateway.lookups == [order_id]
    stored = order(uow, order_id)
    assert (stored.status, stored.payment.payment_id) == (OrderStatus.CONFIRMED, "pay_first_run")


def test_a_replay_with_the_ledger_unreachable_captures_nothing_until_it_answers(uow: Any) -> None:
    clock = Clock()
    order_id, letter_id = dead_letter_an_order(uow, clock)
    dead_letters.replay_dead_letter(uow, letter_id, now=clock)
    gateway = FakeJobGateway(["captured"], ledger=None)
    runner = PaymentJobRunner(uow=uow, gateway=gateway, config=CONFIG, now=clock, rng=lambda: 0.0)
    assert process_payment_job(order_id, runner=runner) == "retried"
    assert gateway.calls == []
    gateway.ledger = []  # reachable again, and no capture: now the replay captures
    assert process_payment_job(order_id, runner=runner) == "succeeded"
    assert gateway.calls == [order_id] and gateway.lookups == [order_id, order_id]
    assert order(uow, order_id).status is OrderStatus.CONFIRMED


def test_unknown_dead_letter_cannot_be_replayed(uow: Any) -> None:
    with pytest.raises(dead_letters.DeadLetterNotFound):
        dead_letters.replay_dead_letter(uow, 987654)


# --- the admin routes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[DatabaseHandle]:
    with fresh_database() as db:
        yield db


@pytest.fixture
def api(database: DatabaseHandle, redis_url: str, key_prefix: str) -> Iterator[tuple[FlaskClient, Any]]:
    settings = Settings(database_url=database.url, database_schema=database.schema, redis_url=redis_url,
                        redis_prefix=key_prefix, admin_token=TOKEN)
    publisher = FakePublisher()
    app = create_app(settings, policies=parse_policies(""), redis=redis.Redis.from_url(redis_url),
                     dependencies={"inventory": FakeInventory(), "payments": FakePayments(), "publisher": publisher})
    yield app.test_client(), app.extensions["orderflow"]
    app.extensions["orderflow"].engine.dispose()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_admin_lists_dead_letters_newest_first_and_replays_one(api: tuple[FlaskClient, Any]) -> None:
    client, services = api
    clock = Clock()
    first_order, first_id = dead_letter_an_order(uow_of(services.engine), clock)
    clock.advance(5)
    second_order, second_id = dead_letter_an_order(uow_of(services.engine), clock)

    listed = client.get("/admin/dead-letters", headers=AUTH)
    assert listed.status_code == 200
    items = listed.get_json()["items"]
    assert [i["id"] for i in items][:2] == [second_id, first_id]
    assert set(items[0]) == {"id", "order_id", "attempts", "last_error", "dead_lettered_at", "replayed_at"}
    assert items[0]["order_id"] == second_order and items[0]["attempts"] == 2 and items[0]["replayed_at"] is None

    replayed = client.post(f"/admin/dead-letters/{first_id}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert replayed.get_json()["id"] == first_id and replayed.get_json()["replayed_at"] is not None
    assert services.publisher.due == [first_order]
    assert client.get(f"/api/orders/{first_order}").get_json()["status"] == "PaymentPending"

    again = client.post(f"/admin/dead-letters/{first_id}/replay", headers=AUTH)
    assert again.status_code == 409
    assert again.headers["Content-Type"] == "application/problem+json"
    missing = client.post("/admin/dead-letters/999999/replay", headers=AUTH)
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    huge = client.post(f"/admin/dead-letters/{2**70}/replay", headers=AUTH)
    assert huge.status_code == 404 and huge.headers["Content-Type"] == "application/problem+json"


def test_dead_letter_routes_need_the_admin_token(api: tuple[FlaskClient, Any]) -> None:
    client, _ = api
    assert client.get("/admin/dead-letters").status_code == 401
    response = client.post("/admin/dead-letters/1/replay", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_lists_and_replays_dead_letters_and_sets_flags(
    database: DatabaseHandle, redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from app.adapters.db import make_engine

    settings = Settings(database_url=database.url, database_schema=database.schema, redis_url=redis_url,
                        redis_prefix=key_prefix)
    engine = make_engine(database.url, schema=database.schema)
    uow = uow_of(engine)
    try:
        order_id, letter_id = dead_letter_an_order(uow, Clock())
        assert cli(["dead-letters", "list"], settings=settings) == 0
        assert letter_id in [i["id"] for i in json.loads(capsys.readouterr().out)["items"]]
        assert cli(["dead-letters", "replay", str(letter_id)], settings=settings) == 0
        assert json.loads(capsys.readouterr().out)["replayed_at"] is not None
        assert order(uow, order_id).status is OrderStatus.PAYMENT_PENDING
        assert cli(["dead-letters", "replay", str(letter_id)], settings=settings) == 1
        assert "already replayed" in capsys.readouterr().err

        assert cli(["flags", "set", "RealTimePayments", "off"], settings=settings) == 0
        assert json.loads(capsys.readouterr().out)["enabled"] is False
        assert cli(["flags", "list"], settings=settings) == 0
        flags = {f["name"]: f["enabled"] for f in json.loads(capsys.readouterr().out)["flags"]}
        assert flags == {"Notifications": True, "RealTimePayments": False}
        assert cli(["flags", "set", "NoSuchFlag", "on"], settings=settings) == 2
    finally:
        engine.dispose()


def test_cli_db_upgrade_is_idempotent(database: DatabaseHandle, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=database.url, database_schema=database.schema)
    assert cli(["db", "upgrade"], settings=settings) == 0
    assert "latest revision" in capsys.readouterr().out


