"""`fulfillment relay`: publish every committed event to RabbitMQ or NATS JetStream
(adapters/relay.py; docs/operator-cli.md)."""

from __future__ import annotations

import asyncio
import logging
import threading

import typer

from fulfillment.adapters import relay as r
from fulfillment.entrypoints import cli_common as ui

BROKER_HELP = (
    "amqp://user:password@host:5672/vhost (RabbitMQ) or nats://host:4222 (NATS JetStream)."
)


def _debug(value: bool) -> bool:
    if value:
        ui.show_tracebacks()
    return value


def relay_command(
    broker: str = typer.Option(..., "--broker", "-b", metavar="URL", help=BROKER_HELP),
    name: str = typer.Option(
        r.DEFAULT_NAME,
        "--name",
        help="The relay's name: its checkpoint (relay:NAME) and lease, its metrics' label.",
    ),
    types: str | None = typer.Option(
        None,
        "--types",
        envvar="FULFILLMENT_RELAY_TYPES",
        metavar="T1,T2",
        help="Publish only these event types (the checkpoint moves past the others).",
    ),
    include_phi: bool = typer.Option(
        False,
        "--include-phi",
        help="Include patient data, opened (needs FULFILLMENT_MASTER_KEY); left out otherwise.",
    ),
    lease_seconds: float = typer.Option(
        r.DEFAULT_LEASE_SECONDS,
        "--lease-seconds",
        min=1.0,
        help="How long a relay that vanished holds its lease (database clock).",
    ),
    batch: int = typer.Option(
        r.DEFAULT_BATCH, "--batch", min=1, max=10_000, help="Events per confirmed batch."
    ),
    poll: float = typer.Option(
        r.DEFAULT_POLL_SECONDS,
        "--poll",
        min=0.01,
        help="Seconds between looks at the log once caught up.",
    ),
    debug: bool = typer.Option(False, "--debug", callback=_debug, help="Show tracebacks."),
) -> None:
    """Publish every committed event, in position order, to a broker, until SIGTERM.

    At least once: a batch is checkpointed only once the broker confirmed it, and
    each message's id is its event's position. Relays of the same name take turns
    (a lease): run two for a standby.

    Examples:
    $ fulfillment relay --broker amqp://guest:guest@127.0.0.1:5672/
    $ fulfillment relay --broker nats://127.0.0.1:4222 --name audit --types OrderCreated
    """
    from fulfillment.adapters import db_startup
    from fulfillment.adapters.db import create_db_engine
    from fulfillment.adapters.mapper import EventMapper
    from fulfillment.bootstrap import patient_data_of
    from fulfillment.domain.events import EVENT_TYPES
    from fulfillment.domain.saga_definition import REGISTRY
    from fulfillment.entrypoints import cli
    from fulfillment.entrypoints.signals import stop_on_signals

    try:
        r.broker_kind(broker)
    except ValueError as exc:
        raise ui.fail(str(exc), 2) from exc
    if not name.strip() or len(r.checkpoint_name(name)) > 100:
        raise ui.fail("--name: 1 to 94 characters", 2)
    settings = cli._settings()
    REGISTRY.load(settings.saga_modules)
    REGISTRY.all()  # the built-in sagas' events are known too
    try:
        only = r.parse_types(types, EVENT_TYPES)
    except ValueError as exc:
        raise ui.fail(f"--types: {exc}", 2) from exc
    url = settings.database_url
    if include_phi and settings.master_keys is None and not url.startswith("sqlite"):
        raise ui.fail(
            "configuration: --include-phi needs FULFILLMENT_MASTER_KEY (the master key "
            "the patient data was written with)",
            2,
        )
    cli._logging(settings)
    # The relay says in one line when a broker goes and comes back; the libraries' own
    # lines (a traceback per lost connection) only with --debug.
    for library in ("pika", "nats"):
        logging.getLogger(library).setLevel(logging.DEBUG if ui.debugging() else logging.CRITICAL)
    # Without --include-phi nothing is opened: the mapper has no key at all.
    mapper = EventMapper(patient_data=patient_data_of(settings) if include_phi else None)
    engine = create_db_engine(
        url, pool_size=2, sqlite_synchronous=settings.sqlite_synchronous, bounds=settings.db_bounds
    )
    publisher = r.publisher_for(broker, name)
    relay = r.Relay(
        engine,
        mapper,
        publisher,
        name=name,
        types=only,
        include_phi=include_phi,
        lease_seconds=lease_seconds,
        batch_size=batch,
        poll_seconds=poll,
    )
    stopped = threading.Event()
    loop: asyncio.AbstractEventLoop | None = None

    def stop() -> None:
        stopped.set()
        if loop is not None:
            loop.call_soon_threadsafe(relay.stop)

    stop_on_signals("relay", stop)
    try:
        attempt = db_startup.reach(engine, url, migrate_schema=False)
        with ui.database_errors(url):
            if not db_startup.wait_for_database(attempt, url, stopped):
                return

        async def run() -> None:
            nonlocal loop
            loop = asyncio.get_running_loop()
            if stopped.is_set():
                return
            await relay.run()

        shown = "all types" if only is None else ", ".join(sorted(only))
        ui.console.print(
            f"relay {name} publishing to {publisher.description} ({shown}; patient data "
            f"{'included' if include_phi else 'left out'})",
            soft_wrap=True,
        )
        with ui.database_errors(url):
            asyncio.run(run())
    finally:
        engine.dispose()
    ui.console.print(f"relay {name} stopped after {relay.published} events published")
