"""The Order aggregate: what the customer asked for and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.errors import DomainError, IllegalTransition
from fulfillment.domain.events import (
    DomainEvent,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    ShipmentDelivered,
    ShipmentReturned,
    ShipmentTrackingUpdated,
)
from fulfillment.domain.status import OrderStatus, TrackingStatus
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress

MAX_ORDER_LINES = 100
MAX_QUANTITY = 10_000


class Order(Aggregate):
    stream_prefix = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: OrderStatus | None = None
        self.customer_id = ""
        self.items: tuple[OrderLine, ...] = ()
        self.prescription: PrescriptionDetails | None = None
        self.shipping_address: ShippingAddress | None = None
        self.reason: str | None = None
        self.tracking_number: str | None = None
        self.placed_at: datetime | None = None
        #: The parcel's fate after handoff, as the carrier's updates moved it (None: no
        #: update recorded on the order).
        self.tracking_status: TrackingStatus | None = None
        #: The carrier's event ids already recorded: a repeated update changes nothing.
        self.carrier_events: set[str] = set()

    # --- commands -------------------------------------------------------------

    @classmethod
    def place(
        cls,
        order_id: str,
        *,
        customer_id: str,
        items: tuple[OrderLine, ...],
        prescription: PrescriptionDetails,
        shipping_address: ShippingAddress,
        at: datetime,
    ) -> Order:
        cls.check_items(items)
        order = cls(order_id)
        order._record(
            OrderCreated(
                occurred_at=at,
                order_id=order_id,
                customer_id=customer_id,
                items=items,
                prescription=prescription,
                shipping_address=shipping_address,
            )
        )
        return order

    def fulfil(self, tracking_number: str, *, at: datetime) -> None:
        self.check_pending("fulfil")
        self._record(
            OrderFulfilled(occurred_at=at, order_id=self.id, tracking_number=tracking_number)
        )

    def cancel(self, reason: str, *, at: datetime) -> None:
        self.check_pending("cancel")
        self._record(OrderCancelled(occurred_at=at, order_id=self.id, reason=reason))

    def record_tracking(
        self,
        status: TrackingStatus,
        *,
        tracking_number: str,
        carrier_event_id: str,
        reported_at: datetime,
        location: str | None,
        at: datetime,
    ) -> bool:
        """Record a carrier's tracking update; False for one already recorded (its event
        id). An update that would move the parcel back (`in_transit` after `delivered`)
        is recorded, not applied."""
        if carrier_event_id in self.carrier_events:
            return False
        current = self.tracking_status
        applies = current is None or (not current.final and status.rank >= current.rank)
        fields: dict[str, Any] = {
            "occurred_at": at,
            "order_id": self.id,
            "tracking_number": tracking_number,
            "carrier_event_id": carrier_event_id,
            "reported_at": reported_at,
            "location": location,
        }
        event: DomainEvent
        if applies and status is TrackingStatus.DELIVERED:
            event = ShipmentDelivered(**fields)
        elif applies and status is TrackingStatus.RETURNED_TO_SENDER:
            event = ShipmentReturned(**fields)
        else:
            event = ShipmentTrackingUpdated(status=status.value, applied=applies, **fields)
        self._record(event)
        return True

    @property
    def display_status(self) -> OrderStatus | None:
        """The status users see: a fulfilled order's parcel may since have been
        delivered or returned."""
        if self.status is OrderStatus.FULFILLED:
            if self.tracking_status is TrackingStatus.DELIVERED:
                return OrderStatus.DELIVERED
            if self.tracking_status is TrackingStatus.RETURNED_TO_SENDER:
                return OrderStatus.RETURNED
        return self.status

    def to_created_event(self) -> OrderCreated:
        """The order as placed (what a saga starts from)."""
        assert self.prescription is not None and self.shipping_address is not None
        assert self.placed_at is not None
        return OrderCreated(
            occurred_at=self.placed_at,
            order_id=self.id,
            customer_id=self.customer_id,
            items=self.items,
            prescription=self.prescription,
            shipping_address=self.shipping_address,
        )

    # --- guards ---------------------------------------------------------------

    @staticmethod
    def check_items(items: tuple[OrderLine, ...]) -> None:
        if not items:
            raise DomainError("an order needs at least one line")
        if len(items) > MAX_ORDER_LINES:
            raise DomainError(f"an order has at most {MAX_ORDER_LINES} lines")
        for line in items:
            if not 1 <= line.quantity <= MAX_QUANTITY:
                raise DomainError(f"quantity must be 1..{MAX_QUANTITY}")

    def check_pending(self, action: str) -> None:
        if self.status is not OrderStatus.PENDING:
            raise IllegalTransition(f"cannot {action} order {self.id} in status {self.status}")

    # --- state ----------------------------------------------------------------

    def _when_OrderCreated(self, event: OrderCreated) -> None:
        self.status = OrderStatus.PENDING
        self.customer_id = event.customer_id
        self.items = event.items
        self.prescription = event.prescription
        self.shipping_address = event.shipping_address
        self.placed_at = event.occurred_at

    def _when_OrderFulfilled(self, event: OrderFulfilled) -> None:
        self.status = OrderStatus.FULFILLED
        self.tracking_number = event.tracking_number

    def _when_OrderCancelled(self, event: OrderCancelled) -> None:
        self.status = OrderStatus.CANCELLED
        self.reason = event.reason

    def _when_ShipmentTrackingUpdated(self, event: ShipmentTrackingUpdated) -> None:
        self.carrier_events.add(event.carrier_event_id)
        if event.applied:
            self.tracking_status = TrackingStatus(event.status)

    def _when_ShipmentDelivered(self, event: ShipmentDelivered) -> None:
        self.carrier_events.add(event.carrier_event_id)
        self.tracking_status = TrackingStatus.DELIVERED

    def _when_ShipmentReturned(self, event: ShipmentReturned) -> None:
        self.carrier_events.add(event.carrier_event_id)
        self.tracking_status = TrackingStatus.RETURNED_TO_SENDER
