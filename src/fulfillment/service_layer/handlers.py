"""Command handlers of the order side: plain functions that receive their dependencies.

The saga's own jobs, signals and operator actions are handled by the saga engine
(`fulfillment.service_layer.saga_engine`), for every saga type.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from fulfillment.domain.errors import DomainError
from fulfillment.domain.order import Order
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.ports import LotLevel, StockLevel
from fulfillment.service_layer.saga_engine import (
    EngineDeps,
    IdempotencyKeyReused,
    NotFound,
    NothingToResume,
    Resumed,
    Timeouts,
    replayed,
)
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

__all__ = [
    "IdempotencyKeyReused",
    "NotFound",
    "NothingToResume",
    "Resumed",
    "Timeouts",
    "create_order",
    "set_inventory",
    "set_lot",
    "start_order_fulfillment_saga",
]


def _order(uow: AbstractUnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found")
    return order


def create_order(cmd: c.CreateOrder, uow: AbstractUnitOfWork, deps: EngineDeps) -> str:
    """Place the order and start its saga in the same transaction.

    With an idempotency key, returns the order the key already created (starting nothing),
    or stores the key with the new order: a concurrent twin fails on the unique key, and
    its retry by the bus finds the key here.
    """
    with uow:
        stored = replayed(uow, cmd.idempotency)
        if stored is None and cmd.idempotency is not None and cmd.legacy_key is not None:
            stored = replayed(uow, dataclasses.replace(cmd.idempotency, key=cmd.legacy_key))
        if stored is not None:
            return stored.order_id
        if uow.orders.get(cmd.order_id) is not None:
            raise DomainError(f"order {cmd.order_id} already exists")
        now = deps.clock.now()
        order = Order.place(
            cmd.order_id,
            customer_id=cmd.customer_id,
            items=cmd.items,
            prescription=cmd.prescription,
            shipping_address=cmd.shipping_address,
            at=now,
        )
        uow.orders.add(order)
        _start_saga(uow, order, deps)
        if cmd.idempotency is not None:
            uow.idempotency.add(cmd.idempotency)
        uow.commit()
    return cmd.order_id


def _start_saga(uow: AbstractUnitOfWork, order: Order, deps: EngineDeps) -> None:
    now = deps.clock.now()
    deadline = now + timedelta(seconds=deps.timeouts.saga_seconds)
    uow.sagas.add(
        order_saga.start(order, deadline_at=deadline, at=now, timeouts=deps.timeouts.waits)
    )


def start_order_fulfillment_saga(
    cmd: c.StartOrderFulfillmentSaga, uow: AbstractUnitOfWork, deps: EngineDeps
) -> None:
    """Start the saga of an order that has none (an order created before the saga existed)."""
    with uow:
        order = _order(uow, cmd.order_id)
        if uow.sagas.get(cmd.order_id) is not None:
            uow.commit()
            return
        _start_saga(uow, order, deps)
        uow.commit()


def set_inventory(cmd: c.SetInventory, uow: AbstractUnitOfWork) -> StockLevel:
    with uow:
        level = uow.inventory.set_on_hand(cmd.sku, cmd.on_hand, cmd.dea_schedule)
        uow.commit()
    return level


def set_lot(cmd: c.SetLot, uow: AbstractUnitOfWork) -> LotLevel:
    with uow:
        level = uow.inventory.set_lot(cmd.sku, cmd.lot, cmd.on_hand, cmd.expires_on)
        uow.commit()
    return level
