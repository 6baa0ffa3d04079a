"""The notification simulator: accepts, remembers every delivery, duplicates included."""

from __future__ import annotations

import re
from typing import Any

import pytest

from simulators import SimulatorServer

from .client import Reply, call


def notify(server: SimulatorServer, *, order_id: str | int = "o-1", key: str | None = None) -> Reply:
    headers = {} if key is None else {"Idempotency-Key": key}
    body = {"order_id": order_id, "kind": "order_confirmed"}
    return call(server, "POST", "/notifications", json_body=body, headers=headers)


def received(server: SimulatorServer, query: str = "") -> list[dict[str, Any]]:
    reply = call(server, "GET", f"/notifications{query}")
    assert reply.status == 200
    items: list[dict[str, Any]] = reply.body["items"]
    return items


def test_a_notification_is_accepted_with_its_idempotency_key(notification: SimulatorServer) -> None:
    reply = notify(notification, key="order_confirmed:o-1")
    assert reply.status == 202
    assert set(reply.body) == {"id", "order_id", "kind", "idempotency_key"}
    assert re.fullmatch(r"ntf_[0-9a-f]+", reply.body["id"])
    assert reply.body["order_id"] == "o-1"
    assert reply.body["kind"] == "order_confirmed"
    assert reply.body["idempotency_key"] == "order_confirmed:o-1"


def test_a_notification_without_a_key_records_none(notification: SimulatorServer) -> None:
    assert notify(notification).body["idempotency_key"] is None
    assert received(notification)[0]["idempotency_key"] is None


def test_every_delivery_is_kept_duplicates_included(notification: SimulatorServer) -> None:
    ids = [notify(notification, key="order_confirmed:o-1").body["id"] for _ in range(3)]
    items = received(notification, "?order_id=o-1")
    assert [item["id"] for item in items] == ids
    assert len(set(ids)) == 3
    assert {item["idempotency_key"] for item in items} == {"order_confirmed:o-1"}


def test_the_list_filters_by_order(notification: SimulatorServer) -> None:
    notify(notification, order_id="A")
    notify(notification, order_id="B")
    notify(notification, order_id=12)
    assert [item["order_id"] for item in received(notification, "?order_id=A")] == ["A"]
    assert [item["order_id"] for item in received(notification, "?order_id=12")] == [12]
    assert received(notification, "?order_id=C") == []
    assert len(received(notification)) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "order_confirmed"}, "order_id"),
        ({"order_id": "o-1"}, "kind"),
        ({"order_id": "o-1", "kind": ""}, "kind"),
        ({"order_id": "o-1", "kind": 3}, "kind"),
        ({"order_id": False, "kind": "order_confirmed"}, "order_id"),
    ],
)
def test_a_bad_notification_is_a_400_and_not_recorded(
    notification: SimulatorServer, body: dict[str, Any], field: str
) -> None:
    reply = call(notification, "POST", "/notifications", json_body=body)
    assert reply.status == 400
    assert reply.body["field"] == field
    assert received(notification) == []


def test_an_injected_error_records_nothing(notification: SimulatorServer) -> None:
    call(notification, "PUT", "/faults", json_body={"error_rate": 1.0})
    assert notify(notification).status == 503
    assert received(notification) == []
