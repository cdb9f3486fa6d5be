"""A carrier's REST API (`FULFILLMENT_CARRIER=http`): the contract is in docs/carriers.md.

`POST /shipments` books a shipment and `POST /shipments/{tracking_number}/cancel` voids
it, each with the saga's `Idempotency-Key` (`<saga id>:shipment`,
`<saga id>:shipment-cancel`), so a call repeated after a timeout or a crash books or
voids nothing twice: the carrier answers a replayed key with its first answer.

What an answer means for the saga:

* 2xx with the documented body: booked (or voided);
* a timeout, a connection error, 408, 409, 425, 429 or 5xx: `CarrierUnavailable`, a
  `TransientFailure` retried under the step's retry policy, no sooner than the answer's
  `Retry-After`;
* 401 or 403: `CarrierCredentialsRefused`, a fault of our configuration: the job backs
  off and is parked `dead` for an operator after FULFILLMENT_MAX_JOB_FAILURES;
* any other 4xx with an error body: the carrier refused. Its code `unsupported_destination`
  raises `UnsupportedDestination`, any other code `CarrierRejected` (`carrier_rejected`);
* anything else (a body that is not as documented, a 4xx without an error body, a 3xx):
  `UnexpectedCarrierAnswer`, transient, logged.

The address is patient data: it goes to the carrier in the request body and nowhere
else. Messages and log lines name the call, the HTTP status and the carrier's error
code, never a body: a carrier may echo the address in its own messages.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from fulfillment.adapters.carrier import CarrierUnavailable
from fulfillment.domain.errors import CarrierRejected, UnsupportedDestination
from fulfillment.domain.values import OrderLine, ShippingAddress
from fulfillment.service_layer.ports import Booking, Carrier

log = logging.getLogger("fulfillment.carrier")

#: How long to wait for a connection to the carrier, and for each read of its answer.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
#: A longer `Retry-After` is taken as this (an hour).
MAX_RETRY_AFTER_SECONDS = 3600.0
#: 4xx answers that mean "not now" rather than "no": request timeout, a concurrent
#: request with the same idempotency key, too early, too many requests.
TRANSIENT_4XX = frozenset({408, 409, 425, 429})
#: The carrier's error code that means it does not ship to the address's destination.
UNSUPPORTED_DESTINATION = "unsupported_destination"
_CODE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: A tracking number, shipment id or carrier name: printable, no control characters
#: (the `shipments` columns hold 100 characters).
_FIELD_MAX = {"id": 200, "tracking_number": 100, "carrier": 100}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnexpectedCarrierAnswer(CarrierUnavailable):
    """The carrier answered something the contract does not describe: retried, logged."""


class CarrierCredentialsRefused(Exception):
    """The carrier refused FULFILLMENT_CARRIER_TOKEN (401, 403): neither the order's fault
    nor a passing one. The job backs off and, unfixed, is parked `dead` for an operator."""


def check_carrier_url(url: str) -> None:
    """ValueError unless `url` is an absolute `https://` URL without credentials, query
    or fragment; `http://` only to a loopback host (the address must not cross a network
    in plain text)."""
    name = "FULFILLMENT_CARRIER_URL"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise ValueError(f"{name} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(
            f"{name} must be an http(s):// URL with a host, like https://api.carrier.example"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{name} must not hold credentials: set FULFILLMENT_CARRIER_TOKEN")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} must not have a query or a fragment")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError(
            f"{name} must be https:// (plain http:// only to a loopback host): the "
            "shipping address is patient data"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """An HTTP `Retry-After` (seconds, or an HTTP date) as seconds from now, within
    0..MAX_RETRY_AFTER_SECONDS; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    raw = value.strip()
    if raw.isascii() and raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": an HTTP date is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def error_code(response: httpx.Response) -> str | None:
    """The carrier's error code of a refusal, `{"error": {"code": "..."}}`; None when the
    body is not such an object or the code is not 1..64 of `a-z 0-9 _ . -`. (Its message
    is never read: it may repeat the address.)"""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else None


