"""An API request behind SQLite's write lock answers 503 with Retry-After within
FULFILLMENT_API_LOCK_TIMEOUT_SECONDS, however long the workers' own lock bound is.

Another connection holds the write lock (`BEGIN IMMEDIATE`) while `POST /orders` wants
it, as a long transaction of another process would.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from .server import start_server
from .test_http_api import order_body

ORDER = order_body("AMOX-500")


@pytest.mark.parametrize(("setting", "bound"), [(None, 5.0), ("1.5", 1.5)])
def test_post_orders_behind_the_write_lock_answers_503_within_the_bound(
    tmp_path: Path, setting: str | None, bound: float
) -> None:
    database = tmp_path / "locked.db"
    # Workers may wait a minute for a lock; the API must not.
    env = {"FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS": "60"}
    if setting is not None:
        env["FULFILLMENT_API_LOCK_TIMEOUT_SECONDS"] = setting
    with start_server(f"sqlite:///{database}", env=env, args=["--workers", "0"]) as server:
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with server.client() as client:
                started = time.monotonic()
                response = client.post("/orders", json=ORDER, timeout=bound + 20)
                waited = time.monotonic() - started
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "busy"
        assert response.headers["Retry-After"].isdigit()
        assert bound - 0.5 <= waited <= bound + 3, f"answered after {waited:.1f} s"
        with server.client() as client:  # the lock is free again: the order goes in
            assert client.post("/orders", json=ORDER).status_code == 202
