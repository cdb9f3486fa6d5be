"""The customers' data keys, in the `data_keys` table, wrapped by the master keys
(adapters/phi_crypto.py): created with a customer's first order, looked up to seal and
open their patient data, deleted to erase it (crypto-shredding), re-wrapped when the
master key rotates. Used inside the caller's transaction (its connection).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.phi_crypto import MasterKeys, new_data_key
from fulfillment.adapters.prepared import Prepared, fetch_all

_K = t.data_keys
# On the path of every new order and of every saga's first read: the raw cursor.
_OF_CUSTOMER = Prepared(
    select(_K.c.key_id, _K.c.wrapped).where(_K.c.customer_id == bindparam("customer_id"))
)
_BY_ID = Prepared(select(_K.c.customer_id, _K.c.wrapped).where(_K.c.key_id == bindparam("key_id")))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def new_key_id() -> str:
    """A data key's id: random, so a ciphertext says nothing about whose it is."""
    return "k" + secrets.token_hex(12)


class DataKeys:
    """The data keys, seen through one connection (its transaction)."""

    def __init__(
        self, conn: Connection, masters: MasterKeys, now: Callable[[], datetime] = _utcnow
    ) -> None:
        self.conn = conn
        self.masters = masters
        self.now = now

    def of_customer(self, customer_id: str) -> tuple[str, bytes] | None:
        """The customer's data key (its id and bytes), if they have one."""
        rows = fetch_all(self.conn, _OF_CUSTOMER, {"customer_id": customer_id})
        if not rows:
            return None
        key_id, wrapped = rows[0]
        return str(key_id), self.masters.unwrap(str(wrapped), customer_id)

    def for_customer(self, customer_id: str) -> tuple[str, bytes]:
        """The customer's data key, created if they have none. Two transactions creating
        one at once: the unique customer id lets one in; the other's statement fails
        and its caller's transaction is retried, then finds the key."""
        found = self.of_customer(customer_id)
        if found is not None:
            return found
        key_id, key = new_key_id(), new_data_key()
        # A savepoint: the conflict, if any, leaves the caller's transaction usable.
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    insert(_K).values(
                        key_id=key_id,
                        customer_id=customer_id,
                        wrapped=self.masters.wrap(key, customer_id),
                        master_key_id=self.masters.current,
                        created_at=self.now(),
                    )
                )
        except IntegrityError:
            found = self.of_customer(customer_id)
            if found is None:
                raise
            return found
        return key_id, key

    def by_id(self, key_id: str) -> bytes | None:
        """A data key by its id (what a sealed field names); None once erased."""
        rows = fetch_all(self.conn, _BY_ID, {"key_id": key_id})
        if not rows:
            return None
        customer_id, wrapped = rows[0]
        return self.masters.unwrap(str(wrapped), str(customer_id))

    def forget(self, customer_id: str) -> str | None:
        """Delete the customer's data key: every field it sealed reads as erased. Its id,
        or None when they had none (already forgotten, or never ordered)."""
        key_id = self.conn.execute(
            select(_K.c.key_id).where(_K.c.customer_id == customer_id)
        ).scalar_one_or_none()
        if key_id is not None:
            self.conn.execute(delete(_K).where(_K.c.key_id == key_id))
        return key_id

    def rewrap(self, limit: int = 500) -> int:
        """Re-wrap up to `limit` data keys still under an older master key with the
        current one (rotation); returns how many. Run until it returns 0."""
        rows = self.conn.execute(
            select(_K.c.key_id, _K.c.customer_id, _K.c.wrapped)
            .where(_K.c.master_key_id != self.masters.current)
            .order_by(_K.c.key_id)
            .limit(limit)
        ).all()
        for row in rows:
            key = self.masters.unwrap(row.wrapped, row.customer_id)
            self.conn.execute(
                update(_K)
                .where(_K.c.key_id == row.key_id)
                .values(
                    wrapped=self.masters.wrap(key, row.customer_id),
                    master_key_id=self.masters.current,
                )
            )
        return len(rows)
