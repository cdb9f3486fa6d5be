"""Every status enum of the system, in one place."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    AWAITING_VERIFICATION = "awaiting_verification"  # a pharmacist must decide
    FULFILLED = "fulfilled"  # picked up by the carrier
    DELIVERED = "delivered"
    RETURNED = "returned"  # returned to sender after pickup
    CANCELLED = "cancelled"
    NEEDS_ATTENTION = "needs_attention"


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"

    @property
    def is_terminal(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)


class StepStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"  # a wait, for its signals
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class PrescriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    DISPENSED = "dispensed"


class ReservationStatus(StrEnum):
    RESERVED = "reserved"
    RELEASED = "released"
    CONSUMED = "consumed"


class ShipmentStatus(StrEnum):
    """The `shipments` row's status (booked or voided)."""

    INITIATED = "initiated"
    CANCELLED = "cancelled"


class TrackingStatus(StrEnum):
    """A parcel's fate after handoff, as the carrier's webhooks report it."""

    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    RETURNED_TO_SENDER = "returned_to_sender"

    @property
    def rank(self) -> int:
        """Updates never move a parcel back: an update of a lower rank than the
        status it has is recorded but not applied (delivered and returned are final)."""
        return _TRACKING_RANK[self]

    @property
    def final(self) -> bool:
        """Delivered or returned: no later update moves the parcel any more."""
        return self in (TrackingStatus.DELIVERED, TrackingStatus.RETURNED_TO_SENDER)


_TRACKING_RANK = {
    TrackingStatus.IN_TRANSIT: 1,
    TrackingStatus.OUT_FOR_DELIVERY: 2,
    TrackingStatus.DELIVERY_FAILED: 2,
    TrackingStatus.DELIVERED: 3,
    TrackingStatus.RETURNED_TO_SENDER: 3,
}


class VerificationStatus(StrEnum):
    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CLARIFICATION_REQUESTED = "clarification_requested"


class FailureReason(StrEnum):
    """Why a step failed for good (the `reason` users see)."""

    PRESCRIPTION_EXPIRED = "prescription_expired"
    INSUFFICIENT_STOCK = "insufficient_stock"
    UNSUPPORTED_DESTINATION = "unsupported_destination"
    RETRIES_EXHAUSTED = "retries_exhausted"
    STEP_TIMEOUT = "step_timeout"
    SAGA_TIMEOUT = "saga_timeout"
    NOT_RETRIED = "not_retried"  # an error its step declares not to retry
    VERIFICATION_REJECTED = "verification_rejected"
    VERIFICATION_TIMEOUT = "verification_timeout"
    PICKUP_TIMEOUT = "pickup_timeout"
    #: The carrier refused the shipment for a reason of its own (docs/carriers.md).
    CARRIER_REJECTED = "carrier_rejected"
    #: The customer's patient data was erased while the saga ran (DELETE
    #: /customers/{id}/personal-data): it cancels, or a step that needs the data fails.
    PERSONAL_DATA_ERASED = "personal_data_erased"


class CancellationReason(StrEnum):
    """Why a customer or a prescriber stopped an order (POST /orders/{id}/cancel)."""

    CUSTOMER_REQUEST = "customer_request"
    PRESCRIBER_CANCELLED = "prescriber_cancelled"
