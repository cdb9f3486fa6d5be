"""A real `fulfillment serve` process for end-to-end tests.

`start_server(database_url)` starts the CLI on a free port against the given database
(the server applies the migrations itself), waits until `/health` answers, and stops it
with SIGTERM on exit. Its output goes to a log file that failing tests print. With
`--ssl-certfile` among its `args` it is reached over https (`verify`: what its
certificate is checked with).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import TEST_MASTER_KEY

#: Fast retries and polling, no carrier latency: a saga finishes in well under a second.
TEST_ENV = {
    "FULFILLMENT_RETRY_BACKOFF_SECONDS": "0.01",
    "FULFILLMENT_POLL_INTERVAL_SECONDS": "0.01",
    "FULFILLMENT_CARRIER_LATENCY_MS": "0",
    "FULFILLMENT_CARRIER_FAILURE_RATE": "0",
    "FULFILLMENT_JOB_LEASE_SECONDS": "5",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server: its base URL, process and log."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server (with its bearer key, if it has one)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        kwargs.setdefault("verify", self.verify)
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"server ignored signal {sig}:\n{self.output()}") from None
        return int(self.process.returncode)


def _launch(
    database_url: str, port: int, env: Mapping[str, str], args: list[str], log_path: Path
) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    environ.update(TEST_ENV)
    environ.update(env)
    environ["FULFILLMENT_DATABASE_URL"] = database_url
    environ.setdefault("FULFILLMENT_MASTER_KEY", TEST_MASTER_KEY)  # the tests' Apps' key
    command = [sys.executable, "-m", "fulfillment.entrypoints.cli", "serve", "--port", str(port)]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*command, *args], env=environ, stdout=log, stderr=subprocess.STDOUT
        )


def _wait_healthy(server: Server, timeout: float) -> bool:
    """True once /health answers 200; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            health = httpx.get(f"{server.url}/health", timeout=2, verify=server.verify)
            if health.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not healthy within {timeout}s:\n{server.output()}")


@contextmanager
def start_server(
    database_url: str,
    *,
    env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    api_key: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 60,
    verify: ssl.SSLContext | bool = True,
) -> Iterator[Server]:
    """Run `fulfillment serve` on a free port until the block ends (then SIGTERM)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="fulfillment-serve-"))
    log_path = log_dir / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
    env = dict(env or {})
    if api_key is not None:
        env.setdefault("FULFILLMENT_API_KEYS", api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    scheme = "https" if "--ssl-certfile" in (args or []) else "http"
    for _attempt in range(3):  # another process may grab the free port first
        port = free_port()
        process = _launch(database_url, port, env, args or [], log_path)
        server = Server(f"{scheme}://127.0.0.1:{port}", process, log_path, headers, verify)
        if _wait_healthy(server, timeout):
            break
    else:
        raise AssertionError(f"server did not start:\n{server.output()}")
    try:
        yield server
    finally:
        server.stop()


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Call `fetch` until `done(result)`; the last result (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    result = fetch()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.05)
        result = fetch()
    return result
