"""The listings' signed cursors (views/cursors.py): what a cursor holds, which keys take
it, and the range of its position, checked even when the signature is right."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from fulfillment.adapters.phi_crypto import MasterKeys
from fulfillment.views.cursors import (
    POSITION_LIMIT,
    TAG_BYTES,
    InvalidCursor,
    cursor_keys,
    decode_cursor,
    encode_cursor,
)

OLD_SETTING = MasterKeys.generate("old")
OLD = MasterKeys.parse(OLD_SETTING)
NEW_AND_OLD = MasterKeys.parse(f"{MasterKeys.generate('new')},{OLD_SETTING}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signed_by_hand(payload: object, key: bytes) -> str:
    """A cursor signed with the right key around any payload: what only the server could
    make, so its range is still checked."""
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    tag = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest()[:TAG_BYTES])
    return f"{body}.{tag}"


@pytest.mark.parametrize("position", [0, 1, 42, POSITION_LIMIT - 1])
def test_a_cursor_gives_back_its_position(position: int) -> None:
    keys = cursor_keys(OLD)
    assert decode_cursor(encode_cursor(position, keys), keys) == position


@pytest.mark.parametrize(
    "payload",
    [
        {"p": POSITION_LIMIT},
        {"p": 10**40},
        {"p": -1},
        {"p": 1.5},
        {"p": True},
        {"p": "1"},
        {"q": 1},
        [1],
    ],
)
def test_a_signed_cursor_out_of_range_or_of_another_shape_is_refused(payload: object) -> None:
    keys = cursor_keys(OLD)
    with pytest.raises(InvalidCursor):
        decode_cursor(signed_by_hand(payload, keys[0]), keys)


def test_a_position_out_of_range_is_never_encoded() -> None:
    with pytest.raises(ValueError):
        encode_cursor(POSITION_LIMIT, cursor_keys(OLD))


def test_cursors_are_signed_with_the_current_key_and_taken_under_any_configured() -> None:
    old_cursor = encode_cursor(7, cursor_keys(OLD))
    assert decode_cursor(old_cursor, cursor_keys(NEW_AND_OLD)) == 7
    new_cursor = encode_cursor(7, cursor_keys(NEW_AND_OLD))
    assert new_cursor != old_cursor
    with pytest.raises(InvalidCursor):
        decode_cursor(new_cursor, cursor_keys(OLD))  # a process without the new key yet


def test_without_a_master_key_a_process_has_a_key_of_its_own() -> None:
    keys = cursor_keys(None)
    assert keys == cursor_keys(None)
    assert decode_cursor(encode_cursor(3, keys), keys) == 3
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(3, keys), cursor_keys(OLD))
