"""The Order aggregate: what the customer asked for and how it ended."""

from __future__ import annotations

from datetime import datetime

from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.errors import DomainError, IllegalTransition
from fulfillment.domain.events import OrderCancelled, OrderCreated, OrderFulfilled
from fulfillment.domain.status import OrderStatus
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
