"""Idempotency keys of `POST /orders`, stored durably next to the orders they created.

The key is the table's primary key and is inserted in the transaction that appends
`OrderCreated`, so one key yields exactly one order, whatever the number of API
processes, restarts or concurrent retries: a concurrent twin blocks on (or collides
with) the key, fails, and when the command bus runs it again it finds the winner's row.

Keys expire (FULFILLMENT_IDEMPOTENCY_TTL_SECONDS): an expired key is one never seen, and
the workers delete expired rows in batches (`prune_expired`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, false, insert, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import delete_batch, read_connection
from fulfillment.service_layer import ports

Now = Callable[[], datetime]
#: Expired rows deleted per statement by `prune_expired`.
PRUNE_BATCH = 1000


def _utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(payload: Any) -> str:
    """SHA-256 of the canonical JSON of a request: key order and spacing do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class SqlAlchemyIdempotencyKeys(ports.IdempotencyKeys):
    """Works inside the caller's transaction (the unit of work's connection).

    With `ttl_seconds`, a key stored longer ago is absent to `get`, and `add` replaces
    its row (which the workers may not have pruned yet).
    """

    def __init__(
        self, conn: Connection, now: Now = _utcnow, ttl_seconds: float | None = None
    ) -> None:
        self.conn = conn
        self.now = now
        self.ttl_seconds = ttl_seconds
        self._expired: set[str] = set()

    def _cutoff(self) -> datetime | None:
        if self.ttl_seconds is None:
            return None
        return self.now() - timedelta(seconds=self.ttl_seconds)

    def get(self, key: str) -> ports.IdempotencyRecord | None:
        cutoff = self._cutoff()
        keys = t.idempotency_keys
        # Compared by the database, in the column's own type (time zones and all).
        expired = (keys.c.created_at < cutoff) if cutoff is not None else false()
        row = self.conn.execute(
            select(
                keys.c.key,
                keys.c.request_hash,
                keys.c.order_id,
                keys.c.response,
                expired.label("expired"),
            ).where(keys.c.key == key)
        ).first()
        if row is None:
            return None
        if row.expired:
            self._expired.add(key)
            return None
        return ports.IdempotencyRecord(
            key=row.key,
            request_hash=row.request_hash,
            order_id=row.order_id,
            response=dict(row.response),
        )

    def add(self, record: ports.IdempotencyRecord) -> None:
        cutoff = self._cutoff()
        if record.key in self._expired and cutoff is not None:
            # The expired row makes way (still expired: a concurrent twin's fresh row stays
            # and this insert collides with it, as with any concurrent twin).
            self.conn.execute(
                delete(t.idempotency_keys).where(
                    t.idempotency_keys.c.key == record.key,
                    t.idempotency_keys.c.created_at < cutoff,
                )
            )
            self._expired.discard(record.key)
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


def prune_expired(
    engine: Engine, ttl_seconds: float, *, batch: int = PRUNE_BATCH, now: Now = _utcnow
) -> int:
    """Delete at most `batch` keys stored more than `ttl_seconds` ago, in one short
    transaction (periodic maintenance of the workers, never on a saga's path); returns
    how many were deleted (`batch`: there may be more)."""
    keys = t.idempotency_keys
    cutoff = now() - timedelta(seconds=ttl_seconds)
    return delete_batch(engine, keys, keys.c.key, keys.c.created_at < cutoff, batch)