def check_answer(response: httpx.Response, call: str, country: str | None = None) -> None:
    """Return if the answer is a success (2xx); else raise what it means (the module's
    docstring). `call` names the request in messages (`POST /shipments`); `country` is
    the destination of a booking, for the message of an unsupported one."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in TRANSIENT_4XX or status >= 500:
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        after = f", retry after {wait:g} s" if wait is not None else ""
        raise CarrierUnavailable(
            f"the carrier answered {call} with HTTP {status}{after}", retry_after_seconds=wait
        )
    if status in (401, 403):
        raise CarrierCredentialsRefused(
            f"the carrier refused our credentials on {call} (HTTP {status}): check "
            "FULFILLMENT_CARRIER_TOKEN"
        )
    code = error_code(response) if 400 <= status < 500 else None
    if code is None:
        raise unexpected(response, call, "no error code of the documented shape")
    if code == UNSUPPORTED_DESTINATION:
        where = f" to {country}" if country else " to this destination"
        raise UnsupportedDestination(f"the carrier does not ship{where} (HTTP {status})")
    raise CarrierRejected(f"the carrier refused {call}: {code} (HTTP {status})")


def unexpected(response: httpx.Response, call: str, what: str) -> UnexpectedCarrierAnswer:
    """Log an answer the contract does not describe (its status, type and size: never its
    body) and return the transient error to raise."""
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    log.warning(
        "the carrier's answer to %s is not as docs/carriers.md says (HTTP %s, %s, %d bytes): %s",
        call,
        response.status_code,
        kind,
        len(response.content),
        what,
    )
    return UnexpectedCarrierAnswer(
        f"unexpected answer of the carrier to {call} (HTTP {response.status_code}): {what}"
    )


def parse_booking(response: httpx.Response, call: str) -> Booking:
    """The booking of a 2xx answer: `id`, `tracking_number` and `carrier` (strings) and
    `confirms_pickup_later` (a boolean, true when absent); UnexpectedCarrierAnswer else."""
    try:
        body: Any = response.json()
    except ValueError:
        raise unexpected(response, call, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise unexpected(response, call, "the body is not a JSON object")
    for name, longest in _FIELD_MAX.items():
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise unexpected(response, call, f"{name!r} is missing or not a non-empty string")
        if len(value) > longest or _CONTROL.search(value):
            raise unexpected(
                response, call, f"{name!r} is longer than {longest} or has control characters"
            )
    later = body.get("confirms_pickup_later", True)
    if not isinstance(later, bool):
        raise unexpected(response, call, "'confirms_pickup_later' is not a boolean")
    return Booking(
        carrier=body["carrier"],
        tracking_number=body["tracking_number"],
        picked_up_at_booking=not later,
    )


class HttpCarrier(Carrier):
    """The carrier behind `base_url` (FULFILLMENT_CARRIER_URL), authenticated by a bearer
    `token` (FULFILLMENT_CARRIER_TOKEN). Safe to share between threads."""

    #: Unless a booking's answer says otherwise, the pickup is confirmed later, by the
    #: carrier's signed `in_transit` webhook.
    confirms_pickup_at_booking = False

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "fulfillment-saga"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
            follow_redirects=False,
        )

    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        call = "POST /shipments"
        body = {
            "address": address.to_dict(),
            "lines": [{"sku": line.sku, "quantity": line.quantity} for line in lines],
        }
        response = self._post("/shipments", idempotency_key, body, call)
        check_answer(response, call, address.country)
        return parse_booking(response, call)

    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        call = "POST /shipments/{tracking_number}/cancel"
        path = f"/shipments/{quote(tracking_number, safe='')}/cancel"
        check_answer(self._post(path, idempotency_key, {}, call), call)

    def _post(
        self, path: str, idempotency_key: str, body: dict[str, Any], call: str
    ) -> httpx.Response:
        try:
            return self._client.post(path, json=body, headers={"Idempotency-Key": idempotency_key})
        except httpx.TimeoutException as exc:
            # (`from None`: the httpx error holds the request, body and address included.)
            raise CarrierUnavailable(
                f"the carrier did not answer {call} in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise CarrierUnavailable(
                f"the carrier could not be reached for {call} ({type(exc).__name__})"
            ) from None

    def close(self) -> None:
        self._client.close()
