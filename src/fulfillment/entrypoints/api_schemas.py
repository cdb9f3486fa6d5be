"""The HTTP API's request and response bodies (docs/api.md), as pydantic models.

Requests are validated strictly at the edge: unknown fields are rejected, numbers must be
whole JSON numbers (`2`, or `2.0`; never `"2"` or `true`), texts are 1..200 characters
under the rules of entrypoints/identifiers.py (NFC; no control, format or separator
characters; no space at either end), dates are `YYYY-MM-DD` and real, countries are ISO
3166-1 alpha-2 codes. The OpenAPI schema states each constraint as the server checks it
(`pattern`, `enum`, bounds). Response models document the shapes in `/openapi.json`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from fulfillment.domain.order import MAX_ORDER_LINES, MAX_QUANTITY
from fulfillment.domain.saga_definition import MAX_NAME_LENGTH
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.entrypoints import identifiers
from fulfillment.service_layer.ports import UNCHANGED, Unchanged
from fulfillment.views.cursors import CURSOR_PATTERN

MAX_TEXT = 200
MAX_NOTE = 2000
#: A generous ceiling that keeps stock levels inside every backend's INTEGER column.
MAX_ON_HAND = 1_000_000_000
#: No C0/C1 control characters (and, implicitly, no lone surrogates).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]+$"
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _rule(check: Callable[[str], str], error_type: str) -> AfterValidator:
    """`check` (entrypoints/identifiers.py) as a validator: its InvalidText, said as a
    field error of `error_type`."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except identifiers.InvalidText as exc:
            raise PydanticCustomError(error_type, str(exc)) from None

    return AfterValidator(validate)


def _text_schema(max_length: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": identifiers.IDENTIFIER_PATTERN,
        }
    )


#: An id, a SKU, a lot, a name, an address line: 1..200 characters, NFC, no control,
#: format or separator characters but inner ordinary spaces (entrypoints/identifiers.py).
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT),
    _rule(lambda value: identifiers.identifier(value, MAX_TEXT), "text_refused"),
    _text_schema(MAX_TEXT),
]
#: A signal's name: a Text of at most 40 characters.
SignalNameText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    _rule(lambda value: identifiers.identifier(value, MAX_NAME_LENGTH), "text_refused"),
    _text_schema(MAX_NAME_LENGTH),
]
#: A note: at most 2000 characters, NFC, over several lines (line feeds), else as Text.
Note = Annotated[
    str,
    StringConstraints(max_length=MAX_NOTE),
    _rule(lambda value: identifiers.note(value, MAX_NOTE), "text_refused"),
    WithJsonSchema({"type": "string", "maxLength": MAX_NOTE, "pattern": identifiers.NOTE_PATTERN}),
]


#: A listing's `cursor`: its shape documented, and checked with its signature and range by
#: the listing (views/cursors.py), so any cursor the API did not hand out is one 422
#: `invalid_cursor`.
CursorText = Annotated[str, WithJsonSchema({"type": "string", "pattern": CURSOR_PATTERN})]


def _whole_number(value: Any) -> Any:
    """A JSON number without a fraction (`2.0` is `2`, as JSON Schema's `integer` has it);
    anything else (`"2"`, `true`, `2.5`) is left to fail as not an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A JSON integer, `2` or `2.0`, never a string or a boolean.
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_number)]


def _iso_date_only(value: Any) -> Any:
    """Only the `YYYY-MM-DD` text form; pydantic then checks that the day exists."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date_only)]
