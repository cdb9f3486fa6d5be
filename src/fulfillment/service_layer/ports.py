"""Ports: what the service layer needs from the outside world, as abstract interfaces."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def today(self) -> date:
        return self.now().date()


@dataclass(frozen=True)
class Booking:
    carrier: str
    tracking_number: str


class Carrier(abc.ABC):
    """A shipping carrier. Calls are idempotent by key: the same key books one shipment."""

    @abc.abstractmethod
    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        """Raises UnsupportedDestination (for good) or TransientFailure (try again)."""

    @abc.abstractmethod
    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        """Raises TransientFailure when the carrier cannot be reached."""


@dataclass(frozen=True)
class StockLevel:
    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class PrescriptionService(abc.ABC):
    @abc.abstractmethod
    def create(self, order_id: str, details: PrescriptionDetails, today: date) -> str:
        """One prescription per order (idempotent); raises PrescriptionExpired."""

    @abc.abstractmethod
    def cancel(self, order_id: str) -> None: ...

    @abc.abstractmethod
    def mark_dispensed(self, order_id: str) -> None: ...


class InventoryReservationService(abc.ABC):
    @abc.abstractmethod
    def set_on_hand(self, sku: str, on_hand: int) -> StockLevel:
        """Raises InvalidInventory when `on_hand` would drop below what is reserved."""

    @abc.abstractmethod
    def get(self, sku: str) -> StockLevel | None: ...

    @abc.abstractmethod
    def reserve(self, order_id: str, lines: tuple[OrderLine, ...]) -> str:
        """All-or-nothing, one reservation per order (idempotent); raises InsufficientStock."""

    @abc.abstractmethod
    def release(self, order_id: str) -> None: ...

    @abc.abstractmethod
    def consume(self, order_id: str) -> None: ...


class ShipmentService(abc.ABC):
    @abc.abstractmethod
    def record_initiated(self, order_id: str, booking: Booking, country: str) -> str:
        """One shipment per order (idempotent); returns the shipment id."""

    @abc.abstractmethod
    def cancel(self, order_id: str) -> None: ...


class OrderRepository(abc.ABC):
    @abc.abstractmethod
    def get(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    def add(self, order: Order) -> None: ...


class SagaRepository(abc.ABC):
    @abc.abstractmethod
    def get(self, saga_id: str) -> Saga | None: ...

    @abc.abstractmethod
    def add(self, saga: Saga) -> None: ...


@dataclass(frozen=True)
class IdempotencyRecord:
    """A client's `Idempotency-Key` and what its first request produced."""

    key: str
    request_hash: str  # of the normalized request body: the same key with another body is refused
    order_id: str
    response: dict[str, Any]  # the first response's body, answered again on a replay


class IdempotencyKeys(abc.ABC):
    """Keys stored in the transaction that creates the order: one key, one order, ever."""

    @abc.abstractmethod
    def get(self, key: str) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    def add(self, record: IdempotencyRecord) -> None:
        """Raises (an integrity error) when a concurrent transaction stored the key first."""


@dataclass(frozen=True)
class SagaJob:
    """A saga's row in the job queue: the step it is at, and `ready`, `running` or `dead`."""

    kind: str
    status: str

    @property
    def dead(self) -> bool:
        return self.status == "dead"


class SagaJobs(abc.ABC):
    """The sagas' job rows, as seen from inside a unit of work (its transaction)."""

    @abc.abstractmethod
    def get(self, saga_id: str) -> SagaJob | None: ...

    @abc.abstractmethod
    def revive(self, saga_id: str) -> bool:
        """Put the saga's dead job back in line now, its failure count reset; False if it
        has none (any more)."""

    @abc.abstractmethod
    def cancel(self, saga_id: str) -> None:
        """Remove the saga's job, whatever its state (a wait's timer that a signal makes
        way for; a worker that holds it loses it, and its commit fails)."""
