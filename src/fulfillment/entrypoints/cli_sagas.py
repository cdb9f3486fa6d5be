"""Operator commands for the saga machinery: `fulfillment sagas|jobs ...`.

`sagas list|show|retry|signal` read the sagas (a timeline of one saga, with its
compensations in the order they ran), resume the parked ones and deliver signals;
`jobs list|retry` inspect the durable queue that drives them and put dead jobs back in
line.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.text import Text

from fulfillment import views
from fulfillment.adapters.access_log import subjects_of
from fulfillment.adapters.job_queue import DEAD, READY, RUNNING, JobRow
from fulfillment.domain.errors import DomainError
from fulfillment.domain.saga_definition import REGISTRY
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints.cli_audit import recording
from fulfillment.entrypoints.cli_help import Typer, cursor_option, limit_option
from fulfillment.entrypoints.cli_tables import Cell, Column, FullIds, Id, print_events, print_table
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.saga_engine import InvalidSignalPayload, NotFound, UnknownSignal

sagas_app = Typer(help="Inspect sagas; retry parked ones.", no_args_is_help=True)
jobs_app = Typer(help="Inspect the job queue; retry dead jobs.", no_args_is_help=True)

_SHORT_STATUS = {
    "pending": "-",
    "succeeded": "ok",
    "failed": "failed",
    "compensated": "undone",
    "compensation_failed": "undo-failed",
    "waiting": "waiting",
}
_ICON = {
    "succeeded": "\u2713",
    "failed": "\u2715",
    "compensated": "\u21ba",
    "compensation_failed": "!",
    "running": "\u25cf",
    "pending": "\u2026",
    "skipped": "\u2013",
    "waiting": "\u23f8",
    "dead": "\u2298",
}
_UNDO = {
    "done": ("\u21ba compensated", "yellow"),
    "running": ("\u25cf undoing", "cyan"),
    "pending": ("\u2026 to undo", "cyan"),
    "failed": ("! undo failed", "bold red"),
    "dead": ("\u2298 undo dead", "bold red"),
}
_JOB_STATUSES = (READY, RUNNING, DEAD)
#: A job's last error is cut to what the table leaves, within these (characters).
_ERROR_WIDTH = (24, 80)


def _short_step(name: str) -> str:
    """The step's label in its definition (`rx`, `stock`), else its name."""
    for definition in REGISTRY.all():
        if name in definition.job_kinds and definition.kind_of(name) != "compensation":
            return str(definition.element(name).short)
    return name


def _steps(steps: list[dict[str, Any]]) -> Text:
    """`rx:ok stock:undone ship:failed(3)`: each step, its status, attempts beyond one."""
    text = Text()
    for n, step in enumerate(steps):
        if n:
            text.append(" ")
        text.append(f"{_short_step(step['name'])}:")
        status = step["status"]
        text.append(_SHORT_STATUS.get(status, status), style=ui.STATUS_STYLE.get(status, ""))
        if step["attempts"] > 1:
            text.append(f"({step['attempts']})")
    return text


# --- sagas --------------------------------------------------------------------------------


@sagas_app.command("list")
def sagas_list(
    status: str | None = typer.Option(
        None,
        "--status",
        "-s",
        metavar="STATUS",
        help="running, compensating, completed, compensated, compensation_failed or stuck.",
    ),
    limit: int = limit_option(20),
    cursor: str | None = cursor_option(),
    full_ids: FullIds = False,
) -> None:
    """Sagas, newest first; `--status stuck` lists those that need an operator.

    Examples:
    $ fulfillment sagas list
    $ fulfillment sagas list --status stuck
    """
    with ui.operator_app() as app:
        try:
            sagas, next_cursor = views.list_sagas(app, status, limit, cursor)
        except views.InvalidQuery as exc:
            raise ui.fail(str(exc), 2) from exc
    headers = ("saga_id", "status", "stuck", "steps", "reason", "job", "updated_at")
    rows: list[list[Cell]] = [
        [
            Id(s["saga_id"]),
            ui.styled(s["status"]),
            Text("stuck", style="bold red") if s["stuck"] else Text(""),
            _steps(s["steps"]),
            s["reason"] or "",
            ui.job_text(s["job"]),
            s["updated_at"][:19].replace("T", " "),
        ]
        for s in sagas
    ]
    if sagas:
        title = f"Sagas{f' ({status})' if status else ''}"
        print_table([Column(h) for h in headers], rows, title=title, full_ids=full_ids)
    else:
        ui.console.print("no sagas")
    ui.next_page(next_cursor)


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s" if ms < 60_000 else f"{ms / 60_000:.1f} min"


