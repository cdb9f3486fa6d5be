"""The cipher of patient data at rest (adapters/phi_crypto.py): fields bound to their
place, data keys wrapped by a master key, rotation, and refusals that never echo a key."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulfillment.adapters.phi_crypto import (
    CryptoError,
    MasterKeys,
    is_sealed,
    new_data_key,
    open_field,
    seal_field,
    sealed_by,
)

PLACE = "order-o-1#1#prescription.patient_name"


@given(st.text(max_size=300))
def test_a_sealed_field_opens_to_its_plaintext_in_its_place(text: str) -> None:
    key = new_data_key()
    sealed = seal_field("k1", key, text, PLACE)

    assert is_sealed(sealed) and sealed_by(sealed) == "k1"
    assert len(text) < 8 or text not in sealed  # (a short text may occur in base64 by chance)
    assert open_field(key, sealed, PLACE) == text


def test_the_same_text_seals_differently_each_time() -> None:
    key = new_data_key()
    assert seal_field("k1", key, "Ada", PLACE) != seal_field("k1", key, "Ada", PLACE)


@pytest.mark.parametrize(
    "place", ["order-o-2#1#prescription.patient_name", "order-o-1#1#shipping_address.name"]
)
def test_a_field_moved_to_another_row_or_field_does_not_open(place: str) -> None:
    key = new_data_key()
    sealed = seal_field("k1", key, "Ada Lovelace", PLACE)

    with pytest.raises(CryptoError):
        open_field(key, sealed, place)


def test_a_tampered_field_or_another_key_does_not_open() -> None:
    key = new_data_key()
    sealed = seal_field("k1", key, "Ada Lovelace", PLACE)
    body = sealed.rsplit(":", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]

    with pytest.raises(CryptoError):
        open_field(key, sealed.rsplit(":", 1)[0] + ":" + flipped, PLACE)
    with pytest.raises(CryptoError):
        open_field(new_data_key(), sealed, PLACE)
    with pytest.raises(CryptoError):
        open_field(key, "phi0:k1:" + body, PLACE)
    with pytest.raises(CryptoError):
        open_field(key, "phi1:k1", PLACE)


def test_a_data_key_is_wrapped_for_its_customer_under_the_current_master_key() -> None:
    masters = MasterKeys.parse(MasterKeys.generate("m2"))
    data_key = new_data_key()

    wrapped = masters.wrap(data_key, "cust-1")

    assert wrapped.startswith("m2:")
    assert masters.unwrap(wrapped, "cust-1") == data_key
    with pytest.raises(CryptoError):
        masters.unwrap(wrapped, "cust-2")


def test_after_rotation_old_wrappings_open_until_rewrapped_then_the_old_key_may_go() -> None:
    old = MasterKeys.generate("m1")
    new = MasterKeys.generate("m2")
    data_key = new_data_key()
    wrapped = MasterKeys.parse(old).wrap(data_key, "cust-1")

    rotated = MasterKeys.parse(f"{new},{old}")
    assert rotated.current == "m2" and rotated.needs_rewrap(wrapped)
    rewrapped = rotated.wrap(rotated.unwrap(wrapped, "cust-1"), "cust-1")
    only_new = MasterKeys.parse(new)

    assert only_new.unwrap(rewrapped, "cust-1") == data_key
    assert not only_new.needs_rewrap(rewrapped)
    with pytest.raises(CryptoError, match="not set"):
        only_new.unwrap(wrapped, "cust-1")


def test_a_bare_base64_master_key_gets_the_default_id() -> None:
    raw = base64.b64encode(bytes(range(32))).decode()
    assert MasterKeys.parse(raw).current == "m1"


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("", "empty"),
        ("not base64!", "not base64"),
        (base64.b64encode(b"short").decode(), "32 bytes"),
        ("bad id!:" + base64.b64encode(bytes(32)).decode(), "the id"),
        (
            "a:"
            + base64.b64encode(bytes(32)).decode()
            + ",a:"
            + base64.b64encode(bytes(32)).decode(),
            "twice",
        ),
    ],
)
def test_a_malformed_master_key_is_refused_without_echoing_it(setting: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        MasterKeys.parse(setting)
    secret = setting.rpartition(":")[2]
    assert not secret or secret not in str(raised.value)


def test_the_master_keys_never_show_in_their_repr() -> None:
    setting = MasterKeys.generate()
    assert setting.split(":", 1)[1] not in repr(MasterKeys.parse(setting))
