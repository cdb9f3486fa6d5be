"""Idempotency keys over HTTP are scoped to the API key that sends them and expire after
FULFILLMENT_IDEMPOTENCY_TTL_SECONDS; the workers prune expired keys. On SQLite,
PostgreSQL and MariaDB."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from saga_testkit import run_jobs
from sqlalchemy import func, insert, select, update

from fulfillment.adapters import tables as t
from fulfillment.adapters.idempotency import prune_expired
from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.saga_engine import (
    cancel_idempotency,
    order_idempotency,
    signal_idempotency,
)

KEYS = (
    "shop-a:client:secret-a",
    "shop-b:client:secret-b",
    "rx-1:pharmacist:secret-rx-1",
    "rx-2:pharmacist:secret-rx-2",
)
SHOP_A = {"Authorization": "Bearer secret-a"}
SHOP_B = {"Authorization": "Bearer secret-b"}
RX_1 = {"Authorization": "Bearer secret-rx-1"}
RX_2 = {"Authorization": "Bearer secret-rx-2"}
TTL = 3600.0


def order_body(customer: str = "cust-1") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "items": [{"sku": "ASPIRIN", "quantity": 1}],
        "prescription": {
            "prescriber_id": "dr-who",
            "patient_name": "Ada Lovelace",
            "expires_on": "2099-12-31",
        },
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "US",
        },
    }


def orders_created(app: App) -> int:
    query = select(func.count()).select_from(t.events).where(t.events.c.type == "OrderCreated")
    with app.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def stored_keys(app: App) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.idempotency_keys)).scalar_one())


def backdate_keys(app: App, seconds: float) -> None:
    """Every stored key as if stored `seconds` earlier."""
    with app.engine.begin() as conn:
        rows = conn.execute(select(t.idempotency_keys.c.key, t.idempotency_keys.c.created_at))
        for key, created_at in rows.all():
            conn.execute(
                update(t.idempotency_keys)
                .where(t.idempotency_keys.c.key == key)
                .values(created_at=created_at - timedelta(seconds=seconds))
            )


@pytest.fixture
def keyed(make_app: Callable[..., App]) -> App:
    app = make_app(api_keys=KEYS, idempotency_ttl_seconds=TTL)
    app.bus.handle(c.SetInventory("ASPIRIN", 100))
    return app


@pytest.fixture
def http(keyed: App) -> Iterator[TestClient]:
    with TestClient(create_api(keyed)) as client:
        yield client


def place(http: TestClient, headers: dict[str, str], key: str, customer: str = "cust-1") -> Any:
    return http.post(
        "/orders", json=order_body(customer), headers={**headers, "Idempotency-Key": key}
    )


def test_one_key_under_two_api_keys_makes_two_orders(keyed: App, http: TestClient) -> None:
    first = place(http, SHOP_A, "checkout-1")
    other = place(http, SHOP_B, "checkout-1")
    assert (first.status_code, other.status_code) == (202, 202), other.text
    assert first.json()["order_id"] != other.json()["order_id"]
    assert orders_created(keyed) == 2


def test_one_key_under_one_api_key_is_a_replay_of_the_first_order(
    keyed: App, http: TestClient
) -> None:
    first = place(http, SHOP_A, "checkout-2")
    again = place(http, SHOP_A, "checkout-2")
    assert first.status_code == 202
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert orders_created(keyed) == 1
    # Under the other key, the same key with another body is no reuse: a key of its own.
    assert place(http, SHOP_B, "checkout-2", customer="cust-9").status_code == 202
    # Under the first, it is.
    reused = place(http, SHOP_A, "checkout-2", customer="cust-9")
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_keys_are_stored_hashed_never_as_sent(keyed: App, http: TestClient) -> None:
    place(http, SHOP_A, "checkout-of-ada-lovelace")
    with keyed.engine.connect() as conn:
        keys = conn.execute(select(t.idempotency_keys.c.key)).scalars().all()
    assert len(keys) == 1
    assert "ada" not in keys[0] and keys[0].startswith("order:")


def test_an_expired_key_makes_a_new_order(keyed: App, http: TestClient) -> None:
    first = place(http, SHOP_A, "checkout-3")
    backdate_keys(keyed, TTL - 60)  # a minute left: still a replay
    assert place(http, SHOP_A, "checkout-3").status_code == 200
    backdate_keys(keyed, 120)  # a minute past the TTL
    fresh = place(http, SHOP_A, "checkout-3")
    assert fresh.status_code == 202, fresh.text
    assert fresh.json()["order_id"] != first.json()["order_id"]
    assert orders_created(keyed) == 2
    assert stored_keys(keyed) == 1  # the expired row made way for the new one
    # ...which holds from now on.
    again = place(http, SHOP_A, "checkout-3")
    assert (again.status_code, again.json()) == (200, fresh.json())


def test_an_expired_key_with_another_body_is_no_reuse(keyed: App, http: TestClient) -> None:
    place(http, SHOP_A, "checkout-4")
    backdate_keys(keyed, TTL + 1)
    assert place(http, SHOP_A, "checkout-4", customer="cust-2").status_code == 202
    assert orders_created(keyed) == 2


def test_a_cancellation_key_is_scoped_to_its_sender(keyed: App, http: TestClient) -> None:
    order_id = place(http, SHOP_A, "checkout-5").json()["order_id"]
    cancel = f"/orders/{order_id}/cancel"
    key = {"Idempotency-Key": "cancel-1"}
    first = http.post(cancel, json={"reason": "customer_request"}, headers={**SHOP_A, **key})
    assert first.status_code == 202, first.text
    replay = http.post(cancel, json={"reason": "customer_request"}, headers={**SHOP_A, **key})
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (200, "true")
    # Another sender's same key with another body: its own request, not a reuse (409).
    other = http.post(cancel, json={"reason": "prescriber_cancelled"}, headers={**SHOP_B, **key})
    assert other.status_code == 202, other.text
    assert "Idempotent-Replayed" not in other.headers


def test_a_pharmacists_decision_key_is_scoped_to_its_sender(
    make_app: Callable[..., App],
) -> None:
    app = make_app(api_keys=KEYS, verification_required_for="all")
    app.bus.handle(c.SetInventory("ASPIRIN", 100))
    with TestClient(create_api(app)) as http:
        order_id = place(http, SHOP_A, "checkout-6").json()["order_id"]
        run_jobs(app)  # the saga now waits for a pharmacist
        decide = f"/orders/{order_id}/verification"
        key = {"Idempotency-Key": "decision-1"}
        approve = {"decision": "approve", "pharmacist_id": "ph-1"}
        first = http.post(decide, json=approve, headers={**RX_1, **key})
        assert first.status_code == 202, first.text
        assert http.post(decide, json=approve, headers={**RX_1, **key}).status_code == 200
        # The other pharmacist's same key and body is a decision of theirs: the order
        # no longer waits for one (not a replay of the first pharmacist's).
        other = http.post(decide, json=approve, headers={**RX_2, **key})
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "verification_not_pending"


def test_the_stored_keys_differ_by_sender_and_by_kind() -> None:
    orders = {order_idempotency(s, "k", "h", "o-1", {}).key for s in ("a", "b", "anonymous")}
    signals = {signal_idempotency("o-1", "approve", "k", "h", sender=s).key for s in ("a", "b")}
    cancels = {cancel_idempotency("o-1", "k", "h", sender=s).key for s in ("a", "b")}
    assert len(orders | signals | cancels) == 7
    assert all(len(key) <= 200 for key in orders | signals | cancels)


def test_without_keys_every_request_is_one_scope(make_app: Callable[..., App]) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory("ASPIRIN", 100))
    with TestClient(create_api(app), base_url=LOOPBACK) as http:
        first = place(http, {}, "checkout-7")
        again = place(http, {}, "checkout-7")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()


# --- pruning -----------------------------------------------------------------------------


def add_keys(app: App, count: int, age_seconds: float, prefix: str) -> list[str]:
    now = datetime.now(UTC)
    keys = [f"{prefix}-{uuid.uuid4()}" for _ in range(count)]
    with app.engine.begin() as conn:
        for key in keys:
            conn.execute(
                insert(t.idempotency_keys).values(
                    key=key,
                    request_hash="h",
                    order_id="o",
                    response={},
                    created_at=now - timedelta(seconds=age_seconds),
                )
            )
    return keys


def remaining(app: App) -> set[str]:
    with app.engine.connect() as conn:
        return set(conn.execute(select(t.idempotency_keys.c.key)).scalars())


def test_pruning_deletes_only_expired_keys_a_batch_at_a_time(keyed: App) -> None:
    add_keys(keyed, 5, TTL + 60, "old")
    fresh = add_keys(keyed, 3, TTL - 60, "fresh")
    assert prune_expired(keyed.engine, TTL, batch=2) == 2
    assert prune_expired(keyed.engine, TTL, batch=2) == 2
    assert prune_expired(keyed.engine, TTL, batch=2) == 1
    assert prune_expired(keyed.engine, TTL, batch=2) == 0
    assert remaining(keyed) == set(fresh)


def test_a_worker_prunes_expired_keys(keyed: App) -> None:
    add_keys(keyed, 3, TTL + 60, "old")
    fresh = add_keys(keyed, 2, 0, "fresh")
    Worker(keyed, 1).run(until_idle=True, timeout=30)
    assert remaining(keyed) == set(fresh)


def test_a_retry_across_the_upgrade_finds_the_order_its_unscoped_key_made(
    keyed: App, http: TestClient
) -> None:
    """Before keys were scoped (migration 0009) an order's key was stored as sent: a
    client retrying across the upgrade gets its first order, not a second one."""
    first = place(http, SHOP_A, "before-the-upgrade")
    order_id = first.json()["order_id"]
    with keyed.engine.begin() as conn:  # the row as the old release wrote it
        conn.execute(
            update(t.idempotency_keys).values(key="before-the-upgrade", response=first.json())
        )
    before = orders_created(keyed)

    again = place(http, SHOP_A, "before-the-upgrade")
    changed = http.post(
        "/orders",
        json=order_body("someone-else"),
        headers={**SHOP_A, "Idempotency-Key": "before-the-upgrade"},
    )

    assert again.status_code == 200, again.text
    assert again.json() == {"order_id": order_id, "status": "pending"}
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert orders_created(keyed) == before
