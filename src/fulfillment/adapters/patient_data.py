"""Patient data at rest: which stored fields are sealed, under whose key, and how they
are opened again (docs/security.md).

The fields (DESIGN contract): a prescription's `patient_name` and `prescriber_id`, and
every field of a shipping address but its `country`. They are sealed in the data of the
events that carry them (`OrderCreated`, `OrderFulfillmentSagaStarted`: the mapper,
adapters/mapper.py, is the one place events pass through) and in the `prescriptions`
table, with the cipher and key formats of adapters/phi_crypto.py:

* Each customer has one data key (the `data_keys` table, adapters/data_keys.py). An
  order's `OrderCreated` is sealed under the key found, or created, in the transaction
  that appends it; so an order placed after its customer was erased gets a new key.
* A field's associated data is its place: the event's identity (stream and version)
  and the field's path, or the table, the order and the column. A ciphertext copied to
  another row or field does not open.
* Opening finds the data key by the id the ciphertext names. A key that is gone (the
  customer was erased) opens every field it sealed as ``"[erased]"``. Keys are cached
  per process for `KEY_CACHE_SECONDS`, so an erasure made by another process shows
  everywhere within that time (at once in the process that made it).

Without a master key nothing can be sealed or opened: reading a sealed field raises
`PatientDataLocked`, whose message says what to set. With encryption switched off
(`FULFILLMENT_PHI_ENCRYPTION=off`) new data is stored in plain text; sealed data still
opens while the master key is set.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from fulfillment.adapters.data_keys import DataKeys
from fulfillment.adapters.phi_crypto import (
    CryptoError,
    MasterKeys,
    is_sealed,
    open_field,
    seal_field,
    sealed_by,
)
from fulfillment.domain.values import ERASED

log = logging.getLogger("fulfillment.patient_data")

#: The sealed fields of each value that holds patient data, by the value's field name.
PATIENT_DATA_FIELDS: Mapping[str, tuple[str, ...]] = {
    "prescription": ("patient_name", "prescriber_id"),
    "shipping_address": ("name", "line1", "city", "postal_code"),
}
#: The events whose data hold them; each names its customer (`customer_id`).
PATIENT_DATA_EVENTS = frozenset({"OrderCreated", "OrderFulfillmentSagaStarted"})
#: The sealed columns of the `prescriptions` table.
PRESCRIPTION_COLUMNS = ("patient_name", "prescriber_id")
#: How long a process trusts a data key it has read (an erasure elsewhere shows after it).
KEY_CACHE_SECONDS = 1.0

Data = dict[str, Any]


class PatientDataLocked(RuntimeError):
    """Sealed patient data that this process cannot open: no master key, or not the
    one that wrapped the data key. Never a reason to show the data as erased."""


def locked(exc: CryptoError) -> PatientDataLocked:
    """A data key that the configured master keys do not unwrap, said as what to do."""
    return PatientDataLocked(
        f"a data key does not open with FULFILLMENT_MASTER_KEY ({exc}): set the master key "
        "it was wrapped with (older keys may follow the current one: `id:base64,id:base64`)"
    )


def event_place(stream_id: str, version: int, value: str, field: str) -> str:
    """Where an event's field is stored: the associated data of its ciphertext."""
    return f"event:{stream_id}#{version}:{value}.{field}"


def table_place(table: str, order_id: str, column: str) -> str:
    return f"{table}:{order_id}:{column}"


