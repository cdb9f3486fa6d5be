"""The durable job queue as the operator, the dashboard and the metrics see it.

Jobs by status are counted in ONE place: `count_jobs`, over
``adapters/job_queue.py`` `queue_depth`: `ready` (due now), `scheduled` (ready, due
later: a retry's backoff or a wait's timer), `running` and `dead`. Who shows the rows'
own statuses (`ready` including the scheduled ones: `fulfillment jobs list`, the
`fulfillment_jobs` gauge) folds that count with `by_row_status`; nothing counts again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, db_now_epoch, read_connection
from fulfillment.adapters.job_queue import JobRow, by_row_status, queue_depth
from fulfillment.bootstrap import App


def count_jobs(conn: Connection) -> dict[str, int]:
    """THE count of jobs by status, on `conn` (in its snapshot): `ready` (due now),
    `scheduled` (ready, due later), `running` and `dead`; statuses without jobs are left
    out."""
    return queue_depth(conn)


def jobs_by_status(app: App) -> dict[str, int]:
    """Jobs by their row's status (`ready` counts the scheduled ones too)."""
    with read_connection(app.engine) as conn:
        return by_row_status(count_jobs(conn))


@dataclass(frozen=True)
class JobListing:
    """What `fulfillment jobs list` shows: the oldest jobs (of one status), the count by
    row status, and the database clock's now (epoch seconds) to show times against."""

    jobs: list[JobRow]
    counts: dict[str, int]
    now: float


def list_jobs(app: App, status: str | None, limit: int) -> JobListing:
    """The first `limit` jobs by id (oldest first), of `status` if given."""
    j = t.jobs
    query = select(j).order_by(j.c.id).limit(limit)
    if status:
        query = query.where(j.c.status == status)
    with read_connection(app.engine) as conn:
        jobs = [JobRow(**row._mapping) for row in conn.execute(query)]
        counts = by_row_status(count_jobs(conn))
        now = float(conn.execute(select(db_now_epoch(backend_of(conn)))).scalar_one())
    return JobListing(jobs, counts, now)


def job_row(conn: Connection, saga_id: str) -> RowMapping | None:
    """The saga's job row, if it has one (a saga has at most one job at a time)."""
    row = conn.execute(select(t.jobs).where(t.jobs.c.saga_id == saga_id)).first()
    return row._mapping if row is not None else None


def job_of_saga(app: App, saga_id: str) -> JobRow | None:
    """The saga's job, if it has one."""
    with read_connection(app.engine) as conn:
        row = job_row(conn, saga_id)
    return JobRow(**row) if row is not None else None


def job_view(job: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """A job as the API, the CLI and the dashboard show it; None for no job (also a row
    of an outer join that found none)."""
    if job is None or job.get("id") is None:
        return None
    run_at = job.get("run_at")
    return {
        "id": int(job["id"]),
        "kind": job["kind"],
        "status": job["status"],
        "failures": int(job["failures"] or 0),
        "claims": int(job["claims"] or 0),
        "run_at": (
            datetime.fromtimestamp(float(run_at), UTC).isoformat() if run_at is not None else None
        ),
        "claimed_by": job.get("claimed_by"),
        "last_error": job.get("last_error"),
    }
