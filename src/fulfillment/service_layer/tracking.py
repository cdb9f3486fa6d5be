"""The carrier's tracking updates (docs/api.md, carrier webhooks).

An update is recorded once (by the carrier's event id, kept with the idempotency keys)
in one transaction. The first `in_transit` of a saga that waits at `await_pickup` is
that wait's `picked_up` signal: the pivot follows. Every other update is recorded on
the order's stream, where it moves the parcel's status forward only.
"""

from __future__ import annotations

import hashlib

from fulfillment.domain.status import TrackingStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.order_saga import Signal, Step
from fulfillment.service_layer.ports import IdempotencyRecord
from fulfillment.service_layer.saga_engine import EngineDeps, NotFound, deliver_signal
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

ACCEPTED = {"accepted": True}


def carrier_event_key(carrier_event_id: str) -> str:
    """Where a carrier's event id is kept (hashed: fits the keys' column, meets no
    client's key)."""
    return "carrier:" + hashlib.sha256(carrier_event_id.encode()).hexdigest()


def record_tracking_update(
    cmd: c.RecordTrackingUpdate, uow: AbstractUnitOfWork, deps: EngineDeps
) -> bool:
    """True when recorded; False for an event id recorded before (nothing changes).
    NotFound (404) for a tracking number no shipment has."""
    status = TrackingStatus(cmd.status)
    key = carrier_event_key(cmd.carrier_event_id)
    with uow:
        if uow.idempotency.get(key) is not None:
            return False
        order_id = uow.shipments.order_of(cmd.tracking_number)
        if order_id is None:
            raise NotFound(f"no shipment has the tracking number {cmd.tracking_number!r}")
        saga = uow.sagas.get(order_id)
        waiting = saga.waiting if saga is not None else None
        if (
            saga is not None
            and waiting is not None
            and waiting.name == Step.AWAIT_PICKUP
            and status is TrackingStatus.IN_TRANSIT
        ):
            payload = {
                "event_id": cmd.carrier_event_id,
                "occurred_at": cmd.reported_at.isoformat(),
                "location": cmd.location,
            }
            deliver_signal(saga, uow, deps, Signal.PICKED_UP, payload, sender=cmd.sender)
        else:
            order = uow.orders.get(order_id)
            if order is None:
                raise NotFound(f"order {order_id} not found")
            if not order.record_tracking(
                status,
                tracking_number=cmd.tracking_number,
                carrier_event_id=cmd.carrier_event_id,
                reported_at=cmd.reported_at,
                location=cmd.location,
                at=deps.clock.now(),
            ):
                return False
        uow.sender = cmd.sender
        digest = key.removeprefix("carrier:")
        uow.idempotency.add(IdempotencyRecord(key, digest, order_id, ACCEPTED))
        uow.commit()
    return True
