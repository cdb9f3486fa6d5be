"""The OrderFulfillmentSaga aggregate: which steps ran, what must be undone, and how it ends.

Its state is derived only from its events. Each forward step that succeeds pushes its
compensation on a stack; when a step fails for good the stack is popped last-in-first-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.errors import IllegalTransition
from fulfillment.domain.events import (
    CompensationAttemptFailed,
    DomainEvent,
    InventoryReleased,
    InventoryReserved,
    OrderCreated,
    OrderFulfillmentSagaCompleted,
    OrderFulfillmentSagaStarted,
    PrescriptionCancelled,
    PrescriptionCreated,
    SagaCompensationFailed,
    SagaCompensationRetried,
    SagaCompensationStarted,
    SagaStepAttemptFailed,
    ShipmentCancelled,
    ShipmentInitiated,
)
from fulfillment.domain.order_saga import ORDER_SAGA
from fulfillment.domain.status import Compensation, SagaStatus, Step, StepStatus
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress

DEFINITION_VERSION = ORDER_SAGA.version

#: The forward steps in order, each with the compensation that undoes it (ORDER_SAGA's).
DEFINITION: tuple[tuple[Step, Compensation], ...] = tuple(
    (Step(s.name), Compensation(s.compensation.name))
    for s in ORDER_SAGA.forward
    if s.compensation is not None
)
COMPENSATION_OF: dict[Step, Compensation] = dict(DEFINITION)
STEP_OF: dict[Compensation, Step] = {c: s for s, c in DEFINITION}
FAILURE_EVENT = {Step(s.name): s.failed for s in ORDER_SAGA.forward}


@dataclass
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensation_attempts: int = 0
    compensated_at: datetime | None = None


class OrderFulfillmentSaga(Aggregate):
    stream_prefix = "saga"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: SagaStatus | None = None
        self.order_id = ""
        self.definition_version = DEFINITION_VERSION
        self.customer_id = ""
        self.items: tuple[OrderLine, ...] = ()
        self.prescription: PrescriptionDetails | None = None
        self.shipping_address: ShippingAddress | None = None
        self.started_at: datetime | None = None
        self.deadline_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.steps: dict[Step, StepState] = {step: StepState() for step, _ in DEFINITION}
        self.compensation_stack: list[Compensation] = []
        self.prescription_id: str | None = None
        self.reservation_id: str | None = None
        self.reserved_lines: tuple[OrderLine, ...] = ()
        self.shipment_id: str | None = None
        self.carrier: str | None = None
        self.tracking_number: str | None = None
        self.failed_step: Step | None = None
        self.failure_reason: str | None = None
        self.parked_error: str | None = None

    # --- starting -------------------------------------------------------------

    @classmethod
    def start(
        cls, order: OrderCreated, *, deadline_at: datetime, at: datetime
    ) -> OrderFulfillmentSaga:
        """A saga per order; its id is the order's id."""
        saga = cls(order.order_id)
        saga._record(
            OrderFulfillmentSagaStarted(
                occurred_at=at,
                saga_id=order.order_id,
                order_id=order.order_id,
                definition_version=DEFINITION_VERSION,
                customer_id=order.customer_id,
                items=order.items,
                prescription=order.prescription,
                shipping_address=order.shipping_address,
                deadline_at=deadline_at,
            )
        )
        return saga

    # --- queries --------------------------------------------------------------

    @property
    def next_step(self) -> Step | None:
        """The forward step to run now, or None (all done, or not running)."""
        if self.status is not SagaStatus.RUNNING:
            return None
        for step, _ in DEFINITION:
            if self.steps[step].status is StepStatus.PENDING:
                return step
        return None

    @property
    def ready_to_complete(self) -> bool:
        return self.status is SagaStatus.RUNNING and all(
            s.status is StepStatus.SUCCEEDED for s in self.steps.values()
        )

    @property
    def next_compensation(self) -> Compensation | None:
        if self.status is not SagaStatus.COMPENSATING or not self.compensation_stack:
            return None
        return self.compensation_stack[-1]

    def awaits(self, step: Step) -> bool:
        return self.next_step is step

    def attempts(self, step: Step) -> int:
        return self.steps[step].attempts

    def compensation_attempts(self, compensation: Compensation) -> int:
        return self.steps[STEP_OF[compensation]].compensation_attempts

    def step_started_at(self, step: Step) -> datetime | None:
        return self.steps[step].started_at

    # --- guards ---------------------------------------------------------------

    def check_awaits(self, step: Step) -> None:
        if not self.awaits(step):
            raise IllegalTransition(
                f"saga {self.id} does not await {step} "
                f"(status {self.status}, next {self.next_step})"
            )

    def check_compensating(self, compensation: Compensation) -> None:
        if self.next_compensation is not compensation:
            raise IllegalTransition(
                f"saga {self.id} is not compensating {compensation} "
                f"(status {self.status}, stack {self.compensation_stack})"
            )

    # --- forward steps --------------------------------------------------------

    def record_prescription_created(self, prescription_id: str, *, at: datetime) -> None:
        self.check_awaits(Step.CREATE_PRESCRIPTION)
        self._record(
            PrescriptionCreated(occurred_at=at, saga_id=self.id, prescription_id=prescription_id)
        )

    def record_inventory_reserved(
        self, reservation_id: str, lines: tuple[OrderLine, ...], *, at: datetime
    ) -> None:
        self.check_awaits(Step.RESERVE_INVENTORY)
        self._record(
            InventoryReserved(
                occurred_at=at, saga_id=self.id, reservation_id=reservation_id, lines=lines
            )
        )

    def record_shipment_initiated(
        self, shipment_id: str, carrier: str, tracking_number: str, *, at: datetime
    ) -> None:
        self.check_awaits(Step.INITIATE_SHIPMENT)
        self._record(
            ShipmentInitiated(
                occurred_at=at,
                saga_id=self.id,
                shipment_id=shipment_id,
                carrier=carrier,
                tracking_number=tracking_number,
            )
        )

    def record_attempt_failed(
        self, step: Step, error: str, *, retry_in_seconds: float, at: datetime
    ) -> None:
        """A transient failure: the step will be tried again."""
        self.check_awaits(step)
        self._record(
            SagaStepAttemptFailed(
                occurred_at=at,
                saga_id=self.id,
                step=step,
                attempt=self.attempts(step) + 1,
                error=error,
                retry_in_seconds=retry_in_seconds,
            )
        )

    def fail_step(self, step: Step, reason: str, error: str, *, at: datetime) -> None:
        """The step failed for good: record it and start compensating, LIFO."""
        self.check_awaits(step)
        failed = FAILURE_EVENT[step]
        assert failed is not None  # a forward step always declares its failure event
        self._record(failed(occurred_at=at, saga_id=self.id, reason=reason, error=error))  # type: ignore[call-arg]
        self._record(
            SagaCompensationStarted(
                occurred_at=at,
                saga_id=self.id,
                failed_step=step,
                reason=reason,
                compensations=tuple(reversed(self.compensation_stack)),
            )
        )

    def complete(self, *, at: datetime) -> None:
        if not self.ready_to_complete or self.tracking_number is None:
            raise IllegalTransition(f"saga {self.id} cannot complete in status {self.status}")
        self._record(
            OrderFulfillmentSagaCompleted(
                occurred_at=at, saga_id=self.id, tracking_number=self.tracking_number
            )
        )

    # --- compensations --------------------------------------------------------

    def record_compensated(self, compensation: Compensation, *, at: datetime) -> None:
        self.check_compensating(compensation)
        event: DomainEvent
        if compensation is Compensation.CANCEL_SHIPMENT:
            assert self.shipment_id is not None and self.tracking_number is not None
            event = ShipmentCancelled(
                occurred_at=at,
                saga_id=self.id,
                shipment_id=self.shipment_id,
                tracking_number=self.tracking_number,
            )
        elif compensation is Compensation.RELEASE_INVENTORY:
            assert self.reservation_id is not None
            event = InventoryReleased(
                occurred_at=at, saga_id=self.id, reservation_id=self.reservation_id
            )
        else:
            assert self.prescription_id is not None
            event = PrescriptionCancelled(
                occurred_at=at, saga_id=self.id, prescription_id=self.prescription_id
            )
        self._record(event)

    def record_compensation_attempt_failed(
        self, compensation: Compensation, error: str, *, retry_in_seconds: float, at: datetime
    ) -> None:
        self.check_compensating(compensation)
        self._record(
            CompensationAttemptFailed(
                occurred_at=at,
                saga_id=self.id,
                compensation=compensation,
                attempt=self.compensation_attempts(compensation) + 1,
                error=error,
                retry_in_seconds=retry_in_seconds,
            )
        )

    def park(self, compensation: Compensation, error: str, *, at: datetime) -> None:
        """Compensation keeps failing: stop and wait for an operator."""
        self.check_compensating(compensation)
        self._record(
            SagaCompensationFailed(
                occurred_at=at, saga_id=self.id, compensation=compensation, error=error
            )
        )

    def retry_compensation(self, *, at: datetime) -> None:
        if self.status is not SagaStatus.COMPENSATION_FAILED or not self.compensation_stack:
            raise IllegalTransition(f"saga {self.id} is not parked (status {self.status})")
        self._record(
            SagaCompensationRetried(
                occurred_at=at, saga_id=self.id, compensation=self.compensation_stack[-1]
            )
        )

    # --- state ----------------------------------------------------------------

    def _apply(self, event: DomainEvent) -> None:
        """The event's own data (its `_when_` method, if any), then what ORDER_SAGA says
        it records: a step's success or failure for good, or a compensation."""
        name = type(event).__name__
        own = getattr(self, f"_when_{name}", None)
        if own is not None:
            own(event)
        if (step := ORDER_SAGA.succeeded_by(name)) is not None:
            if not step.pivot:
                self._step_succeeded(Step(step.name), event.occurred_at)
        elif (step := ORDER_SAGA.failed_by(name)) is not None:
            self._step_failed(Step(step.name), event)
        elif (step := ORDER_SAGA.compensated_by(name)) is not None:
            assert step.compensation is not None
            self._compensated(Compensation(step.compensation.name), event.occurred_at)
        elif own is None:
            raise TypeError(f"{type(self).__name__} cannot apply {name}")

    def _step_succeeded(self, step: Step, at: datetime) -> None:
        state = self.steps[step]
        state.status = StepStatus.SUCCEEDED
        state.attempts += 1
        state.finished_at = at
        self.compensation_stack.append(COMPENSATION_OF[step])
        nxt = self.next_step
        if nxt is not None:
            self.steps[nxt].started_at = at

    def _when_OrderFulfillmentSagaStarted(self, event: OrderFulfillmentSagaStarted) -> None:
        self.status = SagaStatus.RUNNING
        self.order_id = event.order_id
        self.definition_version = event.definition_version
        self.customer_id = event.customer_id
        self.items = event.items
        self.prescription = event.prescription
        self.shipping_address = event.shipping_address
        self.started_at = event.occurred_at
        self.deadline_at = event.deadline_at
        self.steps[DEFINITION[0][0]].started_at = event.occurred_at

    # A step's success, failure and compensation are kept by `_apply` (ORDER_SAGA);
    # these keep what the events carry.

    def _when_PrescriptionCreated(self, event: PrescriptionCreated) -> None:
        self.prescription_id = event.prescription_id

    def _when_InventoryReserved(self, event: InventoryReserved) -> None:
        self.reservation_id = event.reservation_id
        self.reserved_lines = event.lines

    def _when_ShipmentInitiated(self, event: ShipmentInitiated) -> None:
        self.shipment_id = event.shipment_id
        self.carrier = event.carrier
        self.tracking_number = event.tracking_number

    def _when_SagaStepAttemptFailed(self, event: SagaStepAttemptFailed) -> None:
        state = self.steps[event.step]
        state.attempts += 1
        state.errors.append(event.error)

    def _step_failed(self, step: Step, event: DomainEvent) -> None:
        state = self.steps[step]
        state.status = StepStatus.FAILED
        state.attempts += 1
        state.errors.append(getattr(event, "error", ""))
        state.finished_at = event.occurred_at
        self.failed_step = step
        self.failure_reason = getattr(event, "reason", None)

    def _when_OrderFulfillmentSagaCompleted(self, event: OrderFulfillmentSagaCompleted) -> None:
        self.status = SagaStatus.COMPLETED
        self.finished_at = event.occurred_at

    def _when_SagaCompensationStarted(self, event: SagaCompensationStarted) -> None:
        self.failed_step = event.failed_step
        self.failure_reason = event.reason
        self._after_compensation_progress(event.occurred_at)

    def _after_compensation_progress(self, at: datetime) -> None:
        if self.compensation_stack:
            self.status = SagaStatus.COMPENSATING
        else:
            self.status = SagaStatus.COMPENSATED
            self.finished_at = at

    def _compensated(self, compensation: Compensation, at: datetime) -> None:
        popped = self.compensation_stack.pop()
        assert popped is compensation, (popped, compensation)
        state = self.steps[STEP_OF[compensation]]
        state.status = StepStatus.COMPENSATED
        state.compensation_attempts += 1
        state.compensated_at = at
        self._after_compensation_progress(at)

    def _when_CompensationAttemptFailed(self, event: CompensationAttemptFailed) -> None:
        state = self.steps[STEP_OF[event.compensation]]
        state.compensation_attempts += 1
        state.errors.append(event.error)

    def _when_SagaCompensationFailed(self, event: SagaCompensationFailed) -> None:
        self.status = SagaStatus.COMPENSATION_FAILED
        self.parked_error = event.error
        state = self.steps[STEP_OF[event.compensation]]
        state.status = StepStatus.COMPENSATION_FAILED
        state.compensation_attempts += 1
        state.errors.append(event.error)

    def _when_SagaCompensationRetried(self, event: SagaCompensationRetried) -> None:
        self.status = SagaStatus.COMPENSATING
        self.parked_error = None
        state = self.steps[STEP_OF[event.compensation]]
        state.status = StepStatus.SUCCEEDED
        state.compensation_attempts = 0
