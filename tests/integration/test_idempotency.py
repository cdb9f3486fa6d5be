"""Idempotency keys of order creation, on SQLite, PostgreSQL and MariaDB.

The key is stored in the transaction that creates the order: one key, one order, even
for concurrent requests, and no key without its order.
"""

from __future__ import annotations

import threading
import uuid
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.idempotency import find, request_hash
from fulfillment.bootstrap import App
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.commands import CreateOrder
from fulfillment.service_layer.handlers import IdempotencyKeyReused
from fulfillment.service_layer.ports import IdempotencyRecord

BODY = {"customer_id": "c-1", "items": [{"sku": "ASPIRIN", "quantity": 2}]}


def create_order(key: str | None, body: dict[str, Any] = BODY) -> CreateOrder:
    order_id = str(uuid.uuid4())
    record = None
    if key is not None:
        record = IdempotencyRecord(
            key, request_hash(body), order_id, {"order_id": order_id, "status": "pending"}
        )
    return CreateOrder(
        order_id=order_id,
        customer_id=str(body["customer_id"]),
        items=tuple(OrderLine(i["sku"], i["quantity"]) for i in body["items"]),
        prescription=PrescriptionDetails("dr-1", "Ada", date(2099, 1, 1)),
        shipping_address=ShippingAddress("Ada", "1 Main St", "Springfield", "12345", "US"),
        idempotency=record,
    )


def count(app: App, table: Any, *where: Any) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def orders_created(app: App) -> int:
    return count(app, t.events, t.events.c.type == "OrderCreated")


def test_an_order_placed_twice_with_one_key_is_created_once(app: App) -> None:
    first = app.bus.handle(create_order("key-1"))
    again = app.bus.handle(create_order("key-1"))
    assert again == first
    assert orders_created(app) == 1
    assert count(app, t.jobs) == 1  # one saga started, not two
    stored = find(app.engine, "key-1")
    assert stored is not None
    assert stored.order_id == first
    assert stored.response == {"order_id": first, "status": "pending"}


def test_keys_differing_only_in_case_are_different_keys(app: App) -> None:
    lower = app.bus.handle(create_order("key-a"))
    upper = app.bus.handle(create_order("KEY-A", {**BODY, "customer_id": "c-2"}))
    assert lower != upper
    assert orders_created(app) == 2


def test_a_key_reused_for_another_request_is_refused_and_changes_nothing(app: App) -> None:
    app.bus.handle(create_order("key-2"))
    with pytest.raises(IdempotencyKeyReused):
        app.bus.handle(create_order("key-2", {**BODY, "customer_id": "someone-else"}))
    assert orders_created(app) == 1


def test_orders_without_a_key_are_all_created(app: App) -> None:
    app.bus.handle(create_order(None))
    app.bus.handle(create_order(None))
    assert orders_created(app) == 2
    assert count(app, t.idempotency_keys) == 0


def test_concurrent_requests_with_one_key_create_exactly_one_order(app: App) -> None:
    commands = [create_order("key-3") for _ in range(10)]
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(commands))

    def run(command: CreateOrder) -> None:
        barrier.wait()
        try:
            results.append(app.bus.handle(command))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in commands]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert orders_created(app) == 1
    assert count(app, t.jobs) == 1


def test_no_key_is_stored_when_the_order_is_not(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_append(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(SqlAlchemyEventStore, "append", broken_append)
    with pytest.raises(RuntimeError):
        app.bus.handle(create_order("key-4"))
    monkeypatch.undo()
    assert find(app.engine, "key-4") is None
    order_id = app.bus.handle(create_order("key-4"))  # the client's retry goes through
    assert orders_created(app) == 1
    assert find(app.engine, "key-4") is not None
    assert find(app.engine, "key-4").order_id == order_id  # type: ignore[union-attr]


def test_the_request_hash_ignores_key_order_but_not_values() -> None:
    assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})
    assert request_hash({"b": [1, 2]}) != request_hash({"b": [2, 1]})
