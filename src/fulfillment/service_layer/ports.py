"""Ports: what the service layer needs from the outside world, as abstract interfaces."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.values import (
    LotAllocation,
    OrderLine,
    PrescriptionDetails,
    ShippingAddress,
)


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
    #: What the carrier said of this booking: True, it is also the pickup; False, the
    #: pickup is confirmed later by a tracking update; None, as the carrier's
    #: `confirms_pickup_at_booking` says.
    picked_up_at_booking: bool | None = None


class Carrier(abc.ABC):
    """A shipping carrier. Calls are idempotent by key: the same key books one shipment.
    How to write one: docs/carriers.md."""

    #: Whether a booking is also the pickup (the saga then waits for no pickup
    #: confirmation); else the carrier confirms pickup later, by a tracking update.
    #: A booking may say otherwise for itself (`Booking.picked_up_at_booking`).
    confirms_pickup_at_booking: bool = False

    @abc.abstractmethod
    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        """Raises UnsupportedDestination (for good) or TransientFailure (try again)."""

    @abc.abstractmethod
    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        """Raises TransientFailure when the carrier cannot be reached."""

    def close(self) -> None:
        """Release what the carrier holds (connections); by default nothing."""
        return None


#: The lot `PUT /inventory/{sku}` sets: units without an expiry date.
DEFAULT_LOT = "default"
#: The DEA schedules of controlled substances a SKU may have (None: not controlled).
DEA_SCHEDULES = ("II", "III", "IV", "V")


class Unchanged(Enum):
    """A field left as it is: absent from the request (None would clear it)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True)
class LotLevel:
    """The units of one lot of a SKU; `expires_on` None for lot `default`."""

    sku: str
    lot: str
    on_hand: int
    reserved: int
    expires_on: date | None = None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True)
class StockLevel:
    """A SKU's totals over its lots, its DEA schedule, and its lots (first expiry first,
    lots without expiry last, then by name).

    Two levels compare by their totals and schedule: `lots` is the detail behind the
    totals (compare it on its own)."""

    sku: str
    on_hand: int
    reserved: int
    dea_schedule: str | None = None
    lots: tuple[LotLevel, ...] = field(default=(), compare=False)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True)
class Reservation:
    """An order's reservation: its id and the lots its units came from."""

    reservation_id: str
    lots: tuple[LotAllocation, ...]


def fefo_key(lot: LotLevel) -> tuple[bool, date, str]:
    """First expiry first; lots without expiry last; then by name."""
    return (lot.expires_on is None, lot.expires_on or date.min, lot.lot)


class PrescriptionService(abc.ABC):
    @abc.abstractmethod
    def create(
        self, order_id: str, details: PrescriptionDetails, today: date, *, customer_id: str
    ) -> str:
        """One prescription per order (idempotent); raises PrescriptionExpired. Its
        patient data are the customer's (sealed under their key)."""

    @abc.abstractmethod
    def cancel(self, order_id: str) -> None: ...

    @abc.abstractmethod
    def mark_dispensed(self, order_id: str) -> None: ...


class InventoryReservationService(abc.ABC):
    """Stock by SKU and lot. Per lot and per SKU, always `0 <= reserved <= on_hand`."""

    @abc.abstractmethod
    def set_on_hand(
        self, sku: str, on_hand: int, dea_schedule: str | Unchanged | None = UNCHANGED
    ) -> StockLevel:
        """Set lot `default` (no expiry) of the SKU, creating the SKU if need be, and its
        DEA schedule unless UNCHANGED (None: not controlled). Raises InvalidInventory
        when `on_hand` would drop below what is reserved of that lot, DomainError for an
        unknown schedule."""

    @abc.abstractmethod
    def set_lot(self, sku: str, lot: str, on_hand: int, expires_on: date) -> LotLevel:
        """Set a lot's units and expiry, creating the lot (and the SKU) if need be.
        Raises InvalidInventory below what is reserved of the lot, DomainError for lot
        `default` (it has no expiry: `set_on_hand` sets it)."""

    @abc.abstractmethod
    def get(self, sku: str) -> StockLevel | None:
        """The SKU's totals, schedule and lots; None for an unknown SKU."""

    @abc.abstractmethod
    def reserve(
        self,
        order_id: str,
        lines: tuple[OrderLine, ...],
        *,
        today: date,
        min_shelf_life_days: int = 30,
    ) -> Reservation:
        """Take each SKU's units from its lots, earliest expiry first (lots without
        expiry last), from lots that expire on `today + min_shelf_life_days` or later.
        All-or-nothing, one reservation per order (idempotent: a second call takes
        nothing and returns the first's reservation); raises InsufficientStock."""

    @abc.abstractmethod
    def release(self, order_id: str) -> None:
        """Give the reservation's units back to their lots (once)."""

    @abc.abstractmethod
    def consume(self, order_id: str) -> None:
        """Take the reservation's units off their lots' shelves (once)."""

    @abc.abstractmethod
    def lot_orders(self, sku: str, lot: str) -> list[tuple[str, int]] | None:
        """(order id, units) of every reservation that took units of the lot, in the
        order they were made (a recall); None for an unknown lot."""

    @abc.abstractmethod
    def controlled(self, skus: Iterable[str]) -> bool:
        """Whether any of the SKUs has a DEA schedule."""


class ShipmentService(abc.ABC):
    @abc.abstractmethod
    def record_initiated(self, order_id: str, booking: Booking, country: str) -> str:
        """One shipment per order (idempotent); returns the shipment id."""

    @abc.abstractmethod
    def cancel(self, order_id: str) -> None: ...

    @abc.abstractmethod
    def order_of(self, tracking_number: str) -> str | None:
        """The order whose shipment has this tracking number, if any."""


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
    """Keys stored in the transaction that creates the order: one key, one order, until
    the key expires (FULFILLMENT_IDEMPOTENCY_TTL_SECONDS; then `get` finds none)."""

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
