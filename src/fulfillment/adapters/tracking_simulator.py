"""The simulated carrier's side after booking: it picks its parcels up and delivers them,
and tells the pharmacy as a real carrier would, by signed tracking updates to
`POST /webhooks/carrier` (docs/api.md, carrier webhooks).

It runs in the server process (`fulfillment serve`) and in the demo, when the simulated
carrier is in use and FULFILLMENT_CARRIER_WEBHOOK_SECRET is set. Each parcel booked with
it gets `in_transit` once FULFILLMENT_CARRIER_PICKUP_DELAY_MS has passed since booking,
then `out_for_delivery` and `delivered`, a step apart. Event ids are derived from the
tracking number and the status, so an update sent twice (by two server processes, or
after a restart) is recorded once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.carrier import CARRIER_NAME
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.mapper import to_utc
from fulfillment.domain.status import ShipmentStatus, TrackingStatus

log = logging.getLogger("fulfillment.carrier")

#: The updates of one parcel, in order, as multiples of the step after the pickup.
STAGES = (
    (TrackingStatus.IN_TRANSIT, 0),
    (TrackingStatus.OUT_FOR_DELIVERY, 1),
    (TrackingStatus.DELIVERED, 2),
)
#: A parcel's updates a step apart, at least this (a pickup delay of 0 still shows
#: the whole lifecycle).
MIN_STEP_SECONDS = 0.5
#: Send: the raw JSON body of one update -> whether the pharmacy took it (2xx).
Send = Callable[[bytes], bool]


class TrackingSimulator:
    """Finds the simulated carrier's parcels due for an update and sends it."""

    def __init__(
        self,
        engine: Engine,
        send: Send,
        *,
        pickup_delay_seconds: float,
        step_seconds: float | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.send = send
        self.pickup_delay = pickup_delay_seconds
        self.step = max(MIN_STEP_SECONDS, step_seconds or pickup_delay_seconds)
        self.now = now
        self._sent: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _due(self, booked_at: datetime, now: datetime) -> list[TrackingStatus]:
        age = (now - booked_at).total_seconds() - self.pickup_delay
        return [status for status, k in STAGES if age >= k * self.step]

    def run_once(self) -> int:
        """Send every update now due; returns how many the pharmacy took."""
        now = self.now()
        horizon = timedelta(seconds=self.pickup_delay + len(STAGES) * self.step + 60)
        s = t.shipments
        with read_connection(self.engine) as conn:
            rows = conn.execute(
                select(s.c.tracking_number, s.c.created_at).where(
                    s.c.carrier == CARRIER_NAME,
                    s.c.status == ShipmentStatus.INITIATED.value,
                    s.c.created_at >= now - horizon,
                )
            ).all()
        sent = 0
        for number, created_at in rows:
            for status in self._due(to_utc(created_at), now):
                if (number, status) in self._sent:
                    continue
                body = {
                    "event_id": f"sim-{number}-{status.value}",
                    "tracking_number": number,
                    "status": status.value,
                    "occurred_at": now.isoformat(),
                    "location": "simulated depot",
                }
                if self.send(json.dumps(body).encode()):
                    self._sent.add((number, status))
                    sent += 1
        if len(self._sent) > 100_000:  # parcels past the horizon are done
            self._sent.clear()
        return sent

    # --- as a background thread -------------------------------------------------------

    def start(self, interval: float = 0.2) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.run_once()
                except Exception:
                    log.exception("the simulated carrier could not send its tracking updates")

        self._thread = threading.Thread(target=loop, name="carrier-simulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
