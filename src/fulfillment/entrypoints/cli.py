"""The `fulfillment` command line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from fulfillment.adapters import db_startup
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import current_revision, migrate
from fulfillment.bootstrap import bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints import cli_ops, cli_relay
from fulfillment.entrypoints.cli_help import Typer
from fulfillment.entrypoints.signals import stop_on_signals
from fulfillment.observability.logging import configure_logging, level_from_env

app = Typer(
    help="Fulfillment Saga: event-sourced order fulfillment for an online pharmacy.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


DEBUG_HELP = "Show an error's traceback (also FULFILLMENT_LOG_LEVEL=debug)."


def _debug(value: bool) -> bool:
    if value:
        ui.show_tracebacks()
    return value


#: `--debug` of the commands that start processes (`fulfillment --debug` for any other).
DEBUG = typer.Option(False, "--debug", callback=_debug, help=DEBUG_HELP)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", callback=ui.show_tracebacks, help=DEBUG_HELP),
) -> None:
    """Fulfillment Saga: event-sourced order fulfillment for an online pharmacy."""


def _settings(*, runs_sagas: bool = False, serves: bool = False) -> Settings:
    """The environment's settings; `runs_sagas`: also what a process running sagas needs;
    `serves` (`migrate`, `serve`, `worker`): a key that protects patient data."""
    try:
        settings = Settings.from_env()
        if runs_sagas:
            settings.check_pickups_confirmable()
        if serves:
            settings.check_patient_data_protected()
        return settings
    except ValueError as exc:
        raise ui.fail(f"configuration: {exc}", 2) from exc


def _logging(settings: Settings, *, json: bool | None = None, level: str = "INFO") -> None:
    """Structured logs (docs/observability.md): JSON unless on a terminal or told otherwise."""
    try:
        level = "DEBUG" if ui.debugging() else level_from_env(level)
        configure_logging(json, level, secrets=settings.api_secrets)
    except ValueError as exc:
        raise ui.fail(f"configuration: {exc}", 2) from exc


@app.command("migrate")
def migrate_command(
    create_database: bool = typer.Option(
        False,
        "--create-database",
        help="First create the PostgreSQL or MariaDB database if it does not exist.",
    ),
    debug: bool = DEBUG,
) -> None:
    """Create or upgrade the schema of FULFILLMENT_DATABASE_URL.

    Examples:
    $ fulfillment migrate
    $ fulfillment migrate --create-database
    """
    settings = _settings(serves=True)
    if not settings.phi_encryption:
        console.print(
            "[yellow]warning:[/yellow] FULFILLMENT_PHI_ENCRYPTION=off: new patient data "
            "is stored in plain text"
        )
    url = settings.database_url
    with ui.database_errors(url):
        if create_database and db_startup.create_database(url):
            ui.console.print(
                f"created database {make_url(url).database} on {db_startup.masked_url(url)}"
            )
        engine = create_nullpool_engine(url)
        try:
            migrate(engine)
            revision = current_revision(engine)
        finally:
            engine.dispose()
    console.print(f"schema at revision [bold]{revision}[/bold] on {engine.url.render_as_string()}")


@app.command("worker")
def worker_command(
    concurrency: int = typer.Option(
        8, "--concurrency", "-c", min=1, help="Sagas in flight at once."
    ),
    migrate_first: bool = typer.Option(
        True, "--migrate/--no-migrate", help="Apply migrations first."
    ),
    with_projector: bool = typer.Option(
        True,
        "--projector/--no-projector",
        help="Also keep the read models (or leave them to `fulfillment projections run`).",
    ),
    debug: bool = DEBUG,
) -> None:
    """Run a standalone worker process (and a projector) until SIGTERM or Ctrl-C.

    A database that is down is waited for (each attempt logged), and migrated first.

    Examples:
    $ fulfillment worker --concurrency 32
    $ fulfillment worker --no-projector
    """
    from fulfillment.adapters.projections import ProjectorThread
    from fulfillment.entrypoints.worker import Worker

    settings = _settings(runs_sagas=True, serves=True)
    _logging(settings)
    url = settings.database_url
    fapp = bootstrap(settings, pool_size=concurrency + 3)
    try:
        worker = Worker(fapp, concurrency)
        stop_on_signals("worker", worker.stop)
        attempt = db_startup.reach(fapp.engine, url, migrate_schema=migrate_first)
        with ui.database_errors(url):
            if not db_startup.wait_for_database(attempt, url, worker.stop_event):
                console.print("worker stopped before the database answered", highlight=False)
                return
        projector = ProjectorThread(fapp) if with_projector else None
        console.print(
            f"worker {worker.worker_id} running with concurrency {concurrency}", highlight=False
        )
        if projector is not None:
            projector.start()
        try:
            worker.run()
        finally:
            if projector is not None:
                projector.stop()
    finally:
        fapp.close()
    console.print(f"worker stopped after {worker.processed} jobs", highlight=False)


@cli_ops.projections_app.command("run")
def projections_run(
    poll: float = typer.Option(
        0.1, "--poll", min=0.01, help="Seconds between looks at the log once caught up."
    ),
) -> None:
    """Follow the event log into the read models until SIGTERM or Ctrl-C.

    The projector as a process of its own, for workers started with --no-projector.

    Example:
    $ fulfillment projections run --poll 0.5
    """
    import threading

    from fulfillment.adapters.projections import ProjectorThread

    settings = _settings()
    _logging(settings)
    url = settings.database_url
    fapp = bootstrap(settings, pool_size=2)
    try:
        projector = ProjectorThread(fapp, poll_interval=poll)
        stopped = threading.Event()
        stop_on_signals("projections", stopped.set)
        attempt = db_startup.reach(fapp.engine, url, migrate_schema=False)
        with ui.database_errors(url):
            if not db_startup.wait_for_database(attempt, url, stopped):
                return
        console.print(f"projector {projector.projector.name} following the log", highlight=False)
        projector.start()
        try:
            while not stopped.wait(0.5):
                if not projector.is_alive():
                    raise typer.Exit(1)
        finally:
            projector.stop()
    finally:
        fapp.close()


@app.command("demo")
def demo_command(
    orders: int = typer.Option(200, "--orders", "-n", min=1, help="Orders to place."),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="Worker concurrency."),
    seed: int = typer.Option(7, "--seed", help="Seed of the order mix (same seed, same mix)."),
    database: str = typer.Option("fulfillment-demo.db", "--database", help="SQLite file to use."),
    keep: bool = typer.Option(False, "--keep", help="Reuse the file instead of starting fresh."),
) -> None:
    """Run the whole flow on an embedded SQLite database, with progress and a summary.

    Examples:
    $ fulfillment demo
    $ fulfillment demo --orders 20 --database /tmp/demo.db
    """
    from pathlib import Path

    from fulfillment.entrypoints.demo import DemoOptions, run_demo

    options = DemoOptions(orders, concurrency, seed, Path(database), keep)
    settings = _settings()
    # People watch the demo: readable lines, and only what needs attention.
    _logging(settings, json=False, level="WARNING")
    raise typer.Exit(run_demo(options, console, settings))


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (keys required)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", "-w", min=0, help="In-process workers (0: API only)."
    ),
    worker_concurrency: int = typer.Option(
        4, "--worker-concurrency", min=1, help="Sagas in flight per in-process worker."
    ),
    ssl_certfile: str | None = typer.Option(
        None, "--ssl-certfile", help="Serve HTTPS with this PEM certificate (chain)."
    ),
    ssl_keyfile: str | None = typer.Option(
        None, "--ssl-keyfile", help="The certificate's PEM private key (unencrypted)."
    ),
    debug: bool = DEBUG,
) -> None:
    """Serve the HTTP API (migrations applied first), with workers and the projector.

    A database that is down is waited for (GET /health answers 503 meanwhile).

    Examples:
    $ fulfillment serve --port 8000 --workers 2
    $ fulfillment serve --host 0.0.0.0 --ssl-certfile c.pem --ssl-keyfile k.pem
    """
    from fulfillment.entrypoints.api_server import CannotListen, TlsFiles, bind_host, run_server

    tls: TlsFiles | None = None
    if ssl_certfile is not None or ssl_keyfile is not None:
        try:
            tls = TlsFiles.checked(ssl_certfile, ssl_keyfile)
        except ValueError as exc:
            raise ui.fail(f"configuration: {exc}", 2) from exc
    settings = _settings(runs_sagas=True, serves=True)
    _logging(settings)
    bound = bind_host(host, settings)
    # Said with "serving on ...": a server that cannot start says only why.
    notices: list[str] = []
    if not settings.api_keys:
        notices.append(
            "FULFILLMENT_API_KEYS is not set: no authentication, "
            "so the server binds to 127.0.0.1 only" + (f" (not {host})" if bound != host else "")
        )

    def announce(line: str) -> None:
        while notices:
            console.print(notices.pop(0), highlight=False, soft_wrap=True)
        console.print(line, highlight=False, soft_wrap=True)

    with ui.database_errors(settings.database_url):
        try:
            run_server(
                settings, bound, port, workers, worker_concurrency, announce=announce, tls=tls
            )
        except CannotListen as exc:
            raise ui.fail(str(exc)) from exc


# The event relay to a message broker (entrypoints/cli_relay.py).
app.command("relay")(cli_relay.relay_command)

# Operator commands: orders, sagas, jobs, events, inventory, projections.
for _group, _name in cli_ops.GROUPS:
    app.add_typer(_group, name=_name)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
