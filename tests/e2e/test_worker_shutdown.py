"""Stopping a worker: in-flight jobs finish, nothing stays claimed, the rest is picked up.

A worker process that gets SIGTERM (or Ctrl-C) claims nothing new, lets the jobs it is
running finish within its grace period, exits 0, and leaves no job `running` under its
lease; a new worker completes the remaining sagas. Jobs still running when the grace
period ends are handed back without holding up the exit, and a late commit of such a
job changes nothing; while the grace period lasts, the worker keeps their leases.
Worker shutdown does not depend on the database, so SQLite is enough here.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from saga_testkit import place_order, run_jobs
from sqlalchemy import select

from fulfillment.adapters import tables as t
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.domain.values import OrderLine, ShippingAddress
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.ports import Booking

from .processes import (
    Ledger,
    fulfillment_command,
    wait_until,
    worker_command,
    worker_processes,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

MakeApp = Callable[..., App]
COUNTRIES = ("US", "CA", "GB")


def place_orders(app: App, count: int, on_hand: int = 1000) -> None:
    app.bus.handle(c.SetInventory("ASPIRIN", on_hand))
    for i in range(count):
        place_order(app, f"order-{i:03d}", customer_id="customer", patient_name=f"Patient {i}")


def assert_no_job_held(ledger: Ledger) -> None:
    held = [
        (j.saga_id, j.kind, j.status)
        for j in ledger.jobs()
        if j.status == "running" or j.claim_token is not None or j.lease_expires_at is not None
    ]
    assert held == []


def shipment_log(log_path: Path) -> tuple[set[str], set[str]]:
    """Sagas whose shipment job the worker's (JSON, DEBUG) log shows started, and ended."""
    started: set[str] = set()
    ended: set[str] = set()
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("step") != "initiate_shipment" or "saga_id" not in entry:
            continue
        message = str(entry.get("event", ""))
        if message.endswith(" started"):
            started.add(entry["saga_id"])
        elif " in " in message and message.endswith(" ms"):
            ended.add(entry["saga_id"])
    return started, ended