class PatientData:
    """Seals and opens patient data for one process; thread-safe.

    `masters`: the master keys (None: none configured). `encrypt`: whether new data is
    sealed (it is unless encryption was switched off on purpose, or there is no key).
    """

    def __init__(
        self,
        masters: MasterKeys | None,
        *,
        encrypt: bool = True,
        key_cache_seconds: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.masters = masters
        self.encrypts = encrypt and masters is not None
        self.key_cache_seconds = key_cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        #: key id -> (trusted until, key); erased keys are never cached: they stay gone.
        self._keys: dict[str, tuple[float, bytes]] = {}
        self._erased: set[str] = set()
        #: customer -> (trusted until, key id, key): the key of their latest order seen.
        self._customers: dict[str, tuple[float, str, bytes]] = {}

    def __repr__(self) -> str:
        return f"PatientData(encrypts={self.encrypts}, masters={self.masters!r})"

    # --- keys ---------------------------------------------------------------------------

    def data_keys(self, conn: Connection) -> DataKeys:
        if self.masters is None:
            raise PatientDataLocked(
                "patient data is encrypted and FULFILLMENT_MASTER_KEY is not set: "
                "set it to the master key the data was written with"
            )
        return DataKeys(conn, self.masters)

    def _remember(self, customer_id: str | None, key_id: str, key: bytes) -> None:
        """A key just read from the table: trusted for the cache time from now."""
        until = self.clock() + self.key_cache_seconds
        with self._lock:
            self._keys[key_id] = (until, key)
            if customer_id is not None:
                self._customers[customer_id] = (until, key_id, key)

    def _seen(self, customer_id: str, key_id: str, key: bytes) -> None:
        """A key that opened a customer's order: their latest key, trusted no longer
        than the key itself (reading again never extends the cache time)."""
        with self._lock:
            cached = self._keys.get(key_id)
            if cached is not None:
                self._customers[customer_id] = (cached[0], key_id, key)

    def _key_by_id(self, conn: Connection, key_id: str) -> bytes | None:
        now = self.clock()
        with self._lock:
            if key_id in self._erased:
                return None
            cached = self._keys.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            key = self.data_keys(conn).by_id(key_id)
        except CryptoError as exc:
            raise locked(exc) from exc
        if key is None:
            with self._lock:
                self._erased.add(key_id)
                self._keys.pop(key_id, None)
            return None
        self._remember(None, key_id, key)
        return key

    def _customer_key(
        self, conn: Connection, customer_id: str, *, fresh: bool
    ) -> tuple[str, bytes]:
        """The customer's data key to seal with. `fresh` (a new order): read, or created,
        in the caller's transaction; otherwise the key of their latest order this process
        has seen, if recent (the saga of an order seals under its order's key)."""
        if not fresh:
            with self._lock:
                cached = self._customers.get(customer_id)
            if cached is not None and cached[0] > self.clock():
                return cached[1], cached[2]
        try:
            key_id, key = self.data_keys(conn).for_customer(customer_id)
        except CryptoError as exc:
            raise locked(exc) from exc
        self._remember(customer_id, key_id, key)
        return key_id, key

    def forgotten(self, customer_id: str, key_id: str | None) -> None:
        """This process erased the customer (their key `key_id` is deleted, committed):
        forget it now rather than after the cache time."""
        with self._lock:
            self._customers.pop(customer_id, None)
            if key_id is not None:
                self._keys.pop(key_id, None)
                self._erased.add(key_id)

    # --- fields -------------------------------------------------------------------------

    def seal_value(
        self, conn: Connection, customer_id: str, value: str, place: str, *, fresh: bool = False
    ) -> str:
        """`value` sealed under the customer's data key, bound to `place` (as is when
        encryption is off, or it is sealed already)."""
        if not self.encrypts or is_sealed(value):
            return value
        key_id, key = self._customer_key(conn, customer_id, fresh=fresh)
        return seal_field(key_id, key, value, place)

    def open_value(self, conn: Connection, value: Any, place: str) -> Any:
        """The plaintext of a sealed field, ``"[erased]"`` once its key is gone; any
        other value as is. CryptoError if it does not open at this place (moved or
        tampered with); PatientDataLocked without the master key."""
        if not is_sealed(value):
            return value
        key = self._key_by_id(conn, sealed_by(value))
        return ERASED if key is None else open_field(key, value, place)

    # --- events -------------------------------------------------------------------------

    def seal_event(
        self, conn: Connection, type_name: str, data: Data, stream_id: str, version: int
    ) -> Data:
        """An event's data with its patient-data fields sealed (as is for other types)."""
        if not self.encrypts or type_name not in PATIENT_DATA_EVENTS:
            return data
        customer_id = str(data["customer_id"])
        key_id, key = self._customer_key(conn, customer_id, fresh=type_name == "OrderCreated")
        sealed = dict(data)
        for value, fields in PATIENT_DATA_FIELDS.items():
            part = data.get(value)
            if not isinstance(part, dict):
                continue
            sealed[value] = {
                name: seal_field(key_id, key, raw, event_place(stream_id, version, value, name))
                if name in fields and isinstance(raw, str) and not is_sealed(raw)
                else raw
                for name, raw in part.items()
            }
        return sealed

    def open_event(
        self, conn: Connection, type_name: str, data: Data, stream_id: str, version: int
    ) -> Data:
        """An event's data with its sealed fields opened (erased ones read "[erased]")."""
        if type_name not in PATIENT_DATA_EVENTS:
            return data
        opened = dict(data)
        for value, fields in PATIENT_DATA_FIELDS.items():
            part = data.get(value)
            if not isinstance(part, dict) or not any(is_sealed(part.get(f)) for f in fields):
                continue
            plain = dict(part)
            for name in fields:
                raw = part.get(name)
                if not is_sealed(raw):
                    continue
                key_id = sealed_by(raw)
                key = self._key_by_id(conn, key_id)
                if key is None:
                    plain[name] = ERASED
                    continue
                plain[name] = open_field(key, raw, event_place(stream_id, version, value, name))
                customer_id = data.get("customer_id")
                if isinstance(customer_id, str):
                    self._seen(customer_id, key_id, key)
            opened[value] = plain
        return opened


def is_sealed_event(type_name: str, data: Data) -> bool:
    """Whether an event's patient-data fields are all sealed (or it has none)."""
    if type_name not in PATIENT_DATA_EVENTS:
        return True
    for value, fields in PATIENT_DATA_FIELDS.items():
        part = data.get(value)
        if isinstance(part, dict) and any(
            isinstance(part.get(f), str) and not is_sealed(part.get(f)) for f in fields
        ):
            return False
    return True


# --- the master key -----------------------------------------------------------------------


def key_file_of(sqlite_path: str) -> Path:
    """The master key file of an SQLite database without FULFILLMENT_MASTER_KEY."""
    return Path(sqlite_path + ".key")


def load_or_create_key_file(path: Path) -> MasterKeys:
    """The master key in `path`, created (mode 0600, never readable by others) with a
    new key if there is none. Logged once, when created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # made wider by hand, or copied: the owner's alone again
            os.chmod(path, mode & 0o700)
        return MasterKeys.parse(path.read_text().strip())
    setting = MasterKeys.generate()
    with os.fdopen(fd, "w") as file:
        file.write(setting + "\n")
    log.warning(
        "generated a master key for patient data into %s (mode 0600): keep it, and back it "
        "up apart from the database; without it the data cannot be read",
        path,
    )
    return MasterKeys.parse(setting)


def erase_customer(engine: Engine, patient_data: PatientData, customer_id: str) -> bool:
    """Delete the customer's data key, in a transaction of its own: every field it
    sealed reads "[erased]" from now on. False if they had none (already erased)."""
    with engine.begin() as conn:
        key_id = patient_data.data_keys(conn).forget(customer_id)
    patient_data.forgotten(customer_id, key_id)
    return key_id is not None
