"""The customers' data keys (adapters/data_keys.py) on every backend: one per customer,
found again by id, erased by deletion, re-wrapped on rotation, created once under a
race."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError

from fulfillment.adapters import tables as t
from fulfillment.adapters.data_keys import DataKeys
from fulfillment.adapters.phi_crypto import MasterKeys, open_field, seal_field
from fulfillment.bootstrap import App

OLD = MasterKeys.generate("m1")
NEW = MasterKeys.generate("m2")


def in_tx(engine: Engine, setting: str, work: object) -> object:
    with engine.begin() as conn:
        return work(DataKeys(conn, MasterKeys.parse(setting)))  # type: ignore[operator]


def test_a_customer_gets_one_data_key_found_again_by_its_id(app: App) -> None:
    first = in_tx(app.engine, OLD, lambda k: k.for_customer("cust-1"))
    again = in_tx(app.engine, OLD, lambda k: k.for_customer("cust-1"))
    other = in_tx(app.engine, OLD, lambda k: k.for_customer("cust-2"))

    assert first == again and first != other
    key_id, key = first  # type: ignore[misc]
    assert in_tx(app.engine, OLD, lambda k: k.by_id(key_id)) == key
    with app.engine.connect() as conn:
        stored = conn.execute(select(t.data_keys.c.wrapped)).scalars().all()
    assert all(key.hex() not in w and str(key) not in w for w in stored)


def test_forgetting_a_customer_erases_what_their_key_sealed_and_a_new_order_gets_a_new_key(
    app: App,
) -> None:
    key_id, key = in_tx(app.engine, OLD, lambda k: k.for_customer("cust-1"))  # type: ignore[misc]
    sealed = seal_field(key_id, key, "Ada Lovelace", "order-o-1#1#patient_name")

    assert in_tx(app.engine, OLD, lambda k: k.forget("cust-1")) is not None
    assert in_tx(app.engine, OLD, lambda k: k.forget("cust-1")) is None
    assert in_tx(app.engine, OLD, lambda k: k.by_id(key_id)) is None
    assert in_tx(app.engine, OLD, lambda k: k.of_customer("cust-1")) is None
    new_id, new_key = in_tx(app.engine, OLD, lambda k: k.for_customer("cust-1"))  # type: ignore[misc]
    assert new_id != key_id
    with pytest.raises(Exception):  # noqa: B017 - any failure: the old field is gone for good
        open_field(new_key, sealed, "order-o-1#1#patient_name")


def test_rotation_rewraps_every_key_then_the_old_master_key_can_go(app: App) -> None:
    made = [in_tx(app.engine, OLD, lambda k, c=c: k.for_customer(c)) for c in ("a", "b", "c")]

    rotated = f"{NEW},{OLD}"
    assert in_tx(app.engine, rotated, lambda k: k.rewrap(limit=2)) == 2
    assert in_tx(app.engine, rotated, lambda k: k.rewrap(limit=2)) == 1
    assert in_tx(app.engine, rotated, lambda k: k.rewrap(limit=2)) == 0

    for customer, (key_id, key) in zip(("a", "b", "c"), made, strict=True):  # type: ignore[misc]
        assert in_tx(app.engine, NEW, lambda k, i=key_id: k.by_id(i)) == key
        assert in_tx(app.engine, NEW, lambda k, c=customer: k.of_customer(c)) == (key_id, key)
    with app.engine.connect() as conn:
        masters = set(conn.execute(select(t.data_keys.c.master_key_id)).scalars())
    assert masters == {"m2"}


def test_two_first_orders_of_one_customer_at_once_share_one_key(app: App) -> None:
    results: list[object] = []
    barrier = threading.Barrier(4)

    def first_order() -> None:
        barrier.wait()
        for _attempt in range(5):  # the bus retries a transaction that lost the race
            try:
                results.append(in_tx(app.engine, OLD, lambda k: k.for_customer("cust-race")))
                return
            except (IntegrityError, OperationalError):  # a unique clash, or a deadlock
                continue

    threads = [threading.Thread(target=first_order) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 4 and len(set(map(repr, results))) == 1
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(t.data_keys).where(t.data_keys.c.customer_id == "cust-race")
        ).all()
    assert len(rows) == 1
