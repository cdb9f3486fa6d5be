"""The built-in simulated carrier, configured by the `FULFILLMENT_CARRIER_*` variables.

Idempotent by key: the tracking number is derived from the idempotency key, so the same
key always books the same shipment, in any process and after any crash.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable

from fulfillment.domain.errors import TransientFailure, UnsupportedDestination
from fulfillment.domain.values import OrderLine, ShippingAddress
from fulfillment.service_layer.ports import Booking, Carrier

CARRIER_NAME = "simulated-post"


class CarrierUnavailable(TransientFailure):
    pass


class SimulatedCarrier(Carrier):
    def __init__(
        self,
        countries: tuple[str, ...],
        latency_ms: float = 0.0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        fail_keys: Callable[[str], bool] | None = None,
        pickup_delay_ms: float = 0.0,
    ) -> None:
        self.countries = frozenset(c.upper() for c in countries)
        #: FULFILLMENT_CARRIER_PICKUP_DELAY_MS: 0 picks the parcel up as it is booked.
        self.pickup_delay_ms = pickup_delay_ms
        self.confirms_pickup_at_booking = pickup_delay_ms == 0
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.fail_keys = fail_keys
        self._lock = threading.Lock()
        self.calls = 0

    def _call(self, key: str) -> None:
        with self._lock:
            self.calls += 1
            unlucky = self.failure_rate > 0 and self.rng.random() < self.failure_rate
        if self.latency_ms:
            self.sleep(self.latency_ms / 1000.0)
        if unlucky or (self.fail_keys is not None and self.fail_keys(key)):
            raise CarrierUnavailable("carrier unavailable (simulated transient fault)")

    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        if address.country.upper() not in self.countries:
            raise UnsupportedDestination(f"carrier does not ship to {address.country}")
        self._call(idempotency_key)
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12].upper()
        return Booking(carrier=CARRIER_NAME, tracking_number=f"SP{digest}")

    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        self._call(idempotency_key)