def _offset(start: str | None, at: str | None) -> str:
    """`+12 ms`: how long after the saga started."""
    if start is None or at is None:
        return "-"
    delta = datetime.fromisoformat(at) - datetime.fromisoformat(start)
    return "+" + _duration(delta.total_seconds() * 1000)


def _step_status(step: dict[str, Any]) -> Text:
    """`✓ succeeded → ↺ compensated`, `✕ failed`, ... in status colours."""
    undo = step["compensation"]
    if undo is None:
        status = step["status"]
        return Text(f"{_ICON.get(status, '')} {status}", style=ui.STATUS_STYLE.get(status, "dim"))
    label, style = _UNDO[undo["status"]]
    text = Text("\u2713 succeeded", style="green")
    text.append(" \u2192 ", style="dim")
    text.append(label, style=style)
    return text


def _step_notes(step: dict[str, Any], start: str | None) -> Text:
    notes = Text()
    undo = step["compensation"]
    if undo is not None:
        verb = "undone by" if undo["status"] == "done" else "to undo:"
        notes.append(f"{verb} ")
        notes.append(undo["event"], style="yellow")
        if undo["at"]:
            notes.append(f" at {_offset(start, undo['at'])}", style="dim")
    if step["status"] == "waiting":
        notes.append(f"waits for {', '.join(step['signals'])}")
        if step["timeout_at"]:
            notes.append(f" until {step['timeout_at'][:19].replace('T', ' ')}", style="dim")
    for attempt in step["attempt_log"]:
        if attempt.get("signal"):
            if notes:
                notes.append("\n")
            notes.append(f"{attempt['signal']}", style="bold")
            notes.append(f" -> {attempt['outcome']}")
            if attempt.get("reason"):
                notes.append(f" ({attempt['reason']})", style="dim")
    for attempt in step["attempt_log"] + (undo["attempts"] if undo else []):
        if attempt.get("error"):
            if notes:
                notes.append("\n")
            retried = attempt["outcome"] == "retried"
            notes.append(f"attempt {attempt['attempt']}: ", style="bold red")
            notes.append(attempt["error"], style="red")
            if retried:
                notes.append(f" (retried in {_duration(attempt['retry_in_seconds'] * 1000)})")
    job = step["job"]
    if job:
        if notes:
            notes.append("\n")
        notes.append("job ", style="dim")
        notes.append_text(ui.job_text(job))
        if job["status"] == DEAD and job["last_error"]:
            notes.append(": ")
            notes.append(job["last_error"].strip().partition("\n")[0], style="red")
    if step["action"]:
        notes.append("\nto retry: ", style="bold")
        notes.append(step["action"])
    return notes


@sagas_app.command("show")
def sagas_show(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="The saga (= order) id."),
    full_ids: FullIds = False,
) -> None:
    """One saga as a timeline: steps, compensations in the order they ran, then events.

    Each step's time is split: how long its job waited in the queue once due (`queued`),
    how long the worker ran it (`ran`), and in all (`duration`, with retries' backoffs).

    Example:
    $ fulfillment sagas show ord-1004
    """
    with ui.operator_app(catch_up=False) as app, recording(app, "sagas show") as record:
        timeline = views.saga_timeline(app, saga_id)
        if timeline is not None:
            subjects = subjects_of(timeline["events"])
            if timeline["order"] is not None:
                subjects[saga_id] = timeline["order"]["customer_id"]
            record(subjects)
    if timeline is None:
        raise ui.fail(f"unknown saga {saga_id!r}")
    order, saga = timeline["order"], timeline["saga"]
    start = saga["started_at"]

    title = Text("Saga ", style="bold")
    title.append(saga["saga_id"], style="bold")
    title.append("  ")
    title.append_text(ui.styled(saga["status"]))
    if saga["reason"]:
        title.append(f"  ({saga['reason']})", style="dim")
    if saga["stuck"]:
        title.append("  stuck: `fulfillment sagas retry` may help", style="bold red")
    ui.console.print(title)
    took = f"took {_duration(saga['duration_ms'])}" if saga["finished_at"] else "still running"
    if order is not None:
        summary = Text(f"order {order['status']} \u00b7 customer {order['customer_id']} \u00b7 ")
        summary.append(f"{ui.items_text(order['items'])} \u00b7 ")
    else:
        summary = Text(f"saga {saga['definition']} v{saga['definition_version']} \u00b7 ")
    summary.append(f"started {start or '-'} \u00b7 {took}")
    ui.console.print(summary, style="dim")
    if saga["parked_error"]:
        ui.console.print(Text(f"parked on: {saga['parked_error']}", style="red"))

    columns = [
        Column("#", right=True),
        Column("step"),
        Column("status"),
        *(Column(h, right=True) for h in ("attempts", "started", "queued", "ran", "duration")),
        Column("compensation, errors"),
    ]
    rows: list[list[Cell]] = [
        [
            str(n),
            step["name"],
            _step_status(step),
            str(step["attempts"]),
            _offset(start, step["started_at"]),
            _duration(step["queued_ms"]),
            _duration(step["run_ms"]),
            _duration(step["duration_ms"]),
            _step_notes(step, start),
        ]
        for n, step in enumerate(timeline["steps"], 1)
    ]
    print_table(columns, rows, title="Steps", title_style="bold")
    _print_compensations(timeline["compensation"], start)
    print_events(timeline["events"], title="Events", full_ids=full_ids)


