"""The HTTP API's request and response bodies (docs/api.md), as pydantic models.

Requests are validated strictly at the edge: unknown fields are rejected, numbers must be
JSON integers, texts are 1..200 characters without control characters, dates are
`YYYY-MM-DD` and real, countries are two upper-case letters. Response models document the
shapes in `/openapi.json`.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

from fulfillment.domain.order import MAX_ORDER_LINES, MAX_QUANTITY
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.ports import UNCHANGED, Unchanged

MAX_TEXT = 200
#: A generous ceiling that keeps stock levels inside every backend's INTEGER column.
MAX_ON_HAND = 1_000_000_000
#: No C0/C1 control characters (and, implicitly, no lone surrogates).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]+$"
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT, pattern=NO_CONTROL_CHARACTERS),
]


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
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests -------------------------------------------------------------------------


#: The DEA schedules of controlled substances (`null`: not controlled).
DeaSchedule = Literal["II", "III", "IV", "V"]


class InventoryUpdate(_Request):
    """`PUT /inventory/{sku}`: the units of lot `default` (no expiry date) and, when
    given, the SKU's DEA schedule."""

    on_hand: StrictInt = Field(ge=0, le=MAX_ON_HAND)
    dea_schedule: DeaSchedule | None = Field(
        default=None, description="absent: left as it is; null: not a controlled substance"
    )

    def schedule(self) -> str | Unchanged | None:
        """The schedule to store, or UNCHANGED when the body leaves it out."""
        return self.dea_schedule if "dea_schedule" in self.model_fields_set else UNCHANGED


class LotUpdate(_Request):
    """`PUT /inventory/{sku}/lots/{lot}`: the lot's units and expiry date."""

    on_hand: StrictInt = Field(ge=0, le=MAX_ON_HAND)
    expires_on: IsoDate = Field(json_schema_extra={"format": "date"})


class OrderLineIn(_Request):
    sku: Text
    quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY)


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
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None
    reason: Text | None = None

    def payload(self) -> dict[str, Any]:
        """The decision as its signal's payload."""
        return self.model_dump(exclude={"decision"}, exclude_none=True)


class CancelRequest(_Request):
    """`POST /orders/{id}/cancel`."""

    reason: Literal["customer_request", "prescriber_cancelled"]
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None


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


_ERROR_DESCRIPTIONS = {
    401: "Missing or unknown bearer key (when the server has FULFILLMENT_API_KEYS)",
    403: "The key's role may not do this (docs/api.md, Authentication)",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Request body larger than 64 KiB",
    421: "Host is not a loopback name or address (when the server has no FULFILLMENT_API_KEYS)",
    422: "Invalid request; `details` lists the fields",
    503: "Database unavailable or busy",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's errors, by status code."""
    return {c: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[c]} for c in codes}
