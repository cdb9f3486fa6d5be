"""The carrier webhook's `Carrier-Signature`: HMAC-SHA256 of "<t>." + body, within 300 s."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fulfillment.entrypoints.webhook_signature import InvalidSignature, sign, verify

SECRET = "whsec-carrier-1"
BODY = b'{"tracking_number": "TRK-1", "status": "delivered"}'
NOW = 1_760_000_000


def test_a_signature_is_t_and_the_hex_hmac_of_t_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


def test_a_fresh_signature_of_the_body_verifies() -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW + 0.5)


@pytest.mark.parametrize("skew", [-300, 300, -299.5, 0])
def test_up_to_300_seconds_either_way_is_accepted(skew: float) -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW + skew)


@pytest.mark.parametrize("skew", [301, 300.001, 3600, -301, -300.001, -86400])
def test_an_old_or_a_future_timestamp_is_refused(skew: float) -> None:
    with pytest.raises(InvalidSignature, match="away from now"):
        verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW - skew)


def test_the_tolerance_can_be_chosen() -> None:
    header = sign(SECRET, BODY, NOW)
    verify(SECRET, BODY, header, now=NOW + 30, tolerance_seconds=30)
    with pytest.raises(InvalidSignature):
        verify(SECRET, BODY, header, now=NOW + 31, tolerance_seconds=30)


@pytest.mark.parametrize(
    "body",
    [
        b'{"tracking_number": "TRK-1", "status": "returned"}',
        BODY + b" ",
        BODY[:-1],
        b"",
    ],
)
def test_a_tampered_body_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify(SECRET, body, sign(SECRET, BODY, NOW), now=NOW)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify(SECRET, BODY, sign("whsec-someone-else", BODY, NOW), now=NOW)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    signature = sign(SECRET, BODY, NOW).split(",")[1]
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify(SECRET, BODY, f"t={NOW + 1},{signature}", now=NOW)


def test_any_of_several_v1_entries_may_match_while_a_secret_is_rotated() -> None:
    old = sign("whsec-old", BODY, NOW).split(",")[1]
    new = sign("whsec-new", BODY, NOW).split(",")[1]
    header = f"t={NOW},{old},{new}"

    verify("whsec-old", BODY, header, now=NOW)
    verify("whsec-new", BODY, header, now=NOW)
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify("whsec-other", BODY, header, now=NOW)


def test_spaces_between_entries_upper_case_hex_and_unknown_entries_are_fine() -> None:
    digest = sign(SECRET, BODY, NOW).split("v1=")[1]

    verify(SECRET, BODY, f"t={NOW}, v1={digest.upper()}, v2=future-scheme", now=NOW)
    verify(SECRET, BODY, f"v1={digest},t={NOW}", now=NOW)  # in any order


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature, match="missing Carrier-Signature"):
        verify(SECRET, BODY, header, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",  # no timestamp
        f"t={NOW}",  # no signature
        f"t={NOW},v1=",
        f"t={NOW},,v1=abc",
        "t=,v1=abc",
        "t=soon,v1=abc",
        "t=-5,v1=abc",
        "t=1.5,v1=abc",
        "t=\u0661\u0662,v1=abc",  # Arabic-Indic digits: isdigit() but not unix seconds
        "t=99999999999999999999,v1=abc",
        f"t={NOW},t={NOW},v1=abc",  # two timestamps
        f"t={NOW};v1=abc",
        f"t={NOW},=abc",
        f"t={NOW}," + ",".join(["v1=abc"] * 20),
    ],
)
def test_a_malformed_header_is_refused_as_such(header: str) -> None:
    with pytest.raises(InvalidSignature, match="malformed"):
        verify(SECRET, BODY, header, now=NOW)


def test_the_reason_is_kept_on_the_exception() -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify(SECRET, BODY, None, now=NOW)
    assert caught.value.reason == "missing Carrier-Signature header"
