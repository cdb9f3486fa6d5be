"""Clocks: the system clock, and a fixed one for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fulfillment.service_layer.ports import Clock


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock(Clock):
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
