"""The order saga, declared once (`fulfillment.domain.saga_definition`).

    create prescription   ->  PrescriptionCreated  | PrescriptionCreationFailed
        undone by cancel prescription              -> PrescriptionCancelled
    reserve inventory     ->  InventoryReserved    | InventoryReservationFailed
        undone by release inventory                -> InventoryReleased
    initiate shipment     ->  ShipmentInitiated    | ShipmentInitiationFailed
        undone by cancel shipment                  -> ShipmentCancelled
    complete (the pivot)  ->  OrderFulfillmentSagaCompleted: stock consumed, prescription
                              dispensed, order fulfilled; retried, never undone

The step and compensation names are the job kinds the queue stores and the `step` labels
of the metrics: part of the public contract (docs/api.md).
"""

from __future__ import annotations

from fulfillment.domain import events as ev
from fulfillment.domain.saga_definition import CompensationSpec, SagaDefinition, StepSpec
from fulfillment.domain.status import Compensation, Step

#: The pivot's job kind: the saga's last step, which only goes forward.
COMPLETE = "complete"

ORDER_SAGA = SagaDefinition(
    name="order_fulfillment",
    version=1,
    steps=(
        StepSpec(
            Step.CREATE_PRESCRIPTION,
            succeeded=ev.PrescriptionCreated,
            failed=ev.PrescriptionCreationFailed,
            compensation=CompensationSpec(
                Compensation.CANCEL_PRESCRIPTION, recorded_by=ev.PrescriptionCancelled
            ),
            label="rx",
        ),
        StepSpec(
            Step.RESERVE_INVENTORY,
            succeeded=ev.InventoryReserved,
            failed=ev.InventoryReservationFailed,
            compensation=CompensationSpec(
                Compensation.RELEASE_INVENTORY, recorded_by=ev.InventoryReleased
            ),
            label="stock",
        ),
        StepSpec(
            Step.INITIATE_SHIPMENT,
            succeeded=ev.ShipmentInitiated,
            failed=ev.ShipmentInitiationFailed,
            compensation=CompensationSpec(
                Compensation.CANCEL_SHIPMENT, recorded_by=ev.ShipmentCancelled
            ),
            label="ship",
        ),
        StepSpec(COMPLETE, succeeded=ev.OrderFulfillmentSagaCompleted, pivot=True, label="done"),
    ),
)
