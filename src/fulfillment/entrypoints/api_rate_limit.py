"""The optional rate limit of writes per API key (`FULFILLMENT_RATE_LIMIT_PER_MINUTE`,
docs/api.md, Rate limit).

Each sender (the API key's name, `api_errors.sender_of`; `anonymous` without keys) has a
token bucket of `per_minute` tokens, refilled continuously at `per_minute` a minute: a
burst of `per_minute` writes, then one every `60 / per_minute` seconds. A write
(`POST`, `PUT`, `PATCH`, `DELETE`) without a token is answered `429 rate_limited` with
`Retry-After` (whole seconds until a token is back) before any route runs, so it changes
nothing. Reads are not counted (the dashboard polls them); neither is the carrier's
signed webhook, which no API key sends.

The buckets live in the process: behind a load balancer, each API process limits on its
own, so N processes let a key through at up to N times the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fulfillment.entrypoints.api_errors import error_response, route_path, sender_of

#: The methods that count: those that may change something.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class TokenBuckets:
    """One token bucket per sender; thread-safe."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("a rate limit is at least 1 a minute")
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self.clock = clock
        self._lock = threading.Lock()
        #: sender -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, sender: str) -> float:
        """Take a token for `sender`: 0 when one was had, else the seconds until one is."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(sender, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.per_second)
            if tokens >= 1.0:
                self._buckets[sender] = (tokens - 1.0, now)
                return 0.0
            self._buckets[sender] = (tokens, now)
            return (1.0 - tokens) / self.per_second


class RateLimit:
    """429 `rate_limited` for a write over its sender's limit (inside the bearer-key
    guard, which names the sender; outside every route)."""

    def __init__(
        self,
        app: ASGIApp,
        per_minute: int,
        exempt_paths: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.per_minute = per_minute
        self.exempt_paths = frozenset(exempt_paths)
        self.buckets = TokenBuckets(per_minute, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in WRITES
            or route_path(scope) in self.exempt_paths
        ):
            await self.app(scope, receive, send)
            return
        sender = sender_of(Request(scope))
        wait = self.buckets.take(sender)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            response = error_response(
                429,
                "rate_limited",
                f"more than {self.per_minute} writes a minute from {sender!r}; "
                f"retry after {retry_after} s",
                {"limit_per_minute": self.per_minute, "retry_after_seconds": retry_after},
                headers={"Retry-After": str(retry_after)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
