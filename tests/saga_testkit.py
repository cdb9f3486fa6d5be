"""Helpers the test modules share: place an order, run the queue, read a saga, wait.

Importable from every test module as `from saga_testkit import ...` (tests/ is on
sys.path because tests/conftest.py sits there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fulfillment.bootstrap import App
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c

# --- placing orders ---------------------------------------------------------------------


def place_order(
    app: App,
    order_id: str,
    items: dict[str, int] | None = None,
    *,
    sku: str = "ASPIRIN",
    qty: int = 1,
    stock: int | None = None,
    country: str = "US",
    expires_on: date | None = None,
    customer_id: str = "cust-1",
    patient_name: str = "Ada Lovelace",
) -> None:
    """Place an order through the command bus (its saga's first job is then queued).

    `items` maps SKU to quantity; without it the order has one line, `qty` of `sku`.
    `stock` sets the on-hand stock of each of its SKUs first. The prescription expires
    in 90 days unless `expires_on` says otherwise; it is for `patient_name`, who is also
    the one the parcel is addressed to.
    """
    lines = items if items is not None else {sku: qty}
    if stock is not None:
        for line_sku in lines:
            app.bus.handle(c.SetInventory(sku=line_sku, on_hand=stock))
    app.bus.handle(
        c.CreateOrder(
            order_id=order_id,
            customer_id=customer_id,
            items=tuple(OrderLine(s, q) for s, q in lines.items()),
            prescription=PrescriptionDetails(
                prescriber_id="dr-who",
                patient_name=patient_name,
                expires_on=expires_on or datetime.now(UTC).date() + timedelta(days=90),
            ),
            shipping_address=ShippingAddress(
                name=patient_name,
                line1="1 Analytical Way",
                city="London",
                postal_code="N1 1AA",
                country=country,
            ),
        )
    )


# --- running the queue, reading the result ----------------------------------------------


def run_jobs(app: App, concurrency: int = 4, timeout: float = 60) -> None:
    """Run a worker until no job is ready or running (TimeoutError after `timeout` s)."""
    Worker(app, concurrency).run(until_idle=True, timeout=timeout)


def order_of(app: App, order_id: str) -> Order:
    with app.uow() as uow:
        order = uow.orders.get(order_id)
    assert order is not None
    return order


def saga_of(app: App, order_id: str) -> Saga:
    with app.uow() as uow:
        saga = uow.sagas.get(order_id)
    assert saga is not None
    return saga


def history(app: App, order_id: str) -> list[str]:
    """Event types of the order's and its saga's streams, in commit order."""
    with app.uow() as uow:
        stored = uow.events.read_streams([f"order-{order_id}", f"saga-{order_id}"])
    return [e.type for e in stored]


# --- waiting ----------------------------------------------------------------------------


def seconds_until(
    condition: Callable[[], object], timeout: float, poll: float = 0.02
) -> float | None:
    """Poll `condition`: the seconds until it held, or None if it did not within `timeout`."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(poll)


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    poll: float = 0.02,
    context: Callable[[], str] | None = None,
) -> None:
    """Poll `condition`; on timeout fail, with `context()` (say, a worker's output)."""
    if seconds_until(condition, timeout, poll) is None:
        detail = f"\n{context()}" if context is not None else ""
        raise AssertionError(f"{what}: not reached within {timeout}s{detail}")


# --- faults -----------------------------------------------------------------------------


def failing_job(
    app: Any, kind: str, error: Callable[[], Exception], times: int | None = None
) -> Callable[[], None]:
    """Make the saga jobs of kind `kind` raise `error()` (the first `times` of them, or
    every one); returns what puts the real handler back."""
    real = app.bus.handlers[c.RunSagaJob]
    failed = 0

    def handler(cmd: c.RunSagaJob, uow: Any) -> Any:
        nonlocal failed
        if cmd.kind == kind and (times is None or failed < times):
            failed += 1
            raise error()
        return real(cmd, uow)

    app.bus.handlers[c.RunSagaJob] = handler

    def restore() -> None:
        app.bus.handlers[c.RunSagaJob] = real

    return restore
