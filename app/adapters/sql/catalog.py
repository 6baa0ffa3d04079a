"""The catalog: products and their prices, seeded by the migrations."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import Connection, select

from app.adapters.sql.tables import products
from app.domain import Product


class SqlCatalog:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def products(self) -> list[Product]:
        rows = self._conn.execute(select(products).order_by(products.c.id))
        return [Product(r.id, r.name, Decimal(r.unit_price)) for r in rows]

    def products_by_id(self, ids: Iterable[int]) -> dict[int, Product]:
        rows = self._conn.execute(select(products).where(products.c.id.in_(list(set(ids)))))
        return {r.id: Product(r.id, r.name, Decimal(r.unit_price)) for r in rows}
