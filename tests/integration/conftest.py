from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from app.policies import parse_policies
from tests.support import DatabaseHandle, FakeInventory, FakePayments, FakePublisher, fresh_database

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def database() -> Iterator[DatabaseHandle]:
    with fresh_database() as db:
        yield db


class Stack:
    """The app over a real database and Redis, with the three dependencies faked."""

    def __init__(self, app: Flask, inventory: FakeInventory, payments: FakePayments, publisher: FakePublisher):
        self.app = app
        self.inventory = inventory
        self.payments = payments
        self.publisher = publisher
        self.client: FlaskClient = app.test_client()
        self.services: Any = app.extensions["orderflow"]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def stack(database: DatabaseHandle, redis_url: str, key_prefix: str) -> Iterator[Stack]:
    settings = Settings(
        database_url=database.url, database_schema=database.schema, redis_url=redis_url,
        redis_prefix=key_prefix, admin_token=ADMIN_TOKEN,
    )
    inventory, payments, publisher = FakeInventory(), FakePayments(), FakePublisher()
    app = create_app(
        settings,
        policies=parse_policies(""),
        redis=redis.Redis.from_url(redis_url),
        dependencies={"inventory": inventory, "payments": payments, "publisher": publisher},
    )
    yield Stack(app, inventory, payments, publisher)
    app.extensions["orderflow"].engine.dispose()
