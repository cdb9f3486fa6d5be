"""`fulfillment serve`: the API with in-process workers and the projector, under uvicorn.

`create_app()` builds the whole server from the environment (migrations applied);
`run_server()` serves until SIGTERM or Ctrl-C, then stops the workers gracefully: they
claim nothing new, and finish or hand back the jobs they hold.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from fastapi import FastAPI

from fulfillment.adapters.projections import Projector, ProjectorThread
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.simulated_tracking import http_post, simulator_for
from fulfillment.entrypoints.worker import Worker

log = logging.getLogger("fulfillment.api")


class _WorkerThread:
    """A `Worker` looping on a thread of its own."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except Exception:
            log.exception("in-process worker %s stopped with an error", self.worker.worker_id)

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self.worker.stop()

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join(self.worker.grace_seconds + 10)


class BackgroundServices:
    """In-process workers and the projector, each on a thread of its own."""

    def __init__(
        self, app: App, workers: int, worker_concurrency: int, own_url: str | None = None
    ) -> None:
        self.workers = [
            _WorkerThread(Worker(app, worker_concurrency), f"worker-{i}") for i in range(workers)
        ]
        poll = max(0.01, min(0.1, app.settings.poll_interval_seconds))
        self.projector = ProjectorThread(Projector(app.engine, app.mapper), poll_interval=poll)
        # The simulated carrier's tracking updates, to this server's own signed webhook.
        self.tracking = simulator_for(app, http_post(own_url)) if own_url else None

    def start(self) -> None:
        self.projector.start()
        for worker in self.workers:
            worker.start()
        if self.tracking is not None:
            self.tracking.start()

    def stop(self) -> None:
        """Workers claim nothing new and finish (or hand back) their jobs; then the projector."""
        if self.tracking is not None:
            self.tracking.stop()
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            worker.join()
        self.projector.stop()


def create_app(
    settings: Settings | None = None,
    *,
    workers: int = 1,
    worker_concurrency: int = 4,
    own_url: str | None = None,
) -> FastAPI:
    """The server `fulfillment serve` runs: migrated database, workers and projector
    (and, at `own_url`, the simulated carrier's tracking updates to its webhook)."""
    settings = settings or Settings.from_env()
    app = bootstrap(
        settings, run_migrations=True, pool_size=10 + workers * (worker_concurrency + 1)
    )
    services = BackgroundServices(app, workers, worker_concurrency, own_url)
    return create_api(app, services=services, close_app=True)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def bind_host(requested: str, settings: Settings) -> str:
    """Without API keys the server is reachable from this machine only."""
    if settings.api_keys or requested in LOOPBACK:
        return requested
    return "127.0.0.1"


def run_server(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    worker_concurrency: int = 4,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop workers gracefully and return."""
    import uvicorn

    own = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    api = create_app(
        settings,
        workers=workers,
        worker_concurrency=worker_concurrency,
        own_url=f"http://{own}:{port}",
    )
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn logs through our structlog set-up (JSON in production)
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    def _after_stop(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal (stop accepting, finish requests, stop the
        # workers in the lifespan) and then raises it again: end normally.
        pass

    signal.signal(signal.SIGTERM, _after_stop)
    signal.signal(signal.SIGINT, _after_stop)
    announce(
        f"serving on http://{host}:{port} with {workers} in-process worker(s) "
        f"on {settings.database_url.split('://', 1)[0]}; dashboard at http://{host}:{port}/"
    )
    server.run()
    announce("server stopped")
