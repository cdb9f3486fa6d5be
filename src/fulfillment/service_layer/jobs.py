"""Job values shared by the queue adapter, the unit of work and the worker."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class JobSpec:
    """A job to enqueue: run `kind` for saga `saga_id`, not before `delay_seconds` from now."""

    saga_id: str
    kind: str
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds a lease on, identified by `claim_token`."""

    id: int
    saga_id: str
    kind: str
    claim_token: str
    claims: int
    failures: int
    #: When set, a step that enqueues its saga's next job with no delay keeps the claim
    #: (for this many seconds of lease) so the same worker thread runs it right away.
    chain_lease_seconds: float | None = None
    #: When this run of the job began (the worker's clock): the events it records keep
    #: it in their metadata (`job_started_at`), which tells a step's wait in the queue
    #: from its run. None: not known (a unit of work run outside `JobRunner`).
    started_at: datetime | None = None
    #: A tick of this process's `commit_clock`: after its claim committed, or, for a job
    #: handed over by the step before it, after that step's group got its transaction
    #: id. A group commit whose transaction id was asked for before it may not take the
    #: step (that id, hence the step's positions, could be older than the events it
    #: follows; ``adapters/group_commit.py``). 0: not known.
    ready_tick: int = 0


#: Ticks in this process (`ClaimedJob.ready_tick`, ``adapters/group_commit.py``).
commit_clock = itertools.count(1)


class LeaseLost(Exception):
    """The job's lease expired and another worker took it: this attempt's work is discarded."""
