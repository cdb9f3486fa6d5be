"""`fulfillment serve`: the API with in-process workers and the projector, under uvicorn.

`create_app()` builds the whole server from the environment (migrations applied);
`run_server()` serves until SIGTERM or Ctrl-C, then stops the workers gracefully: they
claim nothing new, and finish or hand back the jobs they hold.
"""

from __future__ import annotations

import logging
import signal
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class TlsFiles:
    """The certificate (chain) and private key that `fulfillment serve` serves HTTPS with."""

    certfile: str
    keyfile: str

    @classmethod
    def checked(cls, certfile: str | None, keyfile: str | None) -> TlsFiles:
        """Both files, readable, a certificate and its key; else ValueError saying which
        is wrong, in one line."""
        if certfile is None or keyfile is None:
            missing = "--ssl-keyfile" if keyfile is None else "--ssl-certfile"
            raise ValueError(f"--ssl-certfile and --ssl-keyfile go together: {missing} is missing")
        for option, name in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
            path = Path(name)
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
                if regular:  # (opening a pipe could wait for ever)
                    with path.open("rb"):
                        pass
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ValueError(f"{option} {name}: cannot be read ({reason})") from None
            if not regular:
                raise ValueError(f"{option} {name}: not a file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            # An encrypted key would make OpenSSL ask for its passphrase: none is given.
            context.load_cert_chain(certfile, keyfile, password=lambda: b"")
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"--ssl-certfile {certfile} and --ssl-keyfile {keyfile}: not a PEM "
                f"certificate and its unencrypted private key ({exc})"
            ) from None
        return cls(certfile, keyfile)


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
    tls: TlsFiles | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop workers gracefully and return.

    With `tls`, HTTPS only (uvicorn's TLS, with those files)."""
    import uvicorn

    scheme = "https" if tls is not None else "http"
    own = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in own:
        own = f"[{own}]"
    api = create_app(
        settings,
        workers=workers,
        worker_concurrency=worker_concurrency,
        own_url=f"{scheme}://{own}:{port}",
    )
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn logs through our structlog set-up (JSON in production)
        timeout_graceful_shutdown=10,
        lifespan="on",
        ssl_certfile=tls.certfile if tls is not None else None,
        ssl_keyfile=tls.keyfile if tls is not None else None,
    )
    server = uvicorn.Server(config)

    def _after_stop(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal (stop accepting, finish requests, stop the
        # workers in the lifespan) and then raises it again: end normally.
        pass

    signal.signal(signal.SIGTERM, _after_stop)
    signal.signal(signal.SIGINT, _after_stop)
    shown = f"[{host}]" if ":" in host else host
    announce(
        f"serving on {scheme}://{shown}:{port} with {workers} in-process worker(s) on "
        f"{settings.database_url.split('://', 1)[0]}; dashboard at {scheme}://{shown}:{port}/"
    )
    server.run()
    announce("server stopped")
