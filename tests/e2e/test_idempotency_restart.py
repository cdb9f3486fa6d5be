"""Restarts of `fulfillment serve`: idempotency keys are durable, and SIGTERM is graceful."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

from sqlalchemy import func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine

from .server import poll, start_server
from .test_http_api import order_body, settled


def count_events(database_url: str, event_type: str) -> int:
    engine = create_nullpool_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(t.events).where(t.events.c.type == event_type)
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def test_an_idempotency_key_holds_across_a_server_restart(
    database_url: str, tmp_path: Path
) -> None:
    body = order_body("ASPIRIN")
    key = f"checkout-{uuid.uuid4()}"
    with start_server(database_url, args=["--workers", "0"], log_dir=tmp_path) as first:
        with first.client() as client:
            client.put("/inventory/ASPIRIN", json={"on_hand": 5})
            accepted = client.post("/orders", json=body, headers={"Idempotency-Key": key})
        assert accepted.status_code == 202
        assert first.stop() == 0

    with start_server(database_url, log_dir=tmp_path) as second, second.client() as client:
        replay = client.post("/orders", json=body, headers={"Idempotency-Key": key})
        assert replay.status_code in (200, 202)
        assert replay.json() == accepted.json()
        order = settled(client, accepted.json()["order_id"])
        assert order["status"] == "fulfilled"
    assert count_events(database_url, "OrderCreated") == 1


def test_sigterm_stops_the_server_cleanly_and_no_saga_is_lost(
    database_url: str, tmp_path: Path
) -> None:
    slow_carrier = {"FULFILLMENT_CARRIER_LATENCY_MS": "200"}
    with start_server(database_url, env=slow_carrier, log_dir=tmp_path) as server:
        with server.client() as client:
            client.put("/inventory/ASPIRIN", json={"on_hand": 100})
            placed = [
                client.post("/orders", json=order_body("ASPIRIN")).json()["order_id"]
                for _ in range(6)
            ]
            # Stop while sagas are in flight: some wait on the slow carrier.
            poll(
                lambda: count_events(database_url, "PrescriptionCreated"),
                lambda n: n >= 1,
            )
        assert server.stop(signal.SIGTERM) == 0
        assert "server stopped" in server.output()

    with start_server(database_url, log_dir=tmp_path) as restarted, restarted.client() as c:
        statuses = {settled(c, order_id)["status"] for order_id in placed}
        assert statuses == {"fulfilled"}
        assert c.get("/inventory/ASPIRIN").json()["on_hand"] == 94
