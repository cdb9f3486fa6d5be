"""Idempotency keys of `POST /orders`, stored durably next to the orders they created.

The key is the table's primary key and is inserted in the transaction that appends
`OrderCreated`, so one key yields exactly one order, whatever the number of API
processes, restarts or concurrent retries: a concurrent twin blocks on (or collides
with) the key, fails, and when the command bus runs it again it finds the winner's row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.service_layer import ports

Now = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(payload: Any) -> str:
    """SHA-256 of the canonical JSON of a request: key order and spacing do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class SqlAlchemyIdempotencyKeys(ports.IdempotencyKeys):
    """Works inside the caller's transaction (the unit of work's connection)."""

    def __init__(self, conn: Connection, now: Now = _utcnow) -> None:
        self.conn = conn
        self.now = now

    def get(self, key: str) -> ports.IdempotencyRecord | None:
        row = self.conn.execute(
            select(
                t.idempotency_keys.c.key,
                t.idempotency_keys.c.request_hash,
                t.idempotency_keys.c.order_id,
                t.idempotency_keys.c.response,
            ).where(t.idempotency_keys.c.key == key)
        ).first()
        if row is None:
            return None
        return ports.IdempotencyRecord(
            key=row.key,
            request_hash=row.request_hash,
            order_id=row.order_id,
            response=dict(row.response),
        )

    def add(self, record: ports.IdempotencyRecord) -> None:
        self.conn.execute(
            insert(t.idempotency_keys).values(
                key=record.key,
                request_hash=record.request_hash,
                order_id=record.order_id,
                response=record.response,
                created_at=self.now(),
            )
        )


def find(engine: Engine, key: str) -> ports.IdempotencyRecord | None:
    """Read one key outside any unit of work (a read-only transaction)."""
    with read_connection(engine) as conn:
        return SqlAlchemyIdempotencyKeys(conn).get(key)
