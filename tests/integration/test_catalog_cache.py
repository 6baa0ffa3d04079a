"""Order placement reads prices through a per-process copy of the catalog that is at most a few seconds old."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, delete, insert, update

from app.adapters.db import make_engine
from app.adapters.sql import SqlUnitOfWorkFactory
from app.adapters.sql.tables import products
from app.domain import UnknownProduct
from app.services.ordering import CATALOG_SECONDS, CatalogCache
from tests.support import DatabaseHandle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def engine(database: DatabaseHandle) -> Iterator[Engine]:
    engine = make_engine(database.url, schema=database.schema)
    yield engine
    engine.dispose()


def set_price(engine: Engine, product_id: int, price: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(products).where(products.c.id == product_id).values(unit_price=Decimal(price)))


def test_a_price_change_is_seen_once_the_copy_is_older_than_its_ttl(engine: Engine) -> None:
    clock = Clock()
    catalog = CatalogCache(SqlUnitOfWorkFactory(engine), ttl=CATALOG_SECONDS, monotonic=clock)
    original = catalog.products([2])[2].unit_price
    try:
        set_price(engine, 2, "99.99")
        clock.now += CATALOG_SECONDS / 2
        assert catalog.products([2])[2].unit_price == original
        clock.now += CATALOG_SECONDS / 2
        assert catalog.products([2])[2].unit_price == Decimal("99.99")
    finally:
        set_price(engine, 2, str(original))


def test_a_product_missing_from_the_copy_is_looked_up_at_once(engine: Engine) -> None:
    clock = Clock()
    catalog = CatalogCache(SqlUnitOfWorkFactory(engine), ttl=CATALOG_SECONDS, monotonic=clock)
    assert set(catalog.products([1, 3, 999])) == {1, 3}
    with engine.begin() as conn:
        conn.execute(insert(products).values(id=999, name="new", unit_price=Decimal("1.00")))
    try:
        assert set(catalog.products([1, 999])) == {1, 999}
    finally:
        with engine.begin() as conn:
            conn.execute(delete(products).where(products.c.id == 999))


def test_an_unknown_product_is_still_rejected(engine: Engine) -> None:
    from app.services.ordering import OrderPlacement, PlaceOrder
    from tests.support import FakeInventory, FakePayments

    class Flags:
        def is_enabled(self, name: str) -> bool:
            return True

    placement = OrderPlacement(uow=SqlUnitOfWorkFactory(engine), inventory=FakeInventory(), payments=FakePayments(),
                               flags=Flags(), request_deadline=10.0, inventory_total_timeout=8.0, monotonic=Clock())
    placement.place(PlaceOrder(7, ((1, 1),)))
    with pytest.raises(UnknownProduct):
        placement.place(PlaceOrder(7, ((1, 1), (21, 1))))
