"""The retry policy: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits base * 2**(n-1), at most
    `cap_seconds`, jittered to 50..100%."""

    max_attempts: int = 3
    base_seconds: float = 60.0
    cap_seconds: float | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def exhausted(self, attempts_made: int) -> bool:
        return attempts_made >= self.max_attempts

    def delay(self, attempt: int, at_least: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based); `at_least`
        (what the failure asked for, `TransientFailure.retry_after_seconds`) is a lower
        bound, above the cap too."""
        ceiling = self.base_seconds * (2 ** min(60, max(0, attempt - 1)))
        if self.cap_seconds is not None:
            ceiling = min(ceiling, self.cap_seconds)
        backoff = float(ceiling / 2 + self.rng.uniform(0, ceiling / 2))
        return max(backoff, at_least) if at_least is not None else backoff
