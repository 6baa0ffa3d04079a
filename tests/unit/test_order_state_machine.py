"""The order's allowed moves, checked exhaustively over every pair of states."""

from __future__ import annotations

from decimal import Decimal
from itertools import product

import pytest

from app.domain import (
    InvalidTransition,
    InventorySource,
    OrderLine,
    OrderStatus,
    StockRequest,
    can_transition,
    check_transition,
    worst_source,
)

ALLOWED = {
    (OrderStatus.PAYMENT_PENDING, OrderStatus.CONFIRMED),
    (OrderStatus.PAYMENT_PENDING, OrderStatus.PAYMENT_FAILED),
    (OrderStatus.PAYMENT_FAILED, OrderStatus.PAYMENT_PENDING),
}


@pytest.mark.parametrize(("current", "target"), list(product(OrderStatus, OrderStatus)))
def test_only_the_contract_transitions_are_allowed(current: OrderStatus, target: OrderStatus) -> None:
    allowed = (current, target) in ALLOWED
    assert can_transition(current, target) is allowed
    if allowed:
        check_transition(current, target)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, target)


def test_confirmed_is_final() -> None:
    assert not any(can_transition(OrderStatus.CONFIRMED, target) for target in OrderStatus)


def test_stock_is_checked_per_distinct_product_with_quantities_summed() -> None:
    assert StockRequest.of([(1, 2), (3, 1), (1, 5)]).quantities == {1: 7, 3: 1}


@pytest.mark.parametrize(
    ("sources", "worst"),
    [
        ([InventorySource.LIVE, InventorySource.LIVE], InventorySource.LIVE),
        ([InventorySource.LIVE, InventorySource.CACHE], InventorySource.CACHE),
        ([InventorySource.CACHE, InventorySource.UNAVAILABLE, InventorySource.LIVE], InventorySource.UNAVAILABLE),
    ],
)
def test_the_order_reports_the_worst_inventory_source(sources: list[InventorySource], worst: InventorySource) -> None:
    assert worst_source(sources) is worst


def test_line_totals_are_exact_decimals() -> None:
    assert OrderLine(1, 3, Decimal("0.10")).line_total == Decimal("0.30")
