"""The HTTP carrier (FULFILLMENT_CARRIER=http, docs/carriers.md) against a carrier API
running as a process of its own (tests/carrier_server.py):

* the adapter itself: a booking, its replay by idempotency key, a cancellation, and
  every class of error the carrier can answer with;
* sagas run by a real `fulfillment worker` on every backend: a booking retried after a
  429 no sooner than its `Retry-After`, an unsupported destination, a refusal; the
  address reaches the carrier and no log line;
* a worker killed with `kill -9` once the carrier has recorded a booking but before it
  answered: after a restart the carrier still holds one booking and the order completes;
* the webhook path through a real `fulfillment serve`: a carrier that confirms pickups
  later sends signed tracking updates, the saga waits for the pickup, and the order is
  delivered; a cancellation while it waits voids the carrier's label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from carrier_server import CarrierServer
from saga_testkit import order_of, place_order, saga_of

from fulfillment.adapters import tables as t
from fulfillment.adapters.http_carrier import (
    CarrierCredentialsRefused,
    HttpCarrier,
    UnexpectedCarrierAnswer,
)
from fulfillment.bootstrap import App
from fulfillment.domain.errors import CarrierRejected, TransientFailure, UnsupportedDestination
from fulfillment.domain.status import OrderStatus
from fulfillment.domain.values import OrderLine, ShippingAddress
from fulfillment.service_layer import order_saga

from .processes import Ledger, WorkerProcess, wait_until, worker_processes
from .server import Server, free_port, poll, start_server

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "whsec-http-carrier-0123456789"
ADDRESS = ShippingAddress("Grace Hopper", "7 Compiler Row", "Arlington", "22201", "US")
LINES = (OrderLine("AMOX-500", 2),)
#: What the saga tests' orders hold of patient data (saga_testkit.place_order's address).
PATIENT_DATA = ("Grace Hopper", "1 Analytical Way", "N1 1AA")
ENDED = (OrderStatus.FULFILLED, OrderStatus.CANCELLED)


@pytest.fixture
def carrier_server(tmp_path: Path) -> Iterator[CarrierServer]:
    with CarrierServer.start(tmp_path, countries="US,GB") as server:
        yield server


def adapter(server: CarrierServer, **kwargs: Any) -> HttpCarrier:
    return HttpCarrier(server.url, kwargs.pop("token", server.token), **kwargs)


def http_carrier_env(server: CarrierServer) -> dict[str, str]:
    return {
        "carrier": "http",
        "carrier_url": server.url,
        "carrier_token": server.token,
        "carrier_webhook_secret": WEBHOOK_SECRET,
    }


# --- the adapter against the carrier process ---------------------------------------------


def test_a_booking_is_made_once_and_a_replay_gets_the_first_booking(
    carrier_server: CarrierServer,
) -> None:
    carrier = adapter(carrier_server)
    try:
        first = carrier.book("s-1:shipment", ADDRESS, LINES)
        again = carrier.book("s-1:shipment", ADDRESS, LINES)
        other = carrier.book("s-2:shipment", ADDRESS, LINES)
    finally:
        carrier.close()

    assert first == again and first.carrier == "test-carrier"
    assert first.picked_up_at_booking is True, "this carrier picks up as it books"
    assert other.tracking_number != first.tracking_number
    stats = carrier_server.stats()
    assert (stats["bookings"], stats["booking_requests"]) == (2, 3)
    assert stats["shipments"][0]["address"] == ADDRESS.to_dict(), "the carrier has the address"
    assert stats["shipments"][0]["lines"] == [{"sku": "AMOX-500", "quantity": 2}]


def test_a_cancellation_voids_the_shipment_once(carrier_server: CarrierServer) -> None:
    carrier = adapter(carrier_server)
    try:
        booking = carrier.book("s-1:shipment", ADDRESS, LINES)
        carrier.cancel("s-1:shipment-cancel", booking.tracking_number)
        carrier.cancel("s-1:shipment-cancel", booking.tracking_number)
        with pytest.raises(CarrierRejected, match="unknown_shipment"):
            carrier.cancel("s-9:shipment-cancel", "TC-NOT-BOOKED")
    finally:
        carrier.close()

    stats = carrier_server.stats()
    assert (stats["cancels"], stats["cancel_requests"]) == (1, 3)
    assert stats["shipments"][0]["cancelled"] is True


def test_a_booking_that_timed_out_is_found_again_by_its_key(
    carrier_server: CarrierServer,
) -> None:
    carrier = adapter(carrier_server, read_timeout=0.5)
    carrier_server.control(mode="timeout", seconds=3, times=1)
    try:
        with pytest.raises(TransientFailure, match="did not answer POST /shipments in time"):
            carrier.book("s-1:shipment", ADDRESS, LINES)
        assert carrier_server.stats()["bookings"] == 1, "the carrier did book it"
        booking = carrier.book("s-1:shipment", ADDRESS, LINES)  # the retry
    finally:
        carrier.close()

    stats = carrier_server.stats()
    assert (stats["bookings"], stats["booking_requests"]) == (1, 2)
    assert stats["keys"]["s-1:shipment"] == booking.tracking_number


def test_each_kind_of_carrier_answer_maps_to_its_error(carrier_server: CarrierServer) -> None:
    carrier = adapter(carrier_server)
    try:
        carrier_server.control(mode="500")
        with pytest.raises(TransientFailure, match="HTTP 500") as server_error:
            carrier.book("k-500:shipment", ADDRESS, LINES)
        assert server_error.value.retry_after_seconds is None

        carrier_server.control(mode="429", retry_after=7)
        with pytest.raises(TransientFailure, match="HTTP 429") as limited:
            carrier.book("k-429:shipment", ADDRESS, LINES)
        assert limited.value.retry_after_seconds == 7.0

        carrier_server.control(mode="reject", reason="parcel_too_heavy")
        with pytest.raises(CarrierRejected, match="parcel_too_heavy") as refused:
            carrier.book("k-422:shipment", ADDRESS, LINES)
        assert refused.value.reason == "carrier_rejected"
        assert "Secret Lane" not in str(refused.value), "the carrier's message is never kept"

        abroad = ShippingAddress("Grace Hopper", "7 Compiler Row", "Lima", "15001", "PE")
        with pytest.raises(UnsupportedDestination, match="PE") as unsupported:
            carrier.book("k-pe:shipment", abroad, LINES)
        assert unsupported.value.reason == "unsupported_destination"

        carrier_server.control(mode="garbage")
        with pytest.raises(UnexpectedCarrierAnswer) as garbage:
            carrier.book("k-garbage:shipment", ADDRESS, LINES)
        assert isinstance(garbage.value, TransientFailure)
        assert "Secret Lane" not in str(garbage.value)

        # Every fault was used up: a key that failed transiently now books.
        assert carrier.book("k-500:shipment", ADDRESS, LINES).tracking_number
    finally:
        carrier.close()

    wrong = adapter(carrier_server, token="not-the-token")
    try:
        with pytest.raises(CarrierCredentialsRefused):
            wrong.book("k-401:shipment", ADDRESS, LINES)
    finally:
        wrong.close()
    nobody = HttpCarrier(f"http://127.0.0.1:{free_port()}", "t", connect_timeout=1)
    try:
        with pytest.raises(TransientFailure, match="could not be reached"):
            nobody.book("k-down:shipment", ADDRESS, LINES)
    finally:
        nobody.close()
    assert carrier_server.stats()["bookings"] == 1


# --- sagas through worker processes, on every backend ------------------------------------


@pytest.fixture
def workers(tmp_path: Path, database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_processes(tmp_path, database_url) as start:
        yield start


def fate(app: App, order_id: str) -> tuple[OrderStatus, str | None]:
    order = order_of(app, order_id)
    return order.status, order.reason


def ended(app: App, *order_ids: str) -> Callable[[], bool]:
    return lambda: all(order_of(app, o).status in ENDED for o in order_ids)


def assert_no_secrets_or_patient_data(output: str, server: CarrierServer) -> None:
    assert server.token not in output
    for value in PATIENT_DATA:
        assert value not in output, f"{value!r} in the log"


def test_sagas_book_through_the_http_carrier_from_a_worker_process(
    app: App, carrier_server: CarrierServer, workers: Callable[..., WorkerProcess]
) -> None:
    carrier_server.control(mode="429", retry_after=1, key="o-ok:shipment")
    carrier_server.control(mode="reject", reason="parcel_too_heavy", key="o-heavy:shipment")
    place_order(app, "o-ok", sku="AMOX-500", qty=2, stock=10, patient_name="Grace Hopper")
    place_order(app, "o-abroad", sku="AMOX-500", country="BR", patient_name="Grace Hopper")
    place_order(app, "o-heavy", sku="AMOX-500", patient_name="Grace Hopper")
    worker = workers(4, retry_backoff_seconds=0.01, **http_carrier_env(carrier_server))

    wait_until(
        ended(app, "o-ok", "o-abroad", "o-heavy"), 60, "every saga ends", context=worker.output
    )

    assert fate(app, "o-ok") == (OrderStatus.FULFILLED, None)
    assert fate(app, "o-abroad") == (OrderStatus.CANCELLED, "unsupported_destination")
    assert fate(app, "o-heavy") == (OrderStatus.CANCELLED, "carrier_rejected")
    saga = saga_of(app, "o-ok")
    with app.uow() as uow:
        events = list(uow.events.read_stream("saga-o-ok"))
    (attempt,) = [e for e in events if e.type == "SagaStepAttemptFailed"]
    assert attempt.data["retry_in_seconds"] >= 1.0, "the 429's Retry-After, not 0.01 s"
    stats = carrier_server.stats()
    assert (stats["bookings"], stats["booking_requests"]) == (1, 4)  # ok twice, heavy, abroad
    (shipment,) = stats["shipments"]
    assert shipment["address"]["name"] == "Grace Hopper", "the carrier got the address, opened"
    assert stats["keys"]["o-ok:shipment"] == order_saga.tracking_number(saga)
    worker.terminate()
    assert worker.wait(30) == 0, worker.output()
    assert_no_secrets_or_patient_data(worker.output(), carrier_server)


def test_a_worker_killed_after_the_carrier_booked_does_not_book_twice(
    app: App,
    database_url: str,
    carrier_server: CarrierServer,
    workers: Callable[..., WorkerProcess],
) -> None:
    # The carrier records the booking, then holds its answer back: the worker dies waiting.
    carrier_server.control(mode="timeout", seconds=60, key="o-crash:shipment")
    place_order(app, "o-crash", sku="AMOX-500", stock=10)
    settings = {"job_lease_seconds": 2, "retry_backoff_seconds": 0.01}
    doomed = workers(2, **settings, **http_carrier_env(carrier_server))
    wait_until(lambda: carrier_server.stats()["bookings"] == 1, 60, "booked", context=doomed.output)
    doomed.kill()
    assert fate(app, "o-crash")[0] is OrderStatus.PENDING, "nothing recorded of the booking"

    survivor = workers(2, **settings, **http_carrier_env(carrier_server))
    wait_until(ended(app, "o-crash"), 60, "the order completes", context=survivor.output)

    assert fate(app, "o-crash") == (OrderStatus.FULFILLED, None)
    stats = carrier_server.stats()
    assert (stats["bookings"], stats["booking_requests"]) == (1, 2), "replayed, not rebooked"
    ledger = Ledger(database_url)
    try:
        assert ledger.orders_with_more_than_one(t.shipments) == []
        assert ledger.records(t.shipments) == {"o-crash": "initiated"}
    finally:
        ledger.close()
    assert stats["keys"]["o-crash:shipment"] == order_saga.tracking_number(saga_of(app, "o-crash"))


# --- the webhook path, through `fulfillment serve` ----------------------------------------


@pytest.fixture
def pickup_later_carrier(tmp_path: Path) -> Iterator[CarrierServer]:
    with CarrierServer.start(tmp_path, countries="US,GB", pickup_later=True) as server:
        yield server


@pytest.fixture
def serve(
    database_url: str, pickup_later_carrier: CarrierServer, tmp_path: Path
) -> Iterator[Server]:
    env = {f"FULFILLMENT_{k.upper()}": v for k, v in http_carrier_env(pickup_later_carrier).items()}
    with start_server(database_url, env=env, log_dir=tmp_path) as server:
        pickup_later_carrier.control(
            webhook_url=f"{server.url}/webhooks/carrier", webhook_secret=WEBHOOK_SECRET
        )
        yield server


def placed_and_waiting(app: App, serve: Server, order_id: str) -> tuple[str, str]:
    """Place an order (its saga run by the server's worker) and wait until it is booked and
    waits for the pickup; its URL and tracking number."""
    place_order(app, order_id, sku="IBU-200", stock=5, patient_name="Grace Hopper")
    url = f"/orders/{order_id}"
    client = serve.client()
    order = poll(
        lambda: client.get(url).json(),
        lambda o: any(
            s["name"] == "await_pickup" and s["status"] == "waiting" for s in o["saga"]["steps"]
        ),
        30,
    )
    assert order["shipment"] is not None, serve.output()
    return url, order["shipment"]["tracking_number"]


def test_the_carriers_signed_updates_move_the_order_to_delivered(
    app: App, serve: Server, pickup_later_carrier: CarrierServer
) -> None:
    client = serve.client()
    url, number = placed_and_waiting(app, serve, "o-tracked")
    time.sleep(0.5)
    assert client.get(url).json()["status"] == "pending", "it waits for the carrier's pickup"
    assert pickup_later_carrier.stats()["keys"] == {"o-tracked:shipment": number}

    assert pickup_later_carrier.dispatch(number, "in_transit") == [200]
    fulfilled = poll(lambda: client.get(url).json(), lambda o: o["status"] == "fulfilled", 30)
    assert fulfilled["status"] == "fulfilled", serve.output()
    assert pickup_later_carrier.dispatch(number, "out_for_delivery", "delivered") == [200, 200]
    done = poll(lambda: client.get(url).json(), lambda o: o["status"] == "delivered", 30)

    assert done["status"] == "delivered", serve.output()
    assert done["shipment"] == {"tracking_number": number, "status": "delivered"}
    assert pickup_later_carrier.stats()["bookings"] == 1
    assert_no_secrets_or_patient_data(serve.output(), pickup_later_carrier)


def test_an_order_cancelled_while_it_waits_for_pickup_voids_the_carriers_label(
    app: App, serve: Server, pickup_later_carrier: CarrierServer
) -> None:
    client = serve.client()
    url, number = placed_and_waiting(app, serve, "o-cancelled")

    answer = client.post(f"{url}/cancel", json={"reason": "customer_request"})

    assert answer.status_code == 202, answer.text
    done = poll(lambda: client.get(url).json(), lambda o: o["status"] == "cancelled", 30)
    assert (done["reason"], done["shipment"]["status"]) == ("customer_request", "cancelled")
    stats = pickup_later_carrier.stats()
    assert stats["cancels"] == 1 and stats["shipments"][0]["tracking_number"] == number
    assert client.get("/inventory/IBU-200").json()["reserved"] == 0
