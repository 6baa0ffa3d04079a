from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.adapters.db import make_engine
from tests.support import fresh_database


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """One migrated database per module; each test works on orders of its own."""
    with fresh_database() as db:
        engine = make_engine(db.url, schema=db.schema)
        yield engine
        engine.dispose()
