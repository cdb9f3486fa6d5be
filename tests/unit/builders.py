"""Small builders of domain values for the unit tests: one place for the test data."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from fulfillment.domain.events import OrderCreated
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.saga_definition import SagaDefinition
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer import order_saga

T0 = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
TODAY = T0.date()


def at(seconds: float = 0.0) -> datetime:
    """A moment `seconds` after the tests' epoch T0."""
    return T0 + timedelta(seconds=seconds)


def lines(*pairs: tuple[str, int]) -> tuple[OrderLine, ...]:
    return tuple(OrderLine(sku, qty) for sku, qty in pairs) or (OrderLine("ASPIRIN-100", 2),)


def prescription(expires_on: date | None = None) -> PrescriptionDetails:
    return PrescriptionDetails(
        prescriber_id="dr-who",
        patient_name="Ada Lovelace",
        expires_on=expires_on or TODAY + timedelta(days=30),
    )


def address(country: str = "NL") -> ShippingAddress:
    return ShippingAddress(
        name="Ada Lovelace",
        line1="Damrak 1",
        city="Amsterdam",
        postal_code="1012 LG",
        country=country,
    )


def order_created(order_id: str = "o-1", **overrides: object) -> OrderCreated:
    values: dict[str, object] = {
        "occurred_at": T0,
        "order_id": order_id,
        "customer_id": "c-1",
        "items": lines(),
        "prescription": prescription(),
        "shipping_address": address(),
    }
    values.update(overrides)
    return OrderCreated(**values)  # type: ignore[arg-type]


def placed_order(order_id: str = "o-1") -> Order:
    created = order_created(order_id)
    return Order.place(
        order_id,
        customer_id=created.customer_id,
        items=created.items,
        prescription=created.prescription,
        shipping_address=created.shipping_address,
        at=T0,
    )


def started_saga(order_id: str = "o-1", *, definition: SagaDefinition | None = None) -> Saga:
    """A saga of the order saga's version 1 (three steps and the pivot, no waits: the
    step machinery's tests), or of `definition`."""
    return order_saga.start(
        placed_order(order_id),
        deadline_at=at(3600),
        at=T0,
        definition=definition or order_saga.ORDER_SAGA_V1,
    )
