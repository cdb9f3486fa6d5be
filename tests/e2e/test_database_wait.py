"""A worker or server started while its database is down waits for it.

The database "comes up" when a TCP forwarder starts listening on the port the process was
given and passes its connections on to the real server: until then every connection is
refused, as from a server that is not running. The process must log one line per attempt
(the URL's password masked) with a wait that doubles, answer `GET /health` with 503
meanwhile (`serve`), start its work once the database answers, and stop cleanly on SIGTERM
or Ctrl-C while it waits.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import TEST_MASTER_KEY
from sqlalchemy.engine import make_url

from .processes import fulfillment_command
from .server import TEST_ENV, free_port, poll

PASSWORD = "s3cret-pw"
WAITING = "waiting for the database: cannot connect to "


class Forwarder:
    """Listens on `port` once started and pipes each connection to `target`."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.listener = listener
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for sock in self.sockets:
            sock.close()


class Process:
    """A `fulfillment` command in the background, its output in a file."""

    def __init__(self, args: list[str], url: str, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
        env.update(TEST_ENV)
        env.update(
            FULFILLMENT_DATABASE_URL=url,
            FULFILLMENT_MASTER_KEY=TEST_MASTER_KEY,
            FULFILLMENT_LOG_FORMAT="json",
            COLUMNS="250",
        )
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*fulfillment_command(), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if out.count(text) >= count:
                return out
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{out}"
            time.sleep(0.1)
        raise AssertionError(f"no {count} x {text!r} within {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(
                f"still running {timeout}s after {sig}:\n{self.output()}"
            ) from None


@pytest.fixture
def down_database(fresh_database_url: str) -> Iterator[tuple[str, Forwarder]]:
    """The URL of a fresh database at a port that refuses connections until the
    forwarder starts (with a password, which the tests' servers do not check)."""
    real = make_url(fresh_database_url)
    port = free_port()
    forwarder = Forwarder(port, (real.host or "127.0.0.1", real.port or 0))
    password = PASSWORD if real.get_backend_name() == "postgresql" else None
    url = real.set(port=port, password=password).render_as_string(hide_password=False)
    yield url, forwarder
    forwarder.close()


def assert_waiting_lines(out: str, attempts: int) -> None:
    """One log line per attempt, password masked, the wait doubling from 0.5 s."""
    lines = [line for line in out.splitlines() if WAITING in line]
    assert len(lines) >= attempts, out
    assert PASSWORD not in out
    waits = [float(re.search(r"the next in ([\d.]+) s", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert waits[:3] == [0.5, 1.0, 2.0][: len(waits[:3])], lines
    assert all(wait <= 10.0 for wait in waits)
    assert all("connection refused" in line for line in lines)
    if "postgresql" in out:
        assert all(":***@" in line for line in lines), lines


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_a_worker_waits_for_its_database_then_migrates_and_runs(
    down_database: tuple[str, Forwarder], tmp_path: Path
) -> None:
    url, forwarder = down_database
    worker = Process(["worker", "--concurrency", "2"], url, tmp_path / "worker.log")
    try:
        out = worker.wait_for(WAITING, count=3)
        assert_waiting_lines(out, 3)
        assert "running with concurrency" not in out
        forwarder.start()
        out = worker.wait_for("running with concurrency 2", timeout=30)
        assert "Running upgrade" in out, "it migrated the database once it answered"
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
    assert "Traceback" not in worker.output()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_serve_answers_503_until_its_database_answers(
    down_database: tuple[str, Forwarder], tmp_path: Path
) -> None:
    url, forwarder = down_database
    port = free_port()
    server = Process(["serve", "--port", str(port)], url, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        out = server.wait_for("waiting for the database (GET /health answers 503 until then)")
        assert f"serving on {base}" in out
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503, health.text
        assert health.json()["error"]["code"] == "unavailable"
        assert_waiting_lines(server.wait_for(WAITING, count=2), 2)
        forwarder.start()
        health = poll(
            lambda: httpx.get(f"{base}/health", timeout=10),
            lambda r: r.status_code == 200,
            timeout=30,
        )
        assert health.status_code == 200, health.text
        assert httpx.get(f"{base}/orders", timeout=10).status_code == 200
        assert "the database answers: the server is ready" in server.output()
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_signal_while_waiting_stops_the_process_cleanly(
    tmp_path: Path, command: str, sig: int
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/fulfillment"
    args = [command] if command == "worker" else [command, "--port", str(free_port())]
    process = Process(args, url, tmp_path / f"{command}.log")
    process.wait_for(WAITING)
    started = time.monotonic()
    code = process.stop(sig)
    out = process.output()
    assert code == 0, out
    assert time.monotonic() - started < 10, "it stopped while waiting, not after"
    assert "Traceback" not in out
    last = (
        "worker stopped before the database answered" if command == "worker" else "server stopped"
    )
    assert out.rstrip().endswith(last), out


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_database_missing_once_the_server_answers_stops_the_process(
    down_database: tuple[str, Forwarder], tmp_path: Path, command: str
) -> None:
    url, forwarder = down_database
    missing = make_url(url).set(database=f"{make_url(url).database}_gone")
    args = [command] if command == "worker" else [command, "--port", str(free_port())]
    process = Process(args, missing.render_as_string(hide_password=False), tmp_path / "log")
    process.wait_for(WAITING)
    forwarder.start()
    try:
        code = process.process.wait(30)
    finally:
        process.stop()
    out = process.output()
    assert code == 1, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("error: database: database "), out
    assert "does not exist" in last and "--create-database" in last
    assert "Traceback" not in out
