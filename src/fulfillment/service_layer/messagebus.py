"""The command bus: each command type has exactly one handler; its errors propagate.

Optimistic-concurrency conflicts (two writers appended to the same stream) are retried
here by re-running the handler on fresh state, separately from business retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fulfillment.service_layer.commands import Command
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

UnitOfWorkFactory = Callable[[ClaimedJob | None], AbstractUnitOfWork]
Handler = Callable[[Any, AbstractUnitOfWork], Any]


class ConcurrencyError(Exception):
    """Another transaction appended to the stream first (unique (stream_id, version))."""


class RetryableDatabaseError(Exception):
    """A deadlock or serialization failure: the whole transaction may simply run again."""


class MessageBus:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        handlers: dict[type[Command], Handler],
        conflict_retries: int = 5,
    ) -> None:
        self.uow_factory = uow_factory
        self.handlers = handlers
        self.conflict_retries = conflict_retries

    def handle(self, command: Command, job: ClaimedJob | None = None) -> Any:
        try:
            handler = self.handlers[type(command)]
        except KeyError:
            raise LookupError(f"no handler for {type(command).__name__}") from None
        for attempt in range(self.conflict_retries + 1):
            try:
                return handler(command, self.uow_factory(job))
            except (ConcurrencyError, RetryableDatabaseError):
                if attempt == self.conflict_retries:
                    raise
                time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")
