"""Domain errors. Business failures decide an order's fate; the rest are bugs or races."""

from __future__ import annotations

from fulfillment.domain.status import FailureReason


class DomainError(Exception):
    """Base of every error the domain raises."""


class IllegalTransition(DomainError):
    """An aggregate was asked to do something its current state forbids."""


class BusinessRuleViolation(DomainError):
    """A step cannot succeed, whatever the number of attempts: it fails for good with
    `reason` (a `FailureReason`, or a reason a saga definition names)."""

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = str(reason)


class PrescriptionExpired(BusinessRuleViolation):
    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.PRESCRIPTION_EXPIRED, message)


class InsufficientStock(BusinessRuleViolation):
    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.INSUFFICIENT_STOCK, message)


class UnsupportedDestination(BusinessRuleViolation):
    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.UNSUPPORTED_DESTINATION, message)


class CarrierRejected(BusinessRuleViolation):
    """The carrier refused the shipment (its reason in the message, never the address)."""

    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.CARRIER_REJECTED, message)


class PersonalDataErased(BusinessRuleViolation):
    """A step needs the patient data of a customer who was erased meanwhile."""

    def __init__(self, message: str) -> None:
        super().__init__(FailureReason.PERSONAL_DATA_ERASED, message)


class DeadlineExceeded(BusinessRuleViolation):
    """A step or the whole saga ran past its deadline."""


class TransientFailure(Exception):
    """A failure that may pass: the step is retried with backoff (carrier down, timeout).

    `retry_after_seconds`: how long the other side asked to be left alone (an HTTP
    `Retry-After`); the retry then waits at least that long, still within the step's
    deadline. None: the retry policy's backoff alone."""

    def __init__(self, *args: object, retry_after_seconds: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after_seconds = retry_after_seconds


class InvalidInventory(DomainError):
    """An inventory change would break `0 <= reserved <= on_hand`."""
