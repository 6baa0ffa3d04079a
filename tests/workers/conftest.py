from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from app.adapters.db import make_engine
from tests.fake_unit_of_work import MemoryUnitOfWorkFactory
from tests.support import fresh_database
from tests.workers.fakes import uow_of


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """One migrated database per module; each test works on orders of its own."""
    with fresh_database() as db:
        engine = make_engine(db.url, schema=db.schema)
        yield engine
        engine.dispose()


@pytest.fixture(params=["sql", "memory"])
def uow(request: pytest.FixtureRequest, engine: Engine) -> Any:
    """The services' unit of work, twice: over the module's real database, and in memory (the same rules)."""
    if request.param == "sql":
        return uow_of(engine)
    return MemoryUnitOfWorkFactory()
