"""The listings' opaque cursors: a position, signed, so only cursors the API handed out
are taken back (docs/api.md, Orders: paging).

A cursor is ``<payload>.<tag>``: the payload is base64url of ``{"p": <position>}`` (the
commit position of the last order of a page), the tag the first 16 bytes of
HMAC-SHA256 over the payload, base64url. A cursor that does not have this shape, whose
tag does not match, or whose position is outside ``0 <= p < 2**63`` (a BIGINT) is an
`InvalidCursor`, before any query runs.

The key is derived from the master key of patient data (``FULFILLMENT_MASTER_KEY``, or
on SQLite the key file beside the database): the one secret every API process of a
database already shares, so a cursor from one process is taken by every other behind the
same load balancer, and nothing more needs configuring. Cursors are signed with the
current master key and taken under any configured one, so a rotation does not break the
pages being read. Without any master key (patient data stored in plain text, on
purpose) the key is one made for the process: its cursors work on that process only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence

from fulfillment.adapters.phi_crypto import MasterKeys

#: The largest position a cursor may carry, exclusive: positions are BIGINTs.
POSITION_LIMIT = 2**63
#: Bytes of the HMAC kept in a cursor (128 bits).
TAG_BYTES = 16
#: What a cursor looks like: its payload is 7 to 25 bytes of JSON (10 to 34 characters).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{10,34}\.[A-Za-z0-9_-]{22}$"
_CURSOR = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"))
#: Separates the cursor keys from every other use of a master key.
_CONTEXT = b"fulfillment-listing-cursor-v1"
#: The key of a process without a master key.
_PROCESS_KEY = secrets.token_bytes(32)


class InvalidCursor(ValueError):
    """A cursor the API did not hand out (malformed, tampered or out of range)."""


def cursor_keys(masters: MasterKeys | None) -> tuple[bytes, ...]:
    """The keys cursors are checked with, the one they are signed with first."""
    if masters is None:
        return (_PROCESS_KEY,)
    ids = [masters.current, *(key_id for key_id in masters.keys if key_id != masters.current)]
    return tuple(
        hmac.new(masters.keys[key_id], _CONTEXT, hashlib.sha256).digest() for key_id in ids
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _tag(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()[:TAG_BYTES])


def encode_cursor(position: int, keys: Sequence[bytes]) -> str:
    """The cursor of `position`, signed with the first of `keys`."""
    if not 0 <= position < POSITION_LIMIT:
        raise ValueError(f"position {position} is outside a cursor's range")
    payload = _b64(json.dumps({"p": position}, separators=(",", ":")).encode("ascii"))
    return f"{payload}.{_tag(keys[0], payload)}"


def decode_cursor(cursor: str, keys: Sequence[bytes]) -> int:
    """The position of a cursor signed with one of `keys`; InvalidCursor otherwise."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursor("invalid cursor: pass back a next_cursor the API handed out")
    payload, _, tag = cursor.partition(".")
    # Every key is tried, so the time taken does not tell which one matched.
    signed = False
    for key in keys:
        signed |= hmac.compare_digest(_tag(key, payload), tag)
    if not signed:
        raise InvalidCursor("invalid cursor: it was not handed out by this API, or was altered")
    try:
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        position = value["p"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise InvalidCursor("invalid cursor") from exc
    if (
        not isinstance(position, int)
        or isinstance(position, bool)
        or not 0 <= position < POSITION_LIMIT
    ):
        raise InvalidCursor("invalid cursor: position out of range")
    return position
