"""Encryption of patient data at rest: AES-256-GCM fields under per-customer data keys,
the data keys wrapped by a master key (envelope encryption, docs/security.md).

This module is the cipher and the key formats only; which fields are protected and where
they are encrypted is the mapper's business, and where data keys are kept is the
`data_keys` table's.

* A **field** is stored as ``phi1:<data key id>:<base64url(nonce || ciphertext+tag)>``:
  the format version, the id of the data key that sealed it, and a fresh 96-bit nonce.
  The associated data binds it to where it belongs (an event's stream, version and
  field name): a ciphertext copied to another row or field does not decrypt.
* A **data key** (32 random bytes, one per customer) is stored wrapped by the current
  master key: ``<master key id>:<base64url(nonce || wrapped key+tag)>``, its associated
  data the customer's id. Deleting it erases every field it sealed (crypto-shredding).
* The **master key** setting is ``base64(32 bytes)`` or ``id:base64,id:base64,...``, the
  first being current; older ones still unwrap the data keys wrapped under them until
  those are re-wrapped (rotation).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
from dataclasses import dataclass
from typing import TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fulfillment.domain.values import ERASED

__all__ = ["ERASED", "CryptoError", "MasterKeys"]

FORMAT = "phi1"
NONCE_BYTES = 12
KEY_BYTES = 32
DEFAULT_MASTER_KEY_ID = "m1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class CryptoError(Exception):
    """A ciphertext that does not open: tampered, moved to another place, or sealed by a
    key that is not this one."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("not base64") from exc


@functools.lru_cache(maxsize=4096)
def _cipher(key: bytes) -> AESGCM:
    """The cipher of a key, made once (about a third of a short field's sealing)."""
    return AESGCM(key)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64(nonce + _cipher(key).encrypt(nonce, plaintext, aad))


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    raw = _unb64(sealed)
    if len(raw) < NONCE_BYTES + 16:
        raise CryptoError("ciphertext too short")
    try:
        return _cipher(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError("ciphertext does not open with this key and place") from exc


# --- master keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterKeys:
    """The master keys by id, and the id of the current one (which wraps new data keys)."""

    current: str
    keys: dict[str, bytes]

    def __repr__(self) -> str:  # never the key bytes
        return f"MasterKeys(current={self.current!r}, ids={sorted(self.keys)!r})"

    @classmethod
    def parse(cls, setting: str) -> MasterKeys:
        """`base64` or `id:base64,id:base64,...` (FULFILLMENT_MASTER_KEY); ValueError,
        naming the entry by its position and never its value, when it is malformed."""
        entries = [e.strip() for e in setting.split(",") if e.strip()]
        if not entries:
            raise ValueError("FULFILLMENT_MASTER_KEY is empty")
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for position, entry in enumerate(entries, start=1):
            key_id, sep, encoded = entry.rpartition(":")
            if not sep:
                key_id, encoded = DEFAULT_MASTER_KEY_ID, entry
            where = f"FULFILLMENT_MASTER_KEY entry {position}"
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"{where}: the id must be 1..32 of A-Z a-z 0-9 _ . -")
            if key_id in keys:
                raise ValueError(f"{where}: the id {key_id!r} is used twice")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: not base64 (see `fulfillment keys generate`)") from None
            if len(raw) != KEY_BYTES:
                raise ValueError(f"{where}: must be {KEY_BYTES} bytes, is {len(raw)}")
            keys[key_id] = raw
            order.append(key_id)
        return cls(order[0], keys)

    @staticmethod
    def generate(key_id: str = DEFAULT_MASTER_KEY_ID) -> str:
        """A new master key setting: `id:base64` of 32 random bytes."""
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError("a master key id is 1..32 of A-Z a-z 0-9 _ . -")
        return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"

    # --- data keys ----------------------------------------------------------------------

    def wrap(self, data_key: bytes, customer_id: str) -> str:
        """The data key sealed under the current master key, bound to its customer."""
        sealed = _seal(self.keys[self.current], data_key, _dek_aad(customer_id))
        return f"{self.current}:{sealed}"

    def unwrap(self, wrapped: str, customer_id: str) -> bytes:
        """The data key; CryptoError if its master key is not configured (any more) or
        it was not wrapped for this customer."""
        key_id, sep, sealed = wrapped.partition(":")
        master = self.keys.get(key_id) if sep else None
        if master is None:
            raise CryptoError(f"data key wrapped by master key {key_id!r}, which is not set")
        return _open(master, sealed, _dek_aad(customer_id))

    def needs_rewrap(self, wrapped: str) -> bool:
        """Whether a wrapped data key is under an older master key (rotation)."""
        return wrapped.partition(":")[0] != self.current


def _dek_aad(customer_id: str) -> bytes:
    return b"fulfillment-dek\x00" + customer_id.encode()


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


# --- fields -----------------------------------------------------------------------------


def is_sealed(value: object) -> TypeGuard[str]:
    """Whether a stored value is a protected field's ciphertext."""
    return isinstance(value, str) and value.startswith(FORMAT + ":")


def seal_field(data_key_id: str, data_key: bytes, plaintext: str, place: str) -> str:
    """`plaintext` sealed under the data key, bound to `place` (where it is stored)."""
    if not _KEY_ID.fullmatch(data_key_id):
        raise ValueError("a data key id is 1..32 of A-Z a-z 0-9 _ . -")
    sealed = _seal(data_key, plaintext.encode(), place.encode())
    return f"{FORMAT}:{data_key_id}:{sealed}"


def sealed_by(value: str) -> str:
    """The id of the data key that sealed a field."""
    version, _, rest = value.partition(":")
    if version != FORMAT:
        raise CryptoError(f"unknown field format {version!r}")
    return rest.partition(":")[0]


def open_field(data_key: bytes, value: str, place: str) -> str:
    """The plaintext of a sealed field; CryptoError if it was sealed by another key, for
    another place, or tampered with."""
    version, _, rest = value.partition(":")
    if version != FORMAT:
        raise CryptoError(f"unknown field format {version!r}")
    _key_id, sep, sealed = rest.partition(":")
    if not sep:
        raise CryptoError("malformed field")
    try:
        return _open(data_key, sealed, place.encode()).decode()
    except UnicodeDecodeError as exc:
        raise CryptoError("not text") from exc
