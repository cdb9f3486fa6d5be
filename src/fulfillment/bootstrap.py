"""The one place where dependencies are wired, from configuration."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.clock import SystemClock
from fulfillment.adapters.db import (
    DatabaseBounds,
    backend_of,
    create_db_engine,
    read_connection,
    sqlite_file,
    stock_lock_sql,
)
from fulfillment.adapters.event_store import SqlAlchemyEventStore, StreamCache, insert_events
from fulfillment.adapters.group_commit import GroupCommitter
from fulfillment.adapters.http_carrier import HttpCarrier
from fulfillment.adapters.job_queue import SqlAlchemyJobQueue
from fulfillment.adapters.mapper import EventMapper
from fulfillment.adapters.migrate import migrate
from fulfillment.adapters.patient_data import PatientData, key_file_of, load_or_create_key_file
from fulfillment.adapters.phi_crypto import MasterKeys
from fulfillment.adapters.unit_of_work import SqlAlchemyUnitOfWork
from fulfillment.config import Settings
from fulfillment.domain.saga import Saga
from fulfillment.domain.saga_definition import REGISTRY
from fulfillment.observability.telemetry import JobTelemetry
from fulfillment.observability.tracing import NO_TRACING, Tracing, setup_tracing
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import handlers as h
from fulfillment.service_layer import order_saga, saga_engine, tracking
from fulfillment.service_layer.job_runner import JobRunner
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.messagebus import Handler, MessageBus
from fulfillment.service_layer.ports import Carrier, Clock
from fulfillment.service_layer.retry import RetryPolicy

log = logging.getLogger("fulfillment")


@dataclass
class App:
    """Everything an entrypoint needs, built once per process."""

    settings: Settings
    engine: Engine
    mapper: EventMapper
    cache: StreamCache
    clock: Clock
    carrier: Carrier
    retry: RetryPolicy
    bus: MessageBus
    queue: SqlAlchemyJobQueue
    runner: JobRunner
    #: Spans of saga jobs (off unless configured: docs/observability.md).
    tracing: Tracing = NO_TRACING
    #: The job threads' shared transaction (None when group commit is off).
    group: GroupCommitter | None = None
    #: The one of the steps that write stock, under the stock lock (not on SQLite).
    stock_group: GroupCommitter | None = None
    #: The steps that write stock commit each on its own (FULFILLMENT_STOCK_COMMIT=step).
    stock_alone: bool = False
    #: Why the process cannot serve yet (`fulfillment serve` waiting for its database, or
    #: migrating it); None once it can. `GET /health` answers 503 meanwhile.
    not_ready: str | None = None

    @property
    def patient_data(self) -> PatientData:
        assert self.mapper.patient_data is not None
        return self.mapper.patient_data

    def uow(self, job: ClaimedJob | None = None) -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(
            self.engine,
            self.mapper,
            job,
            cache=self.cache,
            group=self.group,
            idempotency_ttl_seconds=self.settings.idempotency_ttl_seconds,
            stock_group=self.stock_group,
            stock_alone=self.stock_alone,
        )

    def prefetch_sagas(self, saga_ids: list[str]) -> None:
        """Read the streams of freshly claimed sagas into the cache, in one query."""
        streams = [Saga.stream_id_for(saga_id) for saga_id in saga_ids]
        with read_connection(self.engine) as conn:
            SqlAlchemyEventStore(conn, self.mapper, self.cache).prefetch(streams)

    def close(self) -> None:
        for group in (self.group, self.stock_group):
            if group is not None:
                group.close()
        self.carrier.close()
        self.tracing.shutdown()
        self.engine.dispose()


def build_handlers(deps: saga_engine.EngineDeps) -> dict[type[c.Command], Handler]:
    p = functools.partial
    return {
        c.CreateOrder: p(h.create_order, deps=deps),
        c.StartOrderFulfillmentSaga: p(h.start_order_fulfillment_saga, deps=deps),
        c.RunSagaJob: p(saga_engine.run_saga_job, deps=deps),
        c.RecordJobFailure: p(saga_engine.record_job_failure, deps=deps),
        c.SignalSaga: p(saga_engine.signal_saga, deps=deps),
        c.CancelSaga: p(saga_engine.cancel_saga, deps=deps),
        c.RecordTrackingUpdate: p(tracking.record_tracking_update, deps=deps),
        c.StartSaga: p(saga_engine.start_saga, deps=deps),
        c.ResumeSaga: p(saga_engine.resume_saga, deps=deps),
        c.SetInventory: h.set_inventory,
        c.SetLot: h.set_lot,
    }


def carrier_of(settings: Settings) -> Carrier:
    """The carrier FULFILLMENT_CARRIER names: the simulated one, or a carrier's REST API
    (docs/carriers.md)."""
    if settings.carrier == "http":
        assert settings.carrier_url is not None  # Settings.validate saw to it
        return HttpCarrier(settings.carrier_url, settings.carrier_token)
    return SimulatedCarrier(
        settings.carrier_countries,
        latency_ms=settings.carrier_latency_ms,
        failure_rate=settings.carrier_failure_rate,
        pickup_delay_ms=settings.carrier_pickup_delay_ms,
    )


def patient_data_of(settings: Settings) -> PatientData:
    """The patient-data codec of `settings`: FULFILLMENT_MASTER_KEY, else on SQLite the
    key file beside the database (created once), or a key for the process's lifetime
    for a database in memory. A server database without a key stores patient data in
    plain text, which `migrate`, `serve` and `worker` refuse
    (`Settings.check_patient_data_protected`); said at every start when on purpose."""
    masters = settings.master_keys
    if masters is None and settings.database_url.startswith("sqlite"):
        path = sqlite_file(settings.database_url)
        masters = (
            load_or_create_key_file(key_file_of(path))
            if path is not None
            else MasterKeys.parse(MasterKeys.generate())
        )
    if not settings.phi_encryption or masters is None:
        log.warning(
            "patient data encryption is off (%s): new orders' patient data are stored in "
            "plain text",
            "FULFILLMENT_PHI_ENCRYPTION=off"
            if not settings.phi_encryption
            else "FULFILLMENT_MASTER_KEY is not set",
        )
    return PatientData(masters, encrypt=settings.phi_encryption)


def bootstrap(
    settings: Settings | None = None,
    *,
    carrier: Carrier | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy | None = None,
    run_migrations: bool = False,
    pool_size: int = 10,
    tracing: Tracing | None = None,
    bounds: DatabaseBounds | None = None,
) -> App:
    """Wire an App from `settings` (default: the environment).

    `tracing`: default from the environment (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``FULFILLMENT_TRACING``), off when neither is set. `bounds`: the database waits,
    by default `settings.db_bounds` (the API's are shorter: `Settings.api_db_bounds`).
    """
    settings = settings or Settings.from_env()
    bounds = bounds or settings.db_bounds
    engine = create_db_engine(
        settings.database_url,
        pool_size=pool_size,
        sqlite_synchronous=settings.sqlite_synchronous,
        bounds=bounds,
    )
    if run_migrations:
        migrate(engine)
    mapper = EventMapper(patient_data=patient_data_of(settings))
    cache = StreamCache()
    clock = clock or SystemClock()
    carrier = carrier or carrier_of(settings)
    retry = retry or RetryPolicy(settings.max_attempts, settings.retry_backoff_seconds)
    timeouts = saga_engine.Timeouts(
        settings.step_timeout_seconds,
        settings.saga_timeout_seconds,
        waits={
            order_saga.Step.VERIFY_PRESCRIPTION: settings.verification_timeout_seconds,
            order_saga.Step.AWAIT_PICKUP: settings.pickup_timeout_seconds,
        },
    )
    REGISTRY.load(settings.saga_modules)

    # The job threads of this process commit their steps in groups (1: each on its own).
    group = (
        GroupCommitter(engine, insert_events, settings.group_commit_max_steps)
        if settings.group_commit_max_steps > 1
        else None
    )
    # The steps that write stock take turns in a group of their own, under the stock
    # lock, where several processes may write at once (not SQLite: one writer, one group).
    # Or each commits on its own (FULFILLMENT_STOCK_COMMIT=step), locking only its SKUs.
    stock_lock = stock_lock_sql(backend_of(engine), bounds.holder_lock_timeout)
    stock_alone = stock_lock is not None and settings.stock_commit == "step"
    stock_group = (
        GroupCommitter(engine, insert_events, settings.group_commit_max_steps, lock_sql=stock_lock)
        if group is not None and stock_lock is not None and not stock_alone
        else None
    )

    idempotency_ttl = settings.idempotency_ttl_seconds

    def uow_factory(job: ClaimedJob | None) -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(
            engine,
            mapper,
            job,
            cache=cache,
            group=group,
            idempotency_ttl_seconds=idempotency_ttl,
            stock_group=stock_group,
            stock_alone=stock_alone,
        )

    deps = saga_engine.EngineDeps(
        clock,
        carrier,
        retry,
        timeouts,
        verification_required_for=settings.verification_required_for,
        min_shelf_life_days=settings.min_shelf_life_days,
    )
    bus = MessageBus(uow_factory, build_handlers(deps))
    queue = SqlAlchemyJobQueue(engine, max_claims=settings.max_job_failures, group=group)
    tracing = tracing or setup_tracing()
    # Every job runs with its log fields bound (and in a span when tracing is on).
    telemetry = JobTelemetry(
        uow_factory,
        tracing,
        cached_saga=lambda saga_id: cache.get(Saga.stream_id_for(saga_id)),
    )
    runner = JobRunner(
        bus,
        queue,
        retry,
        settings.max_job_failures,
        observer=telemetry,
        busy_delay_seconds=min(1.0, bounds.lock_timeout),
        clock=clock,
    )
    return App(
        settings,
        engine,
        mapper,
        cache,
        clock,
        carrier,
        retry,
        bus,
        queue,
        runner,
        tracing=tracing,
        group=group,
        stock_group=stock_group,
        stock_alone=stock_alone,
    )