# --- real processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_finishes_in_flight_jobs_and_exits_cleanly(
    make_app: MakeApp, database_url: str, tmp_path: Path
) -> None:
    app = make_app(carrier_countries=COUNTRIES)
    place_orders(app, 30)
    ledger = Ledger(database_url)
    try:
        with worker_processes(tmp_path, database_url) as start:
            worker = start(
                8,
                carrier_latency_ms=300,
                retry_backoff_seconds=0.01,
                job_lease_seconds=2,
                carrier_countries="US,CA,GB",
                log_level="DEBUG",
            )

            def shipping_now() -> set[str]:
                started, ended = shipment_log(worker.log_path)
                return started - ended

            # From the worker's own log: a claimed job the worker has not started yet
            # (a continuation) is handed back on SIGTERM, not run, so the queue's
            # `running` status alone does not say which shipments were being booked.
            wait_until(shipping_now, 60, "a shipment in flight", context=worker.output)
            worker.terminate()
            assert worker.wait(30) == 0, worker.output()
            assert worker.said("worker stopped after")

        # Every shipment it had started booking was finished, not abandoned.
        started, ended = shipment_log(worker.log_path)
        assert started, "no shipment started before SIGTERM"
        assert started == ended
        assert started <= ledger.sagas_with("ShipmentInitiated")
        assert_no_job_held(ledger)
        assert ledger.finished_orders() < 30, "the worker finished everything before SIGTERM"

        run_jobs(app, 8)
        fates = ledger.fates()
        assert len(fates) == 30
        assert {f.status for f in fates.values()} == {"fulfilled"}
        assert ledger.inventory() == {"ASPIRIN": (970, 0)}
        assert ledger.orders_with_more_than_one(t.shipments) == []
        assert ledger.streams_with_gaps() == []
    finally:
        ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_worker_stops_on_signal_with_exit_code_zero(
    database_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    ledger = Ledger(database_url)
    try:
        with worker_processes(tmp_path, database_url) as start:
            worker = start(2)
            wait_until(lambda: worker.said("running with concurrency"), 60, "worker up")
            worker.process.send_signal(signum)
            assert worker.wait(30) == 0, worker.output()
        assert ledger.jobs() == []
    finally:
        ledger.close()


# A worker process like `fulfillment worker`, with a grace period short enough for a test.
SHORT_GRACE_WORKER = textwrap.dedent(
    """
    import sys
    from fulfillment.bootstrap import bootstrap
    from fulfillment.entrypoints.signals import stop_on_signals
    from fulfillment.entrypoints.worker import Worker

    app = bootstrap()
    worker = Worker(app, 2, grace_seconds=float(sys.argv[1]))
    stop_on_signals("worker", worker.stop)
    print("running with concurrency 2", flush=True)
    worker.run()
    app.close()
    print(f"worker stopped after {worker.processed} jobs", flush=True)
    """
)


@pytest.mark.slow
def test_worker_process_with_a_stuck_job_exits_after_its_grace_period(
    make_app: MakeApp, database_url: str, tmp_path: Path
) -> None:
    app = make_app(carrier_countries=COUNTRIES)
    place_orders(app, 1)
    advance_to_shipment(app)
    ledger = Ledger(database_url)
    try:
        with worker_processes(tmp_path, database_url) as start:
            # The carrier hangs for a minute; the grace period is a fraction of a second.
            worker = start(
                command=[sys.executable, "-c", SHORT_GRACE_WORKER, "0.3"],
                carrier_latency_ms=60_000,
                carrier_countries="US,CA,GB",
            )
            wait_until(
                lambda: [j.status for j in ledger.jobs()] == ["running"], 60, "shipment started"
            )
            worker.terminate()
            assert worker.wait(30) == 0, worker.output()

        assert_no_job_held(ledger)
        assert [(j.kind, j.status) for j in ledger.jobs()] == [("initiate_shipment", "ready")]
        run_jobs(app, 1, timeout=30)
        assert {f.status for f in ledger.fates().values()} == {"fulfilled"}
        assert len(ledger.records(t.shipments)) == 1
    finally:
        ledger.close()


# --- in process: the grace period -------------------------------------------------------


class GatedCarrier(SimulatedCarrier):
    """Bookings wait until the test opens the gate (a carrier that hangs)."""

    def __init__(self) -> None:
        super().__init__(COUNTRIES)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> Booking:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().book(idempotency_key, address, lines)


def advance_to_shipment(app: App) -> None:
    for _ in range(2):  # prescription, reservation
        (job,) = app.queue.claim(1, "setup", 30)
        assert app.runner.run(job) is JobOutcome.DONE


def test_job_still_running_after_grace_period_is_handed_back(
    make_app: MakeApp, database_url: str
) -> None:
    carrier = GatedCarrier()
    app = make_app(carrier=carrier)
    place_orders(app, 1)
    advance_to_shipment(app)
    outcomes: list[JobOutcome] = []

    def record(_job: ClaimedJob, outcome: JobOutcome) -> None:
        outcomes.append(outcome)

    stopping = Worker(app, 1, grace_seconds=0.2, on_outcome=record)
    thread = threading.Thread(target=stopping.run)
    thread.start()
    assert carrier.entered.wait(30)
    stopping.stop()
    thread.join(30)
    assert not thread.is_alive()

    ledger = Ledger(database_url)
    try:
        assert_no_job_held(ledger)
        assert [(j.kind, j.status) for j in ledger.jobs()] == [("initiate_shipment", "ready")]

        # The abandoned thread finishes its booking late: its commit is refused.
        carrier.gate.set()
        wait_until(lambda: outcomes, timeout=30, what="the late commit")
        assert outcomes == [JobOutcome.LEASE_LOST]
        assert ledger.sagas_with("ShipmentInitiated") == set()

        run_jobs(app, 2, timeout=30)
        assert {f.status for f in ledger.fates().values()} == {"fulfilled"}
        assert len(ledger.records(t.shipments)) == 1
        assert ledger.inventory() == {"ASPIRIN": (999, 0)}
    finally:
        ledger.close()


def test_stopping_worker_keeps_the_leases_of_jobs_it_is_finishing(make_app: MakeApp) -> None:
    # The booking outlasts the lease; while the stopping worker finishes it within its
    # grace period, a second worker must not reap the job and book a second time.
    carrier = SimulatedCarrier(COUNTRIES, latency_ms=1500)
    app = make_app(carrier=carrier, job_lease_seconds=0.6)
    place_orders(app, 1)
    advance_to_shipment(app)
    outcomes: list[JobOutcome] = []

    def record(_job: ClaimedJob, outcome: JobOutcome) -> None:
        outcomes.append(outcome)

    stopping = Worker(app, 1, grace_seconds=10, on_outcome=record)
    thread = threading.Thread(target=stopping.run)
    thread.start()
    wait_until(lambda: stopping.in_flight == 1, timeout=30, what="the shipment in flight")
    stopping.stop()
    run_jobs(app, 1, timeout=30)
    thread.join(30)

    assert outcomes == [JobOutcome.DONE]
    assert carrier.calls == 1


@pytest.mark.slow
def test_a_worker_without_projector_leaves_the_read_models_to_the_projector_process(
    make_app: MakeApp, database_url: str, tmp_path: Path
) -> None:
    app = make_app()
    place_orders(app, 20)
    ledger = Ledger(database_url)
    projector = Projector(app.engine, app.mapper)
    try:
        with worker_processes(tmp_path, database_url) as start:
            worker = start(8, command=[*worker_command(8), "--no-projector"])
            wait_until(lambda: ledger.finished_orders() == 20, 60, "every order finished")
            time.sleep(0.3)  # an inline projector polls every 0.1 s
            assert projector.lag().behind > 0, "the worker kept the read models itself"

            follower = start(command=[*fulfillment_command(), "projections", "run"])
            wait_until(lambda: projector.lag().behind == 0, 60, "the projector caught up")
            for process in (worker, follower):
                process.terminate()
                assert process.wait(30) == 0, process.output()
        with app.engine.connect() as conn:
            statuses = conn.execute(select(t.order_summaries.c.status)).scalars().all()
        assert sorted(statuses) == ["fulfilled"] * 20
    finally:
        ledger.close()
