"""A dashboard to look at a dead job and at a step's wait in the queue, for the HTTP and
the browser tests.

`fulfillment serve --workers 0` serves a SQLite database whose jobs an App of the test
runs, so the test decides when they run and how they fail. Two orders, UUID ids:

* `timed`: placed, left `QUEUE_WAIT` seconds in the queue, then run: its first step
  waited that long for a worker; its shipment's run includes the carrier's
  `CARRIER_LATENCY_MS`;
* `dead`: left in the queue alike, its prescription and reservation went through; its
  shipment's job hit a bug (an unexpected error, not a carrier fault) and, after
  `max_job_failures` (1 here), died.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saga_testkit import failing_job

from fulfillment.bootstrap import App
from fulfillment.service_layer import commands as c

from .server import Server, poll, start_server
from .test_operator_cli import Cli, place_order, run_jobs

QUEUE_WAIT = 0.5
CARRIER_LATENCY_MS = 80
BUG = "AttributeError: 'NoneType' object has no attribute 'label'"


@dataclass
class StuckShop:
    server: Server
    app: App
    timed: str
    dead: str


@contextmanager
def stuck_shop(folder: Path) -> Iterator[StuckShop]:
    url = f"sqlite:///{folder / 'stuck.db'}"
    with start_server(url, args=["--workers", "0"], log_dir=folder) as server:
        app = Cli(url, folder).app(carrier_latency_ms=CARRIER_LATENCY_MS)
        try:
            app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=100))
            timed, dead = str(uuid.uuid4()), str(uuid.uuid4())
            place_order(app, timed)
            time.sleep(QUEUE_WAIT)  # no worker: the first job waits in the queue
            run_jobs(app)
            restore = failing_job(app, "initiate_shipment", lambda: AttributeError(BUG[16:]))
            place_order(app, dead)
            time.sleep(QUEUE_WAIT)
            run_jobs(app)
            restore()
            with server.client() as client:  # the server's projector has seen them
                listed = poll(
                    lambda: client.get("/api/dashboard/orders").json()["items"],
                    lambda items: {timed, dead} <= {o["order_id"] for o in items},
                )
                assert {timed, dead} <= {o["order_id"] for o in listed}, listed
            yield StuckShop(server, app, timed, dead)
        finally:
            app.close()
