"""Command handlers: plain functions that receive their dependencies.

Each handler checks the saga's state before acting, so a late or duplicate job is
harmless: it finds nothing to do and only consumes its job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fulfillment.domain.errors import (
    DeadlineExceeded,
    DomainError,
    IllegalTransition,
    PrescriptionExpired,
)
from fulfillment.domain.order import Order
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.domain.status import Compensation, FailureReason, SagaStatus, Step
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.ports import Booking, Carrier, Clock, StockLevel
from fulfillment.service_layer.retry import RetryPolicy
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork


class NotFound(DomainError):
    """The order or saga does not exist."""


class IdempotencyKeyReused(DomainError):
    """An `Idempotency-Key` already stored for a request with a different body."""


@dataclass(frozen=True)
class Timeouts:
    step_seconds: float = 900.0
    saga_seconds: float = 3600.0


def _saga(uow: AbstractUnitOfWork, saga_id: str) -> OrderFulfillmentSaga:
    saga = uow.sagas.get(saga_id)
    if saga is None:
        raise NotFound(f"saga {saga_id} not found")
    return saga


def _order(uow: AbstractUnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found")
    return order


def _finish_order_if_saga_ended(
    uow: AbstractUnitOfWork, saga: OrderFulfillmentSaga, clock: Clock
) -> None:
    """A saga that has ended settles its order in the same transaction."""
    if saga.status is SagaStatus.COMPENSATED:
        _order(uow, saga.order_id).cancel(saga.failure_reason or "cancelled", at=clock.now())
    elif saga.status is SagaStatus.COMPLETED and saga.tracking_number:
        _order(uow, saga.order_id).fulfil(saga.tracking_number, at=clock.now())


def check_deadlines(
    saga: OrderFulfillmentSaga, step: Step, clock: Clock, timeouts: Timeouts
) -> None:
    now = clock.now()
    if saga.deadline_at is not None and now > saga.deadline_at:
        raise DeadlineExceeded(
            FailureReason.SAGA_TIMEOUT, f"saga deadline {saga.deadline_at} passed"
        )
    started = saga.step_started_at(step)
    if started is not None and now > started + timedelta(seconds=timeouts.step_seconds):
        raise DeadlineExceeded(
            FailureReason.STEP_TIMEOUT, f"step {step} exceeded {timeouts.step_seconds:g}s"
        )


# --- orders ---------------------------------------------------------------------------


def create_order(
    cmd: c.CreateOrder, uow: AbstractUnitOfWork, clock: Clock, timeouts: Timeouts
) -> str:
    """Place the order and start its saga in the same transaction.

    With an idempotency key, returns the order the key already created (starting nothing),
    or stores the key with the new order: a concurrent twin fails on the unique key, and
    its retry by the bus finds the key here.
    """
    with uow:
        if cmd.idempotency is not None:
            stored = uow.idempotency.get(cmd.idempotency.key)
            if stored is not None:
                if stored.request_hash != cmd.idempotency.request_hash:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was already used with a different request body"
                    )
                return stored.order_id
        if uow.orders.get(cmd.order_id) is not None:
            raise DomainError(f"order {cmd.order_id} already exists")
        now = clock.now()
        order = Order.place(
            cmd.order_id,
            customer_id=cmd.customer_id,
            items=cmd.items,
            prescription=cmd.prescription,
            shipping_address=cmd.shipping_address,
            at=now,
        )
        uow.orders.add(order)
        _start_saga(uow, order, clock, timeouts)
        if cmd.idempotency is not None:
            uow.idempotency.add(cmd.idempotency)
        uow.commit()
    return cmd.order_id


def _start_saga(uow: AbstractUnitOfWork, order: Order, clock: Clock, timeouts: Timeouts) -> None:
    now = clock.now()
    created = order.to_created_event()
    saga = OrderFulfillmentSaga.start(
        created, deadline_at=now + timedelta(seconds=timeouts.saga_seconds), at=now
    )
    uow.sagas.add(saga)


def start_order_fulfillment_saga(
    cmd: c.StartOrderFulfillmentSaga, uow: AbstractUnitOfWork, clock: Clock, timeouts: Timeouts
) -> None:
    """Start the saga of an order that has none (an order created before the saga existed)."""
    with uow:
        order = _order(uow, cmd.order_id)
        if uow.sagas.get(cmd.order_id) is not None:
            uow.commit()
            return
        _start_saga(uow, order, clock, timeouts)
        uow.commit()


# --- forward steps --------------------------------------------------------------------


def create_prescription(
    cmd: c.CreatePrescription, uow: AbstractUnitOfWork, clock: Clock, timeouts: Timeouts
) -> None:
    with uow:
        saga = _saga(uow, cmd.saga_id)
        if saga.awaits(Step.CREATE_PRESCRIPTION):
            check_deadlines(saga, Step.CREATE_PRESCRIPTION, clock, timeouts)
            assert saga.prescription is not None
            if saga.prescription.is_expired(clock.today()):
                raise PrescriptionExpired(
                    f"prescription expired on {saga.prescription.expires_on.isoformat()}"
                )
            prescription_id = uow.prescriptions.create(saga.id, saga.prescription, clock.today())
            saga.record_prescription_created(prescription_id, at=clock.now())
        uow.commit()


def reserve_inventory(
    cmd: c.ReserveInventory, uow: AbstractUnitOfWork, clock: Clock, timeouts: Timeouts
) -> None:
    with uow:
        saga = _saga(uow, cmd.saga_id)
        if saga.awaits(Step.RESERVE_INVENTORY):
            check_deadlines(saga, Step.RESERVE_INVENTORY, clock, timeouts)
            reservation_id = uow.inventory.reserve(saga.id, saga.items)
            saga.record_inventory_reserved(reservation_id, saga.items, at=clock.now())
        uow.commit()


def initiate_shipment(
    cmd: c.InitiateShipment,
    uow: AbstractUnitOfWork,
    clock: Clock,
    timeouts: Timeouts,
    carrier: Carrier,
) -> None:
    # The carrier call happens outside any transaction: it may be slow, and it is
    # idempotent by key, so a crash between the call and the commit books nothing twice.
    with uow.read_only():
        saga = _saga(uow, cmd.saga_id)
        due = saga.awaits(Step.INITIATE_SHIPMENT)
        if due:
            check_deadlines(saga, Step.INITIATE_SHIPMENT, clock, timeouts)
    booking: Booking | None = None
    if due:
        assert saga.shipping_address is not None
        booking = carrier.book(f"{saga.id}:shipment", saga.shipping_address, saga.items)
    with uow:
        saga = _saga(uow, cmd.saga_id)
        if booking is not None and saga.awaits(Step.INITIATE_SHIPMENT):
            assert saga.shipping_address is not None
            shipment_id = uow.shipments.record_initiated(
                saga.id, booking, saga.shipping_address.country
            )
            saga.record_shipment_initiated(
                shipment_id, booking.carrier, booking.tracking_number, at=clock.now()
            )
        uow.commit()


def complete_order_fulfillment(
    cmd: c.CompleteOrderFulfillment, uow: AbstractUnitOfWork, clock: Clock
) -> None:
    """Stock leaves the shelf, the prescription is dispensed, the order is fulfilled."""
    with uow:
        saga = _saga(uow, cmd.saga_id)
        if saga.ready_to_complete:
            uow.inventory.consume(saga.id)
            uow.prescriptions.mark_dispensed(saga.id)
            saga.complete(at=clock.now())
            _finish_order_if_saga_ended(uow, saga, clock)
        uow.commit()


# --- failures -------------------------------------------------------------------------


def record_step_failure(
    cmd: c.RecordStepFailure, uow: AbstractUnitOfWork, clock: Clock, retry: RetryPolicy
) -> bool:
    """Retry the step after a backoff, or fail it for good: True when it failed for good."""
    failed = False
    with uow:
        saga = _saga(uow, cmd.saga_id)
        if saga.awaits(cmd.step):
            attempt = saga.attempts(cmd.step) + 1
            if cmd.reason is not None:
                saga.fail_step(cmd.step, cmd.reason, cmd.error, at=clock.now())
                failed = True
            elif retry.exhausted(attempt):
                saga.fail_step(
                    cmd.step, FailureReason.RETRIES_EXHAUSTED.value, cmd.error, at=clock.now()
                )
                failed = True
            else:
                saga.record_attempt_failed(
                    cmd.step, cmd.error, retry_in_seconds=retry.delay(attempt), at=clock.now()
                )
            _finish_order_if_saga_ended(uow, saga, clock)
        uow.commit()
    return failed


# --- compensations --------------------------------------------------------------------


def _compensate(
    uow: AbstractUnitOfWork, saga_id: str, compensation: Compensation
) -> OrderFulfillmentSaga | None:
    """Load the saga; None when this compensation is not due (a duplicate or late job)."""
    saga = _saga(uow, saga_id)
    return saga if saga.next_compensation is compensation else None


def cancel_shipment(
    cmd: c.CancelShipment, uow: AbstractUnitOfWork, clock: Clock, carrier: Carrier
) -> None:
    with uow.read_only():
        due = _compensate(uow, cmd.saga_id, Compensation.CANCEL_SHIPMENT)
    if due is not None:
        assert due.tracking_number is not None
        carrier.cancel(f"{due.id}:shipment-cancel", due.tracking_number)
    # Recorded only if this job made the carrier call (a late duplicate records nothing).
    _record_compensation(
        uow, cmd.saga_id, Compensation.CANCEL_SHIPMENT, clock, carrier_called=due is not None
    )


def _record_compensation(
    uow: AbstractUnitOfWork,
    saga_id: str,
    compensation: Compensation,
    clock: Clock,
    *,
    carrier_called: bool = True,
) -> None:
    """In one transaction: undo the step in the service tables, record it, settle the order."""
    with uow:
        effects: dict[Compensation, Callable[[str], None]] = {
            Compensation.CANCEL_SHIPMENT: uow.shipments.cancel,
            Compensation.RELEASE_INVENTORY: uow.inventory.release,
            Compensation.CANCEL_PRESCRIPTION: uow.prescriptions.cancel,
        }
        saga = _compensate(uow, saga_id, compensation)
        if saga is not None and carrier_called:
            effects[compensation](saga.id)
            saga.record_compensated(compensation, at=clock.now())
            _finish_order_if_saga_ended(uow, saga, clock)
        uow.commit()


def release_inventory(cmd: c.ReleaseInventory, uow: AbstractUnitOfWork, clock: Clock) -> None:
    _record_compensation(uow, cmd.saga_id, Compensation.RELEASE_INVENTORY, clock)


def cancel_prescription(cmd: c.CancelPrescription, uow: AbstractUnitOfWork, clock: Clock) -> None:
    _record_compensation(uow, cmd.saga_id, Compensation.CANCEL_PRESCRIPTION, clock)


def record_compensation_failure(
    cmd: c.RecordCompensationFailure, uow: AbstractUnitOfWork, clock: Clock, retry: RetryPolicy
) -> None:
    with uow:
        saga = _compensate(uow, cmd.saga_id, cmd.compensation)
        if saga is not None:
            attempt = saga.compensation_attempts(cmd.compensation) + 1
            if retry.exhausted(attempt):
                saga.park(cmd.compensation, cmd.error, at=clock.now())
            else:
                saga.record_compensation_attempt_failed(
                    cmd.compensation,
                    cmd.error,
                    retry_in_seconds=retry.delay(attempt),
                    at=clock.now(),
                )
        uow.commit()


@dataclass(frozen=True)
class Resumed:
    """What `ResumeSaga` did: revived the dead job `name` (`what="job"`), or retried the
    parked compensation `name` (`what="compensation"`)."""

    what: str
    name: str


class NothingToResume(IllegalTransition):
    """The saga waits for no operator: it runs, or has ended."""


def resume_saga(cmd: c.ResumeSaga, uow: AbstractUnitOfWork, clock: Clock) -> Resumed:
    with uow:
        saga = _saga(uow, cmd.saga_id)
        job = uow.jobs.get(saga.id)
        if job is not None and job.dead:
            if not uow.jobs.revive(saga.id):
                raise ConcurrencyError(f"the dead job of saga {saga.id} changed meanwhile")
            resumed = Resumed("job", job.kind)
        elif saga.status is SagaStatus.COMPENSATION_FAILED:
            saga.retry_compensation(at=clock.now())
            resumed = Resumed("compensation", saga.compensation_stack[-1].value)
        else:
            status = saga.status.value if saga.status else "not started"
            with_job = f" with its job {job.status}" if job is not None else ""
            raise NothingToResume(f"saga {saga.id} is {status}{with_job}: nothing to retry")
        uow.commit()
    return resumed


# --- inventory ------------------------------------------------------------------------


def set_inventory(cmd: c.SetInventory, uow: AbstractUnitOfWork) -> StockLevel:
    with uow:
        level = uow.inventory.set_on_hand(cmd.sku, cmd.on_hand)
        uow.commit()
    return level
