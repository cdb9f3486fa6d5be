"""The `fulfillment` command line."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import typer
from rich.console import Console

from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import current_revision, migrate
from fulfillment.bootstrap import bootstrap
from fulfillment.config import Settings

app = typer.Typer(
    help="Fulfillment Saga: event-sourced order fulfillment for an online pharmacy.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the schema of FULFILLMENT_DATABASE_URL."""
    settings = _settings()
    engine = create_nullpool_engine(settings.database_url)
    try:
        migrate(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    console.print(f"schema at revision [bold]{revision}[/bold] on {engine.url.render_as_string()}")


@app.command("worker")
def worker_command(
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, help="Sagas in flight at once."),
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate", help="Apply migrations first."),
) -> None:
    """Run a standalone worker process until SIGTERM or Ctrl-C."""
    from fulfillment.entrypoints.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    fapp = bootstrap(settings, run_migrations=migrate_first, pool_size=concurrency + 2)
    worker = Worker(fapp, concurrency)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("fulfillment.worker").info("signal %d: finishing in-flight jobs", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    console.print(f"worker {worker.worker_id} running with concurrency {concurrency}", highlight=False)
    try:
        worker.run()
    finally:
        fapp.close()
    console.print(f"worker stopped after {worker.processed} jobs", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
