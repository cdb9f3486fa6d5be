"""What the saga does with what a carrier tells it, beyond success (docs/carriers.md):

* a transient failure may say how long to wait (`TransientFailure.retry_after_seconds`,
  an HTTP `Retry-After`): the retry of the step, or of its compensation, waits at least
  that long, within the step's deadline, and still counts as an attempt;
* a booking may say whether it is also the pickup (`Booking.picked_up_at_booking`), over
  the carrier's own `confirms_pickup_at_booking`;
* a refusal (`carrier_rejected`) cancels the order with that reason.
"""

from __future__ import annotations

import pytest

from fulfillment.domain.errors import CarrierRejected, TransientFailure
from fulfillment.domain.status import OrderStatus
from fulfillment.domain.values import OrderLine, ShippingAddress
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.order_saga import Compensation, Step
from fulfillment.service_layer.ports import Booking
from fulfillment.service_layer.retry import RetryPolicy
from fulfillment.service_layer.saga_engine import Timeouts

from .builders import address, lines, prescription
from .fakes import FakeApp, FakeCarrier, make_fake_app

DONE, RETRY = JobOutcome.DONE, JobOutcome.RETRY_SCHEDULED
ASPIRIN = "ASPIRIN-100"


class RateLimitedCarrier(FakeCarrier):
    """Its next `limited_for` calls answer "too many requests, retry after N s"."""

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.limited_for = 0
        self.said_picked_up: bool | None = None
        self.refuse = False

    def _limit(self) -> None:
        if self.limited_for > 0:
            self.limited_for -= 1
            raise TransientFailure("HTTP 429", retry_after_seconds=self.retry_after)

    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        self._limit()
        if self.refuse:
            raise CarrierRejected("the carrier refused POST /shipments: parcel_too_heavy")
        booking = super().book(idempotency_key, address, lines)
        return Booking(booking.carrier, booking.tracking_number, self.said_picked_up)

    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        self._limit()
        super().cancel(idempotency_key, tracking_number)


def app_with(carrier: RateLimitedCarrier, step_seconds: float = 900.0) -> FakeApp:
    app = make_fake_app(
        carrier=carrier,
        retry=RetryPolicy(max_attempts=3, base_seconds=1.0),
        timeouts=Timeouts(step_seconds=step_seconds),
    )
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    app.bus.handle(c.CreateOrder("o-1", "c-1", lines((ASPIRIN, 2)), prescription(), address("NL")))
    assert [app.run_next() for _ in range(2)] == [
        ("create_prescription", DONE),
        ("reserve_inventory", DONE),
    ]
    return app


def retry_delays(app: FakeApp, kind: str) -> list[float]:
    """The delays of the retries of `kind` (the jobs enqueued by a failed attempt)."""
    failed = ("SagaStepAttemptFailed", "CompensationAttemptFailed")
    return [
        spec.delay_seconds
        for commit in app.db.commits
        if any(t in failed for t in commit.appended.get("saga-o-1", []))
        for spec in commit.enqueued
        if spec.kind == kind
    ]


def test_the_retry_policy_takes_a_lower_bound_above_its_cap() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1.0, cap_seconds=2.0)
    assert all(0.5 <= policy.delay(1) <= 1.0 for _ in range(20))
    assert policy.delay(1, at_least=30.0) == 30.0
    assert policy.delay(5, at_least=0.1) <= 2.0, "a bound under the backoff changes nothing"


def test_a_step_retry_waits_at_least_the_carriers_retry_after() -> None:
    carrier = RateLimitedCarrier(retry_after=45.0)
    app = app_with(carrier)
    carrier.limited_for = 1
    now = app.db.now()

    assert app.run_next() == (Step.INITIATE_SHIPMENT, RETRY)

    assert retry_delays(app, Step.INITIATE_SHIPMENT) == [45.0], "not the 0.5..1 s backoff"
    job = app.db.job_of("o-1")
    assert job is not None and job.run_at == now + 45.0
    assert app.queue.claim(1, "w", 30) == [], "not before the carrier said"
    assert app.run_until_idle() == [(Step.INITIATE_SHIPMENT, DONE), (Step.COMPLETE, DONE)]
    assert app.db.saga("o-1").attempts(Step.INITIATE_SHIPMENT) == 2, "the 429 was an attempt"
    assert app.db.order("o-1").status is OrderStatus.FULFILLED


def test_the_steps_deadline_still_bounds_a_long_retry_after() -> None:
    carrier = RateLimitedCarrier(retry_after=3600.0)
    app = app_with(carrier, step_seconds=60.0)
    carrier.limited_for = 1

    assert app.run_next() == (Step.INITIATE_SHIPMENT, RETRY)

    (delay,) = retry_delays(app, Step.INITIATE_SHIPMENT)
    assert delay <= 60.0, "the retry runs at the deadline, and fails there"


def test_retries_after_a_retry_after_are_still_bounded_by_the_attempts() -> None:
    carrier = RateLimitedCarrier(retry_after=5.0)
    app = app_with(carrier)
    carrier.limited_for = 99

    app.run_until_idle()

    assert retry_delays(app, Step.INITIATE_SHIPMENT) == [5.0, 5.0]
    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "retries_exhausted")


def test_a_compensation_retry_waits_at_least_the_retry_after_too() -> None:
    carrier = RateLimitedCarrier(retry_after=20.0)
    carrier.said_picked_up = False  # the saga waits for the pickup: still cancellable
    app = app_with(carrier)
    assert app.run_next() == (Step.INITIATE_SHIPMENT, DONE)
    assert app.db.saga("o-1").waiting is not None
    app.bus.handle(c.CancelSaga("o-1", "customer_request", None, "shop"))
    carrier.limited_for = 1

    assert app.run_next() == (Compensation.CANCEL_SHIPMENT, RETRY)

    assert retry_delays(app, Compensation.CANCEL_SHIPMENT)[-1] == 20.0
    app.run_until_idle()
    assert app.db.order("o-1").status is OrderStatus.CANCELLED
    assert len(carrier.cancelled) == 1


@pytest.mark.parametrize(
    ("carrier_confirms", "booking_says", "waits"),
    [
        (True, None, False),  # the carrier's own attribute
        (False, None, True),
        (True, False, True),  # the booking's word wins
        (False, True, False),
    ],
)
def test_a_booking_may_say_whether_the_saga_waits_for_the_pickup(
    carrier_confirms: bool, booking_says: bool | None, waits: bool
) -> None:
    carrier = RateLimitedCarrier(retry_after=1.0)
    carrier.confirms_pickup_at_booking = carrier_confirms
    carrier.said_picked_up = booking_says
    app = app_with(carrier)

    assert app.run_next() == (Step.INITIATE_SHIPMENT, DONE)
    if not waits:
        assert app.run_next() == (Step.COMPLETE, DONE)

    saga = app.db.saga("o-1")
    waiting = saga.waiting.name if saga.waiting is not None else None
    assert waiting == (Step.AWAIT_PICKUP if waits else None)
    status = app.db.order("o-1").status
    assert status is (OrderStatus.PENDING if waits else OrderStatus.FULFILLED)


def test_a_carrier_refusal_cancels_the_order_as_carrier_rejected() -> None:
    carrier = RateLimitedCarrier(retry_after=1.0)
    carrier.refuse = True
    app = app_with(carrier)

    assert app.run_next() == (Step.INITIATE_SHIPMENT, JobOutcome.STEP_FAILED)
    app.run_until_idle()

    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "carrier_rejected")
    assert carrier.bookings == {}
