"""The retry policy: exponential backoff with jitter, and when attempts run out."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fulfillment.service_layer.retry import RetryPolicy


@given(
    base=st.floats(0.001, 600, allow_nan=False),
    attempt=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_each_wait_is_between_half_and_all_of_the_exponential_ceiling(
    base: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=base, rng=random.Random(seed))
    ceiling = base * 2 ** (attempt - 1)

    delay = policy.delay(attempt)

    assert ceiling / 2 <= delay <= ceiling


def test_waits_double_from_one_attempt_to_the_next() -> None:
    # With jitter pinned to its maximum the exponential shape shows plainly.
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    policy = RetryPolicy(base_seconds=60, rng=Top())

    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]


def test_jitter_spreads_the_waits_of_many_sagas() -> None:
    policy = RetryPolicy(base_seconds=10, rng=random.Random(7))

    delays = {policy.delay(1) for _ in range(50)}

    assert len(delays) > 40
    assert min(delays) >= 5 and max(delays) <= 10


def test_a_zero_base_retries_at_once() -> None:
    assert RetryPolicy(base_seconds=0).delay(3) == 0


def test_an_attempt_number_below_one_waits_like_the_first() -> None:
    policy = RetryPolicy(base_seconds=8, rng=random.Random(1))

    assert 4 <= policy.delay(0) <= 8


def test_attempts_are_exhausted_once_max_attempts_were_made() -> None:
    policy = RetryPolicy(max_attempts=3)

    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_the_defaults_are_those_of_the_original_system() -> None:
    policy = RetryPolicy()

    assert (policy.max_attempts, policy.base_seconds) == (3, 60.0)
