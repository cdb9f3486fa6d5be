"""The query side (CQRS): the only reader of tables for the HTTP API, the operator CLI,
the dashboard and the metrics' live gauges.

Reads go to the projections (``order_summaries``, kept by ``adapters.projections``), to
the event log, and to the state-stored tables (inventory, jobs). Nothing here writes.
A projection lags the log by a poll interval at most; ``get_order`` falls back to the
event streams when an order is not projected yet, so a client never gets a 404 for an
order it has just created.

By topic:

* ``orders``: one order, a page of orders, an order's events, orders by status, a
  customer's orders.
* ``sagas``: a page of sagas, one in detail, sagas by status, and THE definition of a
  stuck saga (``is_stuck``; ``list_sagas(status=STUCK)``).
* ``events``: the global feed and the last events of the log.
* ``jobs``: the durable queue; jobs by status are counted in one place, ``count_jobs``.
* ``inventory``: stock levels by SKU and lot; the orders a lot went to (recalls).
* ``health``: does the database answer; the projections' lag.
* ``dashboard``: the dashboard's overview and orders list.
* ``timeline``: one saga as a timeline (the dashboard's order page, ``sagas show``).
* ``metrics``: the database snapshot behind each Prometheus scrape.
* ``common``: limits, cursors, streams and times the others share; ``cursors``: the
  listings' signed cursors.

Listings are newest first, ordered by the commit position of each order's
``OrderCreated`` event, and paginated with an opaque cursor: a page never repeats or
skips an order of the pages before it, even while new orders arrive.
"""

from __future__ import annotations

from fulfillment.views.common import MAX_LIMIT, InvalidQuery
from fulfillment.views.dashboard import dashboard_orders, overview
from fulfillment.views.events import events_after, latest_events
from fulfillment.views.health import check_database, projection_status
from fulfillment.views.inventory import get_inventory, lot_orders, lot_view, stock_view
from fulfillment.views.jobs import (
    JobListing,
    count_jobs,
    job_of_saga,
    jobs_by_status,
    list_jobs,
)
from fulfillment.views.metrics import Snapshot, read_snapshot
from fulfillment.views.orders import (
    current_order,
    get_order,
    list_orders,
    order_events,
    order_fhir,
    orders_of_customer,
)
from fulfillment.views.sagas import STUCK, is_stuck, list_sagas, saga_detail
from fulfillment.views.timeline import order_timeline, saga_timeline

__all__ = [
    "MAX_LIMIT",
    "STUCK",
    "InvalidQuery",
    "JobListing",
    "Snapshot",
    "check_database",
    "count_jobs",
    "current_order",
    "dashboard_orders",
    "events_after",
    "get_inventory",
    "get_order",
    "is_stuck",
    "job_of_saga",
    "jobs_by_status",
    "latest_events",
    "list_jobs",
    "list_orders",
    "list_sagas",
    "lot_orders",
    "lot_view",
    "order_events",
    "order_fhir",
    "order_timeline",
    "orders_of_customer",
    "overview",
    "projection_status",
    "read_snapshot",
    "saga_detail",
    "saga_timeline",
    "stock_view",
]
