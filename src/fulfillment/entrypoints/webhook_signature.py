"""The carrier webhook's signature: `Carrier-Signature: t=<unix seconds>,v1=<hex>`.

`v1` is the lowercase hex HMAC-SHA256, keyed with the shared secret, of
`"<t>." + raw body` (the bytes as received, before any JSON parsing). Signing the
timestamp with the body bounds replays to `tolerance_seconds` either side of now. A header
may carry several `v1=` entries (signed with the old and the new secret while one is
rotated): one that matches is enough. Unknown `name=value` entries (a future `v2`) are
ignored.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "Carrier-Signature"
DEFAULT_TOLERANCE_SECONDS = 300
#: At most this many entries are read from a header (a longer one is malformed).
MAX_ENTRIES = 16


class InvalidSignature(Exception):
    """The request is not signed by the carrier, or not recently: why, in `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Carrier-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def _parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the `v1` signatures of a header; InvalidSignature if malformed."""
    entries = header.split(",")
    if len(entries) > MAX_ENTRIES:
        raise InvalidSignature("malformed signature header: too many entries")
    timestamps: list[str] = []
    signatures: list[str] = []
    for entry in entries:
        name, sep, value = entry.strip().partition("=")
        if not sep or not name or not value:
            raise InvalidSignature("malformed signature header: expected name=value entries")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1:
        raise InvalidSignature("malformed signature header: expected exactly one t=")
    raw = timestamps[0]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise InvalidSignature("malformed signature header: t= must be unix seconds")
    if not signatures:
        raise InvalidSignature("malformed signature header: no v1= signature")
    return int(raw), signatures


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Return if `header` signs `body` with `secret` within `tolerance_seconds` of `now`
    (unix seconds, either direction); else raise InvalidSignature saying why."""
    if header is None or not header.strip():
        raise InvalidSignature(f"missing {HEADER} header")
    timestamp, signatures = _parse(header)
    if abs(now - timestamp) > tolerance_seconds:
        raise InvalidSignature(
            f"signature timestamp is more than {tolerance_seconds} s away from now"
        )
    expected = _digest(secret, body, timestamp).encode("ascii")
    # Compare with every entry (no early exit), each in constant time.
    matched = False
    for signature in signatures:
        candidate = signature.strip().lower().encode("utf-8")
        if hmac.compare_digest(expected, candidate):
            matched = True
    if not matched:
        raise InvalidSignature("no v1 signature matches")