#: `GET /sagas?status=`: a saga status, or `stuck` (what an operator should look at).
SagaFilter = Literal[
    "running", "compensating", "completed", "compensated", "compensation_failed", "stuck"
]
Country = Annotated[
    str,
    _rule(identifiers.country, "country_code"),
    WithJsonSchema({"type": "string", "enum": sorted(identifiers.COUNTRY_CODES)}),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests -------------------------------------------------------------------------


#: The DEA schedules of controlled substances (`null`: not controlled).
DeaSchedule = Literal["II", "III", "IV", "V"]


class InventoryUpdate(_Request):
    """`PUT /inventory/{sku}`: the units of lot `default` (no expiry date) and, when
    given, the SKU's DEA schedule."""

    on_hand: WholeNumber = Field(ge=0, le=MAX_ON_HAND)
    dea_schedule: DeaSchedule | None = Field(
        default=None, description="absent: left as it is; null: not a controlled substance"
    )

    def schedule(self) -> str | Unchanged | None:
        """The schedule to store, or UNCHANGED when the body leaves it out."""
        return self.dea_schedule if "dea_schedule" in self.model_fields_set else UNCHANGED


class LotUpdate(_Request):
    """`PUT /inventory/{sku}/lots/{lot}`: the lot's units and expiry date."""

    on_hand: WholeNumber = Field(ge=0, le=MAX_ON_HAND)
    expires_on: IsoDate = Field(json_schema_extra={"format": "date"})


class OrderLineIn(_Request):
    sku: Text
    quantity: WholeNumber = Field(ge=1, le=MAX_QUANTITY)


class PrescriptionIn(_Request):
    prescriber_id: Text
    patient_name: Text
    expires_on: IsoDate = Field(json_schema_extra={"format": "date"})


class ShippingAddressIn(_Request):
    name: Text
    line1: Text
    city: Text
    postal_code: Text
    country: Country = Field(description="ISO 3166-1 alpha-2 code, upper case")


class CreateOrderRequest(_Request):
    """`POST /orders`."""

    customer_id: Text
    items: list[OrderLineIn] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    prescription: PrescriptionIn
    shipping_address: ShippingAddressIn

    def lines(self) -> tuple[OrderLine, ...]:
        return tuple(OrderLine(item.sku, item.quantity) for item in self.items)

    def prescription_details(self) -> PrescriptionDetails:
        p = self.prescription
        return PrescriptionDetails(p.prescriber_id, p.patient_name, p.expires_on)

    def address(self) -> ShippingAddress:
        a = self.shipping_address
        return ShippingAddress(a.name, a.line1, a.city, a.postal_code, a.country)


class VerificationRequest(_Request):
    """`POST /orders/{id}/verification`: a pharmacist's decision."""

    decision: Literal["approve", "reject", "request_clarification"]
    pharmacist_id: Text
    note: Note | None = None
    reason: Text | None = None

    def payload(self) -> dict[str, Any]:
        """The decision as its signal's payload."""
        return self.model_dump(exclude={"decision"}, exclude_none=True)


class CancelRequest(_Request):
    """`POST /orders/{id}/cancel`."""

    reason: Literal["customer_request", "prescriber_cancelled"]
    note: Note | None = None


class TrackingUpdate(_Request):
    """`POST /webhooks/carrier`: one tracking update, signed by the carrier."""

    event_id: Text
    tracking_number: Text
    status: Literal[
        "in_transit", "out_for_delivery", "delivered", "delivery_failed", "returned_to_sender"
    ]
    occurred_at: AwareDatetime
    location: Text | None = None


# --- responses ------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class LotInStock(_Response):
    """One lot of a SKU; `expires_on` is null for lot `default`."""

    lot: str
    on_hand: int
    reserved: int
    available: int
    expires_on: str | None = Field(json_schema_extra={"format": "date"})


class InventoryLevel(_Response):
    """A SKU's totals (sums over its lots), its DEA schedule, and its lots: first expiry
    first, lots without expiry last, then by name."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    dea_schedule: DeaSchedule | None
    lots: list[LotInStock]


class LotLevel(LotInStock):
    """`PUT /inventory/{sku}/lots/{lot}`: the lot as it now is."""

    sku: str


class LotOrder(_Response):
    """An order whose reservation took units of the lot (a recall)."""

    order_id: str
    quantity: int
    status: str


class OrderAccepted(_Response):
    order_id: str
    status: Literal["pending"]


class OrderLineOut(_Response):
    sku: str
    quantity: int


class StepView(_Response):
    name: str
    status: str
    attempts: int


class SagaView(_Response):
    status: Literal["running", "compensating", "completed", "compensated", "compensation_failed"]
    steps: list[StepView]


class ShipmentView(_Response):
    tracking_number: str
    status: str


class VerificationView(_Response):
    status: Literal["not_required", "pending", "approved", "rejected", "clarification_requested"]
    by: str | None


class LotView(_Response):
    sku: str
    lot: str
    quantity: int


class OrderView(_Response):
    order_id: str
    status: Literal[
        "pending",
        "awaiting_verification",
        "fulfilled",
        "delivered",
        "returned",
        "cancelled",
        "needs_attention",
    ]
    reason: str | None
    items: list[OrderLineOut]
    saga: SagaView | None
    shipment: ShipmentView | None
    verification: VerificationView
    lots: list[LotView]


class PersonalDataErasedView(_Response):
    """What `DELETE /customers/{customer_id}/personal-data` answers."""

    customer_id: str
    erased_orders: int


class OrderStatusView(_Response):
    """What a verification or a cancellation request answers: the order's status now."""

    order_id: str
    status: str


class TrackingAccepted(_Response):
    """`accepted` is false for a repeated `event_id`: nothing changed."""

    accepted: bool


class EventView(_Response):
    position: int
    stream_id: str
    version: int
    type: str
    event_version: int
    recorded_at: str
    data: dict[str, Any]


class SignalAccepted(_Response):
    """Where a delivered signal led the saga's wait: on, to failing, or waiting again."""

    saga_id: str
    signal: str
    outcome: Literal["continue", "fail", "wait"]


class Page(_Response):
    """A page of a listing; pass `next_cursor` back as `cursor` for the next page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class Health(_Response):
    status: Literal["ok"]
    database: Literal["ok"]
    projections: dict[str, Any] | None


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, validation_error")
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    """Every error, whatever the status code."""

    error: ErrorBody


ERROR_DESCRIPTIONS = {
    401: "Missing or unknown bearer key (when the server has FULFILLMENT_API_KEYS)",
    403: "The key's role may not do this (docs/api.md, Authentication)",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Request body larger than 64 KiB",
    421: "Host is not a loopback name or address (when the server has no FULFILLMENT_API_KEYS)",
    422: "Invalid request; `details` lists the fields",
    429: "Over the key's FULFILLMENT_RATE_LIMIT_PER_MINUTE writes; retry after `Retry-After`",
    503: "Database unavailable or busy",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's errors, by status code."""
    return {c: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[c]} for c in codes}
