"""The rate limit of writes (entrypoints/api_rate_limit.py): the token bucket of a
sender over time, and FULFILLMENT_RATE_LIMIT_PER_MINUTE."""

from __future__ import annotations

import pytest

from fulfillment.config import Settings
from fulfillment.entrypoints.api_rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_limit_then_one_token_every_sixtieth_of_a_minute() -> None:
    clock = Clock()
    buckets = TokenBuckets(3, clock)
    assert [buckets.take("shop") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("shop") == pytest.approx(20.0)  # 60 s / 3
    assert buckets.take("till") == 0.0  # a bucket per sender
    clock.now += 10
    assert buckets.take("shop") == pytest.approx(10.0)  # a refused write takes nothing
    clock.now += 10
    assert buckets.take("shop") == 0.0
    assert buckets.take("shop") == pytest.approx(20.0)
    clock.now += 3600  # a long pause refills to the limit, never beyond
    assert [buckets.take("shop") for _ in range(4)][-1] > 0


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("", None), ("  ", None), ("3", 3), ("600", 600)]
)
def test_the_rate_limit_setting(raw: str | None, expected: int | None) -> None:
    env = {"FULFILLMENT_DATABASE_URL": "sqlite://"}
    if raw is not None:
        env["FULFILLMENT_RATE_LIMIT_PER_MINUTE"] = raw
    assert Settings.from_env(env).rate_limit_per_minute == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [("0", "at least 1"), ("-5", "at least 1"), ("2.5", "whole number"), ("many", "a number")],
)
def test_a_bad_rate_limit_stops_the_process_saying_so(raw: str, message: str) -> None:
    env = {"FULFILLMENT_DATABASE_URL": "sqlite://", "FULFILLMENT_RATE_LIMIT_PER_MINUTE": raw}
    with pytest.raises(ValueError, match=f"FULFILLMENT_RATE_LIMIT_PER_MINUTE.*{message}"):
        Settings.from_env(env)
