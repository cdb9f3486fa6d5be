"""`fulfillment serve`: the API with in-process workers and the projector, under uvicorn.

`create_app()` builds the whole server from the environment (migrations applied);
`run_server()` takes its port first (`listen`), then serves until SIGTERM or Ctrl-C, and
stops the workers gracefully: they claim nothing new, and finish or hand back the jobs
they hold. A database that is down at start is waited for: the server answers meanwhile
(`GET /health` with 503), and migrates and starts its workers once the database answers.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fastapi import FastAPI

from fulfillment.adapters.db_startup import DatabaseProblem, reach, try_once, wait_for_database
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
    """In-process workers and the projector, each on a thread of its own.

    While the App is not ready (`first_attempt` found its database down), `start` leaves
    them to a thread that waits for the database, migrates it and then starts them; a
    problem that waiting cannot solve (no such database, say) is logged and handed to
    `on_fatal`.
    """

    def __init__(
        self,
        app: App,
        workers: int,
        worker_concurrency: int,
        own_url: str | None = None,
        on_fatal: Callable[[DatabaseProblem], None] | None = None,
    ) -> None:
        self.app = app
        self.workers = [
            _WorkerThread(Worker(app, worker_concurrency), f"worker-{i}") for i in range(workers)
        ]
        poll = max(0.01, min(0.1, app.settings.poll_interval_seconds))
        self.projector = ProjectorThread(Projector(app.engine, app.mapper), poll_interval=poll)
        # The simulated carrier's tracking updates, to this server's own signed webhook.
        self.tracking = simulator_for(app, http_post(own_url)) if own_url else None
        self.on_fatal = on_fatal
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._starter: threading.Thread | None = None

    def start(self) -> None:
        if self.app.not_ready is None:
            self._start_now()
            return
        self._starter = threading.Thread(
            target=self._wait_then_start, name="database-wait", daemon=True
        )
        self._starter.start()

    def _start_now(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self.projector.start()
            for worker in self.workers:
                worker.start()
            if self.tracking is not None:
                self.tracking.start()
            self._running = True

    def _wait_then_start(self) -> None:
        url = self.app.settings.database_url
        try:
            ready = wait_for_database(
                reach(self.app.engine, url, migrate_schema=True), url, self._stopping
            )
        except Exception as exc:
            problem = exc if isinstance(exc, DatabaseProblem) else DatabaseProblem(repr(exc))
            self.app.not_ready = str(problem)
            log.error("%s", problem, exc_info=None if exc is problem else exc)
            if self.on_fatal is not None:
                self.on_fatal(problem)
            return
        if ready:
            self._start_now()
            self.app.not_ready = None
            log.info("the database answers: the server is ready")

    def stop(self) -> None:
        """Workers claim nothing new and finish (or hand back) their jobs; then the projector."""
        self._stopping.set()
        if self._starter is not None:
            self._starter.join()
        with self._lock:
            if not self._running:
                return
        if self.tracking is not None:
            self.tracking.stop()
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            worker.join()
        self.projector.stop()


def first_attempt(app: App) -> None:
    """Reach and migrate the App's database once, before serving. When it is down or
    starting, `app.not_ready` says so (the server then waits for it while it answers);
    any other problem is raised as DatabaseProblem: waiting would not help."""
    url = app.settings.database_url
    problem = try_once(reach(app.engine, url, migrate_schema=True), url)
    if problem is not None:
        app.not_ready = f"waiting for the database: {problem}"


def create_app(
    settings: Settings | None = None,
    *,
    workers: int = 1,
    worker_concurrency: int = 4,
    own_url: str | None = None,
    on_fatal: Callable[[DatabaseProblem], None] | None = None,
) -> FastAPI:
    """The server `fulfillment serve` runs: migrated database, workers and projector
    (and, at `own_url`, the simulated carrier's tracking updates to its webhook). Its
    requests wait for a lock at most FULFILLMENT_API_LOCK_TIMEOUT_SECONDS
    (`Settings.api_db_bounds`; the in-process workers share the engine, and the bound)."""
    settings = settings or Settings.from_env()
    app = bootstrap(
        settings,
        pool_size=10 + workers * (worker_concurrency + 1),
        bounds=settings.api_db_bounds,
    )
    try:
        first_attempt(app)
    except BaseException:
        app.close()
        raise
    services = BackgroundServices(app, workers, worker_concurrency, own_url, on_fatal)
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


class CannotListen(Exception):
    """The server cannot have its address (in one line: which, and why)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` and listening (`port` 0: one the kernel picks), or
    CannotListen saying why: taken before the server says it serves, and handed to it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"port {port} on {host} is already in use: {exc.strerror}; stop what "
                "listens there, or choose another --port"
            ) from None
        raise CannotListen(f"cannot listen on port {port} on {host}: {exc.strerror}") from None
    return sock


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

    The port is taken first: CannotListen, before anything is announced, when it cannot
    be had. A database that cannot be used raises DatabaseProblem, at once, or after the
    server stops when that shows only once the server it waited for answers. With `tls`,
    HTTPS only (uvicorn's TLS, with those files)."""
    import uvicorn

    sock = listen(host, port)
    try:
        port = int(sock.getsockname()[1])
        scheme = "https" if tls is not None else "http"
        own = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in own:
            own = f"[{own}]"
        # Until uvicorn takes the signals over, SIGTERM stops start-up as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        fatal: list[DatabaseProblem] = []
        servers: list[uvicorn.Server] = []

        def on_fatal(problem: DatabaseProblem) -> None:
            fatal.append(problem)
            for running in servers:
                running.should_exit = True

        api = create_app(
            settings,
            workers=workers,
            worker_concurrency=worker_concurrency,
            own_url=f"{scheme}://{own}:{port}",
            on_fatal=on_fatal,
        )
        waiting = api.state.fulfillment.not_ready is not None
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
        servers.append(server)

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
            + ("; waiting for the database (GET /health answers 503 until then)" if waiting else "")
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
    if fatal:
        raise fatal[0]
    announce("server stopped")