def _print_compensations(compensation: dict[str, Any], start: str | None) -> None:
    if compensation["started_at"] is None:
        ui.console.print(Text("Compensations: none", style="bold"), Text("(no step failed)"))
        return
    title = "Compensations (last in, first out, in the order they ran)"
    ran, pending = compensation["ran"], compensation["pending"]
    if not ran and not pending:
        ui.console.print(Text(title, style="bold"))
        ui.console.print("nothing to undo: the first step failed", style="dim")
        return
    columns = [
        Column("#", right=True),
        *(Column(h) for h in ("event", "compensation", "undoes", "status")),
        *(Column(h, right=True) for h in ("at", "queued", "ran", "took", "attempts")),
    ]
    rows: list[list[Cell]] = [
        [
            str(n),
            Text(done["event"], style="yellow"),
            done["name"],
            done["undoes"],
            Text("done", style="green"),
            _offset(start, done["finished_at"]),
            _duration(done["queued_ms"]),
            _duration(done["run_ms"]),
            _duration(done["duration_ms"]),
            str(sum(1 for a in done["attempts"] if a["attempt"])),
        ]
        for n, done in enumerate(ran, 1)
    ]
    for n, p in enumerate(pending, len(ran) + 1):
        label, style = _UNDO[p["status"]]
        status = Text(label, style=style)
        if p["action"]:
            status.append(f"\nto retry: {p['action']}")
        rows.append([str(n), p["event"], p["name"], p["undoes"], status, *["-"] * 5])
    print_table(columns, rows, title=title, title_style="bold")


@sagas_app.command("retry")
def sagas_retry(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="The saga (= order) id."),
) -> None:
    """Retry a parked saga's compensation, or put its dead job back in the queue.

    Example:
    $ fulfillment sagas retry ord-1004
    """
    with ui.operator_app(catch_up=False) as app:
        try:
            resumed = app.bus.handle(c.ResumeSaga(saga_id=saga_id))
        except NotFound:
            raise ui.fail(f"unknown saga {saga_id!r}") from None
        except ConcurrencyError:
            raise ui.fail(f"saga {saga_id} changed meanwhile; look again") from None
        except DomainError as exc:
            raise ui.fail(str(exc)) from exc
    if resumed.what == "job":
        _print_revived(saga_id, resumed.name)
        return
    ui.console.print(
        f"saga {saga_id}: compensation {resumed.name} retried; "
        "the saga is compensating again and a worker will run it"
    )


@sagas_app.command("signal")
def sagas_signal(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="The saga id."),
    name: str = typer.Argument(
        ..., metavar="SIGNAL", help="The signal, as the saga's wait declares it."
    ),
    data: str = typer.Option(
        "{}", "--data", metavar="JSON", help="The signal's JSON body (an object)."
    ),
) -> None:
    """Deliver a signal to a saga that waits for it (sent as `cli` in its event).

    Examples:
    $ fulfillment sagas signal a-1 approve --data '{"approver": "ann"}'
    $ fulfillment sagas signal a-1 comment --data '{"text": "which room?"}'
    """
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ui.fail(f"--data is not JSON: {exc}", 2) from exc
    if not isinstance(payload, dict):
        raise ui.fail('--data must be a JSON object, like \'{"approver": "ann"}\'', 2)
    with ui.operator_app(catch_up=False) as app:
        try:
            accepted = app.bus.handle(c.SignalSaga(saga_id, name, payload, "cli"))
        except InvalidSignalPayload as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['message']}"
                for e in exc.errors
            )
            raise ui.fail(f"{exc}: {problems}", 2) from exc
        except ConcurrencyError:
            raise ui.fail(f"saga {saga_id} changed meanwhile; look again") from None
        except NotFound as exc:
            message = str(exc) if isinstance(exc, UnknownSignal) else f"unknown saga {saga_id!r}"
            raise ui.fail(message) from exc
        except DomainError as exc:  # not expected now (409 over HTTP)
            raise ui.fail(str(exc)) from exc
    where = {"continue": "moves on", "fail": "fails and compensates", "wait": "waits on"}
    ui.console.print(
        f"saga {saga_id}: signal {name} delivered; "
        f"the saga {where.get(accepted.outcome, accepted.outcome)}"
    )


