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
    """A deadlock, a serialization failure or a lost connection: the transaction was
    aborted whole, and the command may simply run again on a fresh one."""


class DatabaseBusy(Exception):
    """A lock or statement wait ran out (`FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS`): something
    holds what this transaction needs, perhaps a paused process. Not retried at once: the
    API answers 503 with Retry-After, a job goes back to the queue for a moment."""


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

    def handle(
        self, command: Command, job: ClaimedJob | None = None, *, sender: str | None = None
    ) -> Any:
        """Run the command's handler; returns what the handler returns. `sender`: who
        asked (an API key's name, `cli`), put into the metadata of every event it records."""
        return self.handle_job(command, job, sender=sender)[0]

    def handle_job(
        self, command: Command, job: ClaimedJob | None, *, sender: str | None = None
    ) -> tuple[Any, ClaimedJob | None]:
        """Run the command of a claimed job: what the handler returns, and the job its
        commit handed over (the saga's next job, still claimed: run it next), if any."""
        try:
            handler = self.handlers[type(command)]
        except KeyError:
            raise LookupError(f"no handler for {type(command).__name__}") from None
        for attempt in range(self.conflict_retries + 1):
            uow = self.uow_factory(job)
            if sender is not None:
                uow.sender = sender
            try:
                return handler(command, uow), uow.handed_over
            except (ConcurrencyError, RetryableDatabaseError):
                if attempt == self.conflict_retries:
                    raise
                time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")
