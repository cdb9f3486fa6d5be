"""The pharmacy lifecycle through real `fulfillment worker` processes, on every backend.

Five orders of one run, with a pharmacist's verification for every order and a carrier
that picks parcels up only when it says so (its `in_transit`):

* a cancellation races the carrier booking of one order (the carrier takes a second):
  the booking is recorded, then voided, the stock released;
* the worker is killed with `kill -9` while two sagas wait for their pickup and two for
  a pharmacist. While no worker runs, a pharmacist rejects one, a customer cancels one
  waiting for verification and one waiting for pickup, and the carrier reports the
  pickup of the last. A new worker takes over and every saga ends as it must, with no
  stock left reserved and no job left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from saga_testkit import place_order, wait_until

from fulfillment.adapters import tables as t
from fulfillment.bootstrap import App
from fulfillment.domain.saga import CancellationAccepted
from fulfillment.domain.status import OrderStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import order_saga

from .processes import WorkerProcess, worker_processes

pytestmark = pytest.mark.slow

SKU = "NAPROXEN-250"
ORDERS = ("o-approve", "o-reject", "o-cancel-rx", "o-cancel-pickup", "o-race")


@pytest.fixture
def workers(tmp_path: Path, database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_processes(tmp_path, database_url) as start:
        yield start


def start_worker(start: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start(
        4,
        job_lease_seconds=2,
        retry_backoff_seconds=0.01,
        verification_required_for="all",
        carrier_latency_ms=1000,  # a booking takes a second: a cancellation can race it
        carrier_pickup_delay_ms=3_600_000,  # the carrier's own pickup: the test says when
        carrier_webhook_secret="whsec-e2e-0123456789abcdef",
    )


def types(app: App, order_id: str) -> list[str]:
    with app.uow() as uow:
        return [e.type for e in uow.events.read_stream(f"saga-{order_id}")]


def waits_at(app: App, order_id: str, wait: str) -> bool:
    with app.uow() as uow:
        saga = uow.sagas.get(order_id)
    return saga is not None and saga.waiting is not None and saga.waiting.name == wait


def ended(app: App, *order_ids: str) -> Callable[[], bool]:
    def check() -> bool:
        with app.uow() as uow:
            sagas = [uow.sagas.get(o) for o in order_ids]
        return all(s is not None and s.status is not None and s.status.is_terminal for s in sagas)

    return check


def decide(app: App, order_id: str, decision: str) -> None:
    payload = {"pharmacist_id": "ph-1"}
    app.bus.handle(
        c.SignalSaga(order_id, decision, payload, "pharm", role="pharmacist"), sender="pharm"
    )


def cancel(app: App, order_id: str) -> CancellationAccepted:
    accepted: CancellationAccepted = app.bus.handle(
        c.CancelSaga(order_id, "customer_request", None, "shop")
    )
    return accepted


def picked_up(app: App, order_id: str) -> None:
    with app.uow() as uow:
        saga = uow.sagas.get(order_id)
    assert saga is not None
    number = order_saga.tracking_number(saga)
    assert number is not None
    update = c.RecordTrackingUpdate(f"pickup-{order_id}", number, "in_transit", datetime.now(UTC))
    assert app.bus.handle(update) is True


def test_waits_cancellations_and_pickups_survive_a_worker_killed_mid_flight(
    app: App, workers: Callable[..., WorkerProcess]
) -> None:
    for order_id in ORDERS:
        place_order(app, order_id, sku=SKU, qty=2, stock=100)
    first = start_worker(workers)
    wait_until(
        lambda: all(waits_at(app, o, "verify_prescription") for o in ORDERS),
        60,
        f"every order waits for a pharmacist\n{first.output()}",
    )
    for order_id in ("o-approve", "o-cancel-pickup", "o-race"):
        decide(app, order_id, "approve")

    # The race: the shipment step of o-race books the carrier (a second) when the
    # cancellation arrives; it takes effect after the step.
    wait_until(lambda: "InventoryReserved" in types(app, "o-race"), 60, first.output())
    time.sleep(0.3)
    assert cancel(app, "o-race") is CancellationAccepted.AFTER_STEP
    wait_until(
        lambda: (
            waits_at(app, "o-approve", "await_pickup")
            and waits_at(app, "o-cancel-pickup", "await_pickup")
            and ended(app, "o-race")()
        ),
        60,
        f"two orders wait for their pickup, the raced one ended\n{first.output()}",
    )

    first.kill()  # kill -9 while four sagas wait (two timers each in the queue)
    decide(app, "o-reject", "reject")
    assert cancel(app, "o-cancel-rx") is CancellationAccepted.NOW
    assert cancel(app, "o-cancel-pickup") is CancellationAccepted.NOW
    picked_up(app, "o-approve")
    second = start_worker(workers)
    wait_until(ended(app, *ORDERS), 60, f"every saga ends\n{second.output()}")

    with app.uow() as uow:
        orders = {o: uow.orders.get(o) for o in ORDERS}
    outcome = {o: (x.status, x.reason) for o, x in orders.items() if x is not None}
    assert outcome == {
        "o-approve": (OrderStatus.FULFILLED, None),
        "o-reject": (OrderStatus.CANCELLED, "verification_rejected"),
        "o-cancel-rx": (OrderStatus.CANCELLED, "customer_request"),
        "o-cancel-pickup": (OrderStatus.CANCELLED, "customer_request"),
        "o-race": (OrderStatus.CANCELLED, "customer_request"),
    }
    undo = ["ShipmentCancelled", "InventoryReleased", "PrescriptionCancelled"]
    race = types(app, "o-race")
    assert race[race.index("ShipmentInitiated") :] == [
        "ShipmentInitiated",
        "SagaCompensationStarted",
        *undo,
    ], race
    assert types(app, "o-cancel-pickup")[-5:] == [
        "OrderCancellationRequested",
        "SagaCompensationStarted",
        *undo,
    ]
    assert types(app, "o-approve")[-3:] == [
        "SagaSignalReceived",
        "ShipmentPickedUp",
        "OrderFulfillmentSagaCompleted",
    ]
    with app.engine.connect() as conn:
        stock = conn.execute(t.inventory.select().where(t.inventory.c.sku == SKU)).one()._mapping
        jobs = conn.execute(t.jobs.select()).all()
        shipments = dict(
            conn.execute(
                t.shipments.select().with_only_columns(t.shipments.c.order_id, t.shipments.c.status)
            ).all()
        )
    assert (stock["on_hand"], stock["reserved"]) == (98, 0)
    assert jobs == []
    assert shipments == {
        "o-approve": "initiated",
        "o-cancel-pickup": "cancelled",
        "o-race": "cancelled",
    }
    assert second.alive()