def _print_revived(saga_id: str, kind: str) -> None:
    ui.console.print(f"saga {saga_id}: dead job {kind} is back in the queue; a worker will run it")


# --- jobs ---------------------------------------------------------------------------------


def _span(seconds: float) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h10m`, `4d03h`."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _relative(at: float | None, now: float) -> str:
    """`in 12s`, `3.0s ago` or `now`: an epoch time on the database clock, seen from `now`."""
    if at is None:
        return "-"
    delta = at - now
    if abs(delta) < 0.05:
        return "now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"


def _counts_line(counts: dict[str, int]) -> Text:
    """`queue: 3 ready, 1 running, 2 dead (6 in all)`."""
    statuses = [*_JOB_STATUSES, *sorted(set(counts) - set(_JOB_STATUSES))]
    line = Text("queue: ")
    for n, status in enumerate(statuses):
        if n:
            line.append(", ")
        count = counts.get(status, 0)
        line.append(f"{count} {status}", style=ui.STATUS_STYLE.get(status, "") if count else "")
    line.append(f" ({sum(counts.values())} in all)")
    return line


def _print_jobs(jobs: list[JobRow], now: float, title: str, full_ids: bool) -> None:
    """One row per job, with the first line of its last error cut to what the width
    leaves (at most 80 characters)."""
    columns = [
        Column("id", right=True),
        *(Column(h) for h in ("saga_id", "kind", "status")),
        Column("run_at", right=True),
        Column("lease", right=True),
        Column("claimed_by"),
        Column("claims", right=True),
        Column("failures", right=True),
        Column("last_error", fill=_ERROR_WIDTH),
    ]
    rows: list[list[Cell]] = [
        [
            str(job.id),
            Id(job.saga_id),
            job.kind,
            ui.styled(job.status),
            _relative(job.run_at, now),
            _relative(job.lease_expires_at, now),
            Id(job.claimed_by) if job.claimed_by else "-",
            str(job.claims),
            str(job.failures),
            Text((job.last_error or "").strip().partition("\n")[0], style="red"),
        ]
        for job in jobs
    ]
    print_table(columns, rows, title=title, full_ids=full_ids)


@jobs_app.command("list")
def jobs_list(
    status: str | None = typer.Option(
        None, "--status", "-s", metavar="STATUS", help="ready, running or dead."
    ),
    limit: int = limit_option(20),
    full_ids: FullIds = False,
) -> None:
    """The durable job queue, oldest job first, and how many jobs are in each status.

    Examples:
    $ fulfillment jobs list
    $ fulfillment jobs list --status dead
    """
    if status is not None and status not in _JOB_STATUSES:
        raise ui.fail(f"unknown job status {status!r}: ready, running or dead", 2)
    with ui.operator_app(catch_up=False) as app:
        listing = views.list_jobs(app, status, limit)
    jobs, counts, now = listing.jobs, listing.counts, listing.now
    if jobs:
        title = f"Jobs{f' ({status})' if status else ''}"
        _print_jobs(jobs, now, title, full_ids)
    else:
        ui.console.print(f"no {status} jobs" if status else "no jobs")
    total = counts.get(status, 0) if status else sum(counts.values())
    if len(jobs) < total:
        ui.console.print(f"showing the oldest {len(jobs)} of {total}: --limit N", style="dim")
    ui.console.print(_counts_line(counts))


@jobs_app.command("retry")
def jobs_retry(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="The saga (= order) id."),
) -> None:
    """Put the saga's dead job back in the queue, its failure count reset.

    Example:
    $ fulfillment jobs retry ord-1005
    """
    with ui.operator_app(catch_up=False) as app:
        job = views.job_of_saga(app, saga_id)
        if job is None or job.status != DEAD:
            state = f"its job is {job.status}" if job is not None else "it has no job"
            raise ui.fail(f"no dead job for saga {saga_id!r} ({state})")
        if not app.queue.retry_dead(saga_id):
            raise ui.fail(f"the dead job of saga {saga_id} changed meanwhile; look again")
    _print_revived(saga_id, job.kind)
