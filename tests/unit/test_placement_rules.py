"""The degrade-or-confirm decision and the idempotency binding, on the in-memory unit of work: the rules of
`place_order`, without a database or a server, in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.domain import OrderStatus, PaymentDeclined, UnknownProduct
from app.services.idempotency import IdempotencyStore, KeyInUse, KeyReused, Replayed
from app.services.ordering import OrderMayBeStored, OrderPlacement, PlaceOrder
from app.services.unit_of_work import PaymentDue, StorageError, StoredResponse
from tests.fake_unit_of_work import MemoryUnitOfWorkFactory
from tests.support import FakeInventory, FakePayments

ORDER = PlaceOrder(customer_id=7, lines=((1, 2),))


class Flags:
    def __init__(self, **flags: bool) -> None:
        self.flags = flags

    def is_enabled(self, name: str) -> bool:
        return self.flags.get(name, True)


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def placement(uow: MemoryUnitOfWorkFactory, payments: FakePayments | None = None, **flags: bool) -> OrderPlacement:
    return OrderPlacement(uow=uow, inventory=FakeInventory(), payments=payments or FakePayments(),
                          flags=Flags(**flags), request_deadline=10.0, inventory_total_timeout=8.0,
                          monotonic=Ticks())


def stored(uow: MemoryUnitOfWorkFactory, order_id: str) -> Any:
    with uow(read_only=True) as unit:
        return unit.orders.get(order_id), unit.outbox.payments.get(order_id)


def test_a_captured_real_time_payment_confirms_the_order_and_closes_its_job() -> None:
    uow = MemoryUnitOfWorkFactory()
    order = placement(uow).place(ORDER)
    assert order.status is OrderStatus.CONFIRMED
    found, job = stored(uow, order.id)
    assert found.status is OrderStatus.CONFIRMED and job.state == "done"
    with uow(read_only=True) as unit:
        assert unit.outbox.notifications.state_of(order.id, "order_confirmed") == "pending"
    assert uow.published == []  # nothing for the workers to do


def test_a_failed_payment_leaves_the_order_pending_with_its_job_due_now_and_the_workers_told() -> None:
    uow = MemoryUnitOfWorkFactory()
    order = placement(uow, FakePayments(outcome="failed")).place(ORDER)
    assert order.status is OrderStatus.PAYMENT_PENDING
    _, job = stored(uow, order.id)
    assert job.state == "pending" and job.next_attempt_at <= datetime.now(UTC)
    assert uow.published == [PaymentDue(order.id)]


def test_with_real_time_payments_off_the_order_is_pending_and_no_call_is_made() -> None:
    uow, payments = MemoryUnitOfWorkFactory(), FakePayments()
    order = placement(uow, payments, RealTimePayments=False).place(ORDER)
    assert order.status is OrderStatus.PAYMENT_PENDING
    assert payments.calls == []
    assert uow.published == [PaymentDue(order.id)]


def test_with_the_circuit_open_the_job_waits_for_the_break_to_end_and_nobody_is_told_now() -> None:
    uow = MemoryUnitOfWorkFactory()
    break_end = datetime.now(UTC) + timedelta(seconds=30)
    payments = FakePayments(open_circuit=True, break_until=break_end.timestamp())
    order = placement(uow, payments).place(ORDER)
    _, job = stored(uow, order.id)
    assert abs((job.next_attempt_at - break_end).total_seconds()) < 0.01
    assert payments.calls == [] and uow.published == []


def test_a_declined_payment_fails_the_order() -> None:
    uow = MemoryUnitOfWorkFactory()
    with pytest.raises(PaymentDeclined) as declined:
        placement(uow).place(PlaceOrder(customer_id=402, lines=((1, 1),)))
    assert declined.value.order.status is OrderStatus.PAYMENT_FAILED


def test_an_unknown_product_stores_nothing() -> None:
    uow = MemoryUnitOfWorkFactory()
    with pytest.raises(UnknownProduct):
        placement(uow).place(PlaceOrder(customer_id=7, lines=((99, 1),)))
    assert uow.store.data.orders == {}


def test_a_store_that_fails_after_the_order_is_stored_answers_the_order_pending() -> None:
    uow = MemoryUnitOfWorkFactory()

    class FailsAfterTheCall(FakePayments):
        def capture(self, **kwargs: Any) -> Any:
            result = super().capture(**kwargs)
            uow.store.down = True  # the database goes away while the payment call runs
            return result

    order = placement(uow, FailsAfterTheCall()).place(ORDER)
    uow.store.down = False
    assert order.status is OrderStatus.PAYMENT_PENDING
    found, job = stored(uow, order.id)
    assert found.status is OrderStatus.PAYMENT_PENDING and job.state == "pending"  # the job settles it


@pytest.mark.parametrize(("failure", "outcome"), [("after", "stored"), ("before", "not stored")])
def test_a_commit_whose_outcome_is_unknown_is_read_back(failure: str, outcome: str) -> None:
    uow = MemoryUnitOfWorkFactory()
    uow.store.fail_next_commit = failure
    if outcome == "stored":
        order = placement(uow).place(ORDER)
        assert stored(uow, order.id)[0] is not None
    else:
        with pytest.raises(StorageError):
            placement(uow).place(ORDER)
        assert uow.store.data.orders == {}


def test_a_commit_nobody_can_check_names_the_order() -> None:
    uow = MemoryUnitOfWorkFactory()
    uow.store.fail_next_commit = "after"
    original = uow.__call__

    def unreadable(**kwargs: Any) -> Any:
        if kwargs.get("read_only") and uow.store.data.orders:  # gone right after the COMMIT
            raise StorageError("the database went away")
        return original(**kwargs)

    uow.__call__ = unreadable  # type: ignore[method-assign]
    service = placement(uow)
    service.uow = unreadable  # type: ignore[assignment]
    with pytest.raises(OrderMayBeStored) as unknown:
        service.place(ORDER)
    assert unknown.value.order_id in uow.store.data.orders


# --- one key, one order ---------------------------------------------------------------------------------


def idempotent(uow: MemoryUnitOfWorkFactory, clock: Callable[[], datetime] | None = None) -> IdempotencyStore:
    return IdempotencyStore(uow, lock_for=timedelta(seconds=10), now=clock or (lambda: datetime.now(UTC)))


def created(order_id: str) -> StoredResponse:
    return StoredResponse(201, f'{{"id": "{order_id}"}}', {"Location": f"/api/orders/{order_id}"})


def run(store: IdempotencyStore, uow: MemoryUnitOfWorkFactory, key: str, fingerprint: str = "fp") -> Any:
    service = placement(uow)

    def produce(binding: Any) -> StoredResponse:
        return created(service.place(ORDER, binding=binding).id)

    return store.run(key, fingerprint, produce, current=created)


def test_a_repeated_key_is_answered_with_the_first_response() -> None:
    uow = MemoryUnitOfWorkFactory()
    store = idempotent(uow)
    first = run(store, uow, "k")
    again = run(store, uow, "k")
    assert isinstance(again, Replayed) and again.response == first
    assert len(uow.store.data.orders) == 1


def test_a_key_reused_with_another_body_is_refused() -> None:
    uow = MemoryUnitOfWorkFactory()
    store = idempotent(uow)
    run(store, uow, "k")
    with pytest.raises(KeyReused):
        run(store, uow, "k", fingerprint="other")


def test_a_key_whose_request_died_after_storing_its_order_answers_with_that_order() -> None:
    uow = MemoryUnitOfWorkFactory()
    moment = [datetime.now(UTC)]
    store = idempotent(uow, lambda: moment[0])
    service = placement(uow)

    def dies(binding: Any) -> StoredResponse:
        service.place(ORDER, binding=binding)
        uow.store.down = True  # killed: nothing more is written for this request
        raise SystemExit("the process was killed")

    with pytest.raises(SystemExit):
        store.run("k", "fp", dies, current=created)
    uow.store.down = False
    [order_id] = uow.store.data.orders
    with pytest.raises(KeyInUse):  # the claim lasts the request deadline
        run(store, uow, "k")
    moment[0] += timedelta(seconds=11)
    again = run(store, uow, "k")
    assert isinstance(again, Replayed) and again.response == created(order_id)
    assert list(uow.store.data.orders) == [order_id]


def test_a_failure_before_the_order_is_stored_frees_the_key() -> None:
    uow = MemoryUnitOfWorkFactory()
    store = idempotent(uow)

    def fails(binding: Any) -> StoredResponse:
        raise StorageError("the database could not be reached")

    with pytest.raises(StorageError):
        store.run("k", "fp", fails, current=created)
    first = run(store, uow, "k")
    assert not isinstance(first, Replayed)
    assert len(uow.store.data.orders) == 1


def test_a_request_whose_claim_was_taken_over_stores_no_order() -> None:
    uow = MemoryUnitOfWorkFactory()
    moment = [datetime.now(UTC)]
    store = idempotent(uow, lambda: moment[0])
    service = placement(uow)
    taken_over: list[Any] = []

    def slow(binding: Any) -> StoredResponse:
        # This request stalls past its claim; a retry of the key takes it over and places the order.
        moment[0] += timedelta(seconds=11)
        taken_over.append(run(store, uow, "k"))
        return created(service.place(ORDER, binding=binding).id)

    with pytest.raises(KeyInUse):
        store.run("k", "fp", slow, current=created)
    assert len(uow.store.data.orders) == 1
    assert not isinstance(taken_over[0], Replayed)
