"""Wiring the simulated carrier's tracking updates (adapters/tracking_simulator.py) to
the pharmacy's own signed webhook: over HTTP for `fulfillment serve`, through the
application in-process for the demo. Both go through `POST /webhooks/carrier` and its
signature check, exactly as a real carrier's updates do."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.tracking_simulator import Send, TrackingSimulator
from fulfillment.bootstrap import App
from fulfillment.entrypoints.webhook_signature import sign

log = logging.getLogger("fulfillment.carrier")

WEBHOOK_PATH = "/webhooks/carrier"
#: Post: (body, headers) -> the HTTP status of the answer.
Post = Callable[[bytes, dict[str, str]], int]


def signed_sender(secret: str, post: Post, clock: Callable[[], float] = time.time) -> Send:
    """A `Send` that signs each body (`Carrier-Signature`) and posts it."""

    def send(body: bytes) -> bool:
        headers = {
            "Content-Type": "application/json",
            "Carrier-Signature": sign(secret, body, int(clock())),
        }
        try:
            status = post(body, headers)
        except httpx.HTTPError as exc:
            log.warning("could not send a tracking update: %s", type(exc).__name__)
            return False
        if not 200 <= status < 300:
            log.warning("the pharmacy refused a tracking update: HTTP %s", status)
        return 200 <= status < 300

    return send


def simulator_for(app: App, post: Post) -> TrackingSimulator | None:
    """The simulated carrier's updates, when it is the carrier and webhooks are on."""
    secret = app.settings.carrier_webhook_secret
    if secret is None or not isinstance(app.carrier, SimulatedCarrier):
        return None
    return TrackingSimulator(
        app.engine,
        signed_sender(secret, post),
        pickup_delay_seconds=app.settings.carrier_pickup_delay_ms / 1000.0,
    )


def http_post(base_url: str) -> Post:
    """Post to the server at `base_url` (the server's own address).

    Over HTTPS the server's certificate is not verified: it need not name the address
    the server posts to (127.0.0.1, say), and this is the server's own socket; the
    updates are signed all the same."""
    client = httpx.Client(base_url=base_url, timeout=5.0, verify=not base_url.startswith("https:"))

    def post(body: bytes, headers: dict[str, str]) -> int:
        return client.post(WEBHOOK_PATH, content=body, headers=headers).status_code

    return post
