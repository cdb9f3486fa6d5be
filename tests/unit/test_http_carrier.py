"""The HTTP carrier's requests and how it reads every kind of answer (docs/carriers.md).

Each answer is served by an httpx transport in the test (no network): the adapter's
classification is checked here, its behaviour against a real carrier process in
tests/e2e/test_http_carrier.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from fulfillment.adapters.http_carrier import (
    MAX_RETRY_AFTER_SECONDS,
    CarrierCredentialsRefused,
    HttpCarrier,
    UnexpectedCarrierAnswer,
    check_carrier_url,
    retry_after_seconds,
)
from fulfillment.domain.errors import (
    BusinessRuleViolation,
    CarrierRejected,
    TransientFailure,
    UnsupportedDestination,
)
from fulfillment.domain.status import FailureReason
from fulfillment.domain.values import OrderLine, ShippingAddress

ADDRESS = ShippingAddress("Ada Lovelace", "12 St James Square", "London", "SW1Y 4JH", "GB")
#: What must never be in an error message or a log line.
PATIENT_DATA = ("Ada Lovelace", "12 St James Square", "London", "SW1Y 4JH")
LINES = (OrderLine("AMOX-500", 2), OrderLine("IBU-200", 1))
KEY = "order-1:shipment"
BOOKED = {
    "id": "shp_1",
    "tracking_number": "TC123",
    "carrier": "acme-parcel",
    "confirms_pickup_later": True,
}

Answer = Callable[[httpx.Request], httpx.Response]


def carrier_answering(answer: Answer, seen: list[httpx.Request] | None = None) -> HttpCarrier:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return answer(request)

    transport = httpx.MockTransport(handle)
    return HttpCarrier("https://api.carrier.example/v2/", "tok-123", transport=transport)


def answer(status: int, body: object = None, **headers: str) -> Answer:
    def respond(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes | str):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return respond


def book(carrier: HttpCarrier) -> object:
    return carrier.book(KEY, ADDRESS, LINES)


def assert_no_patient_data(*texts: str) -> None:
    for text in texts:
        for value in PATIENT_DATA:
            assert value not in text, f"{value!r} leaked into {text!r}"


# --- the requests -----------------------------------------------------------------------


def test_a_booking_posts_the_address_and_lines_with_the_idempotency_key_and_token() -> None:
    seen: list[httpx.Request] = []
    carrier = carrier_answering(answer(201, BOOKED), seen)

    booking = carrier.book(KEY, ADDRESS, LINES)

    (request,) = seen
    assert (request.method, str(request.url)) == (
        "POST",
        "https://api.carrier.example/v2/shipments",
    )
    assert request.headers["Idempotency-Key"] == KEY
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert json.loads(request.content) == {
        "address": {
            "name": "Ada Lovelace",
            "line1": "12 St James Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        },
        "lines": [{"sku": "AMOX-500", "quantity": 2}, {"sku": "IBU-200", "quantity": 1}],
    }
    assert (booking.carrier, booking.tracking_number) == ("acme-parcel", "TC123")
    assert booking.picked_up_at_booking is False, "confirms_pickup_later: true"


def test_a_cancellation_posts_to_the_shipment_by_its_tracking_number() -> None:
    seen: list[httpx.Request] = []
    carrier = carrier_answering(answer(200, {"status": "cancelled"}), seen)

    carrier.cancel("order-1:shipment-cancel", "TC 1/2")

    (request,) = seen
    assert request.url.raw_path == b"/v2/shipments/TC%201%2F2/cancel"
    assert request.headers["Idempotency-Key"] == "order-1:shipment-cancel"
    assert json.loads(request.content) == {}


@pytest.mark.parametrize(("later", "picked_up"), [(True, False), (False, True), (None, False)])
def test_the_booking_says_whether_the_carrier_confirms_the_pickup_later(
    later: bool | None, picked_up: bool
) -> None:
    body = {k: v for k, v in BOOKED.items() if k != "confirms_pickup_later"}
    if later is not None:
        body["confirms_pickup_later"] = later
    booking = carrier_answering(answer(201, body)).book(KEY, ADDRESS, LINES)
    assert booking.picked_up_at_booking is picked_up, "absent: true (a pickup later)"


# --- transient: retried -------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409, 425, 429])
def test_server_errors_and_not_now_answers_are_transient(status: int) -> None:
    carrier = carrier_answering(answer(status, {"error": {"code": "busy", "message": "x"}}))
    with pytest.raises(TransientFailure) as raised:
        book(carrier)
    assert f"HTTP {status}" in str(raised.value)
    assert raised.value.retry_after_seconds is None


def test_a_429_carries_its_retry_after() -> None:
    carrier = carrier_answering(answer(429, {}, **{"Retry-After": "120"}))
    with pytest.raises(TransientFailure) as raised:
        book(carrier)
    assert raised.value.retry_after_seconds == 120.0
    assert "retry after 120 s" in str(raised.value)


def test_a_503_carries_a_retry_after_given_as_a_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    carrier = carrier_answering(answer(503, b"", **{"Retry-After": later}))
    with pytest.raises(TransientFailure) as raised:
        book(carrier)
    assert raised.value.retry_after_seconds is not None
    assert 80 <= raised.value.retry_after_seconds <= 90


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_timeouts_and_connection_errors_are_transient(error: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        error.request = request  # (httpx's own errors hold the request, body and all)
        raise error

    with pytest.raises(TransientFailure) as raised:
        book(carrier_answering(fail))
    assert type(error).__name__ in str(raised.value)
    assert raised.value.__suppress_context__, "the request (and its address) stays behind"
    assert_no_patient_data(str(raised.value))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({**BOOKED, "tracking_number": None}).encode(), "'tracking_number' is missing"),
        (json.dumps({"shipment": {"street": ADDRESS.line1}}).encode(), "'id' is missing"),
        (json.dumps({**BOOKED, "carrier": ""}).encode(), "'carrier' is missing"),
        (json.dumps({**BOOKED, "tracking_number": "T" * 101}).encode(), "longer than 100"),
        (json.dumps({**BOOKED, "id": "a\nb"}).encode(), "control characters"),
        (json.dumps({**BOOKED, "confirms_pickup_later": "yes"}).encode(), "not a boolean"),
    ],
)
def test_an_unexpected_body_is_transient_and_logged_without_the_address(
    content: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    carrier = carrier_answering(answer(201, content, **{"Content-Type": "application/json"}))
    caplog.set_level(logging.WARNING, logger="fulfillment.carrier")
    with pytest.raises(UnexpectedCarrierAnswer) as raised:
        book(carrier)
    assert isinstance(raised.value, TransientFailure)
    assert problem in str(raised.value)
    (record,) = caplog.records
    assert "POST /shipments" in record.getMessage() and "HTTP 201" in record.getMessage()
    assert_no_patient_data(str(raised.value), record.getMessage())


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (404, b"<html>Not Found</html>"),  # a wrong FULFILLMENT_CARRIER_URL
        (400, json.dumps({"error": "bad"}).encode()),
        (422, json.dumps({"error": {"code": "Not A Code!"}}).encode()),
        (302, b""),
    ],
)
def test_a_refusal_without_a_readable_code_is_transient_not_a_cancellation(
    status: int, content: bytes
) -> None:
    with pytest.raises(UnexpectedCarrierAnswer):
        book(carrier_answering(answer(status, content)))


# --- business: the order is cancelled -----------------------------------------------------


def test_unsupported_destination_fails_the_step_for_good() -> None:
    refusal = {"error": {"code": "unsupported_destination", "message": "not to SW1Y 4JH"}}
    with pytest.raises(UnsupportedDestination) as raised:
        book(carrier_answering(answer(422, refusal)))
    assert raised.value.reason == FailureReason.UNSUPPORTED_DESTINATION
    assert "GB" in str(raised.value)
    assert_no_patient_data(str(raised.value))


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_any_other_refusal_is_carrier_rejected_with_the_code_never_the_message(
    status: int,
) -> None:
    refusal = {"error": {"code": "parcel_too_heavy", "message": "Ada Lovelace, 12 St James"}}
    with pytest.raises(CarrierRejected) as raised:
        book(carrier_answering(answer(status, refusal)))
    assert isinstance(raised.value, BusinessRuleViolation)
    assert raised.value.reason == "carrier_rejected" == FailureReason.CARRIER_REJECTED.value
    assert "parcel_too_heavy" in str(raised.value)
    assert_no_patient_data(str(raised.value))


def test_a_refused_cancellation_is_a_rejection_too() -> None:
    refusal = {"error": {"code": "already_picked_up", "message": "too late"}}
    with pytest.raises(CarrierRejected, match="already_picked_up"):
        carrier_answering(answer(422, refusal)).cancel("k", "TC1")


# --- our credentials: an operator's matter ------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_neither_transient_nor_the_orders_fault(status: int) -> None:
    with pytest.raises(CarrierCredentialsRefused) as raised:
        book(carrier_answering(answer(status, {"error": {"code": "unauthorized"}})))
    assert not isinstance(raised.value, TransientFailure | BusinessRuleViolation)
    assert "FULFILLMENT_CARRIER_TOKEN" in str(raised.value)
    assert "tok-123" not in str(raised.value)


# --- Retry-After and the URL ---------------------------------------------------------------


def test_retry_after_reads_seconds_and_dates_and_ignores_the_rest() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0, "past: now"
    assert retry_after_seconds("99999999", now) == MAX_RETRY_AFTER_SECONDS
    for unreadable in (None, "", "soon", "-5", "1.5e3", "٣"):
        assert retry_after_seconds(unreadable, now) is None, unreadable


@pytest.mark.parametrize(
    "url",
    [
        "https://api.carrier.example",
        "https://api.carrier.example:8443/v2",
        "http://127.0.0.1:8080",
        "http://localhost:9000/api",
        "http://[::1]:9000",
    ],
)
def test_a_carrier_url_is_https_or_loopback(url: str) -> None:
    check_carrier_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://api.carrier.example", "must be https://"),
        ("http://10.0.0.5:8080", "must be https://"),
        ("ftp://api.carrier.example", "http(s)://"),
        ("api.carrier.example", "http(s)://"),
        ("https://user:pw@api.carrier.example", "must not hold credentials"),
        ("https://api.carrier.example/?token=x", "query"),
        ("https://api.carrier.example:port", "not a URL"),
    ],
)
def test_other_carrier_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")) as raised:
        check_carrier_url(url)
    assert "pw" not in str(raised.value)
