"""Every status enum of the system, in one place."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    FULFILLED = "fulfilled"
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
    INITIATED = "initiated"
    CANCELLED = "cancelled"


class FailureReason(StrEnum):
    """Why a step failed for good (the `reason` users see)."""

    PRESCRIPTION_EXPIRED = "prescription_expired"
    INSUFFICIENT_STOCK = "insufficient_stock"
    UNSUPPORTED_DESTINATION = "unsupported_destination"
    RETRIES_EXHAUSTED = "retries_exhausted"
    STEP_TIMEOUT = "step_timeout"
    SAGA_TIMEOUT = "saga_timeout"
    NOT_RETRIED = "not_retried"  # an error its step declares not to retry
