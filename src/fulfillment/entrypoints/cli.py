"""The `fulfillment` command line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import current_revision, migrate
from fulfillment.bootstrap import bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints import cli_ops
from fulfillment.entrypoints.signals import stop_on_signals
from fulfillment.observability.logging import configure_logging, level_from_env

app = typer.Typer(
    help="Fulfillment Saga: event-sourced order fulfillment for an online pharmacy.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


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
        console.print(f"[red]configuration error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc


def _logging(settings: Settings, *, json: bool | None = None, level: str = "INFO") -> None:
    """Structured logs (docs/observability.md): JSON unless on a terminal or told otherwise."""
    try:
        configure_logging(json, level_from_env(level), secrets=settings.api_secrets)
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the schema of FULFILLMENT_DATABASE_URL."""
    settings = _settings(serves=True)
    if not settings.phi_encryption:
        console.print(
            "[yellow]warning:[/yellow] FULFILLMENT_PHI_ENCRYPTION=off: new patient data "
            "is stored in plain text"
        )
    engine = create_nullpool_engine(settings.database_url)
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
) -> None:
    """Run a standalone worker process (and a projector) until SIGTERM or Ctrl-C."""
    from fulfillment.adapters.projections import ProjectorThread
    from fulfillment.entrypoints.worker import Worker

    settings = _settings(runs_sagas=True, serves=True)
    _logging(settings)
    fapp = bootstrap(settings, run_migrations=migrate_first, pool_size=concurrency + 3)
    worker = Worker(fapp, concurrency)
    projector = ProjectorThread(fapp) if with_projector else None
    stop_on_signals("worker", worker.stop)
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
    """
    import threading

    from fulfillment.adapters.projections import ProjectorThread

    settings = _settings()
    _logging(settings)
    fapp = bootstrap(settings, pool_size=2)
    projector = ProjectorThread(fapp, poll_interval=poll)
    stopped = threading.Event()
    stop_on_signals("projections", stopped.set)
    console.print(f"projector {projector.projector.name} following the log", highlight=False)
    projector.start()
    try:
        while not stopped.wait(0.5):
            if not projector.is_alive():
                raise typer.Exit(1)
    finally:
        projector.stop()
        fapp.close()


@app.command("demo")
def demo_command(
    orders: int = typer.Option(200, "--orders", "-n", min=1, help="Orders to place."),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="Worker concurrency."),
    seed: int = typer.Option(7, "--seed", help="Seed of the order mix (same seed, same mix)."),
    database: str = typer.Option("fulfillment-demo.db", "--database", help="SQLite file to use."),
    keep: bool = typer.Option(False, "--keep", help="Reuse the file instead of starting fresh."),
) -> None:
    """Run the whole flow on an embedded SQLite database, with progress and a summary."""
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
) -> None:
    """Serve the HTTP API (migrations applied first), with workers and the projector."""
    from fulfillment.entrypoints.api_server import TlsFiles, bind_host, run_server

    tls: TlsFiles | None = None
    if ssl_certfile is not None or ssl_keyfile is not None:
        try:
            tls = TlsFiles.checked(ssl_certfile, ssl_keyfile)
        except ValueError as exc:
            console.print(f"[red]configuration error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc
    settings = _settings(runs_sagas=True, serves=True)
    _logging(settings)
    bound = bind_host(host, settings)
    if not settings.api_keys:
        console.print(
            "FULFILLMENT_API_KEYS is not set: no authentication, "
            "so the server binds to 127.0.0.1 only" + (f" (not {host})" if bound != host else ""),
            highlight=False,
            soft_wrap=True,
        )
    run_server(
        settings,
        bound,
        port,
        workers,
        worker_concurrency,
        announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
        tls=tls,
    )


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
