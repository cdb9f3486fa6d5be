"""A small carrier API for the tests, run as a process of its own: what the HTTP carrier
adapter (src/fulfillment/adapters/http_carrier.py) talks to, per docs/carriers.md.

    python tests/carrier_server.py --port 0 --token TOKEN [--countries US,GB] [--pickup-later]

It prints `carrier listening on http://127.0.0.1:PORT` as its first line of output (port
0: one the system picks). It keeps its bookings in memory, by idempotency key: a replayed
key gets the first answer again (`Idempotent-Replayed: true`), so it books once whatever
the number of requests; it counts bookings and requests. It refuses destinations outside
`--countries` (`unsupported_destination`) and requests without the bearer `--token` (401).

Control (no token needed; tests only):

* `POST /_control` `{"mode": "ok" | "timeout" | "500" | "429" | "reject" | "garbage",
  "times": n, "retry_after": s, "seconds": s, "reason": code, "key": k}` makes the next
  `times` calls to `/shipments...` (those with the Idempotency-Key `key`, if given) fail
  that way: `timeout` handles (records) the call, then answers only after `seconds`
  (default 10); `500` and `429` (with `Retry-After: retry_after`) answer at once and
  record nothing; `reject` refuses with 422 and the error code `reason`; `garbage`
  answers 200 with a body the contract does not describe. `ok` clears the faults. The
  same body may also set `confirms_pickup_later` (what new bookings answer),
  `webhook_url` and `webhook_secret`.
* `GET /_control`: the counts and the shipments (with the addresses they were sent).
* `POST /_control/dispatch` `{"tracking_number": ..., "statuses": [...]}`: sends each
  status as a signed tracking update (`Carrier-Signature`, docs/api.md) to the webhook,
  retrying each until it is accepted (2xx) for up to 10 s; answers the statuses it got.

`CarrierServer.start(...)` runs it from a test and drives the control endpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CARRIER_NAME = "test-carrier"
ADDRESS_FIELDS = ("name", "line1", "city", "postal_code", "country")


@dataclass
class Fault:
    mode: str
    times: int
    retry_after: float | None = None
    seconds: float = 10.0
    reason: str = "carrier_rejected"
    key: str | None = None  # only calls with this Idempotency-Key; None: any


@dataclass
class Shipment:
    id: str
    tracking_number: str
    address: dict[str, Any]
    lines: list[dict[str, Any]]
    confirms_pickup_later: bool
    cancelled: bool = False


@dataclass
class State:
    token: str | None
    countries: frozenset[str]
    confirms_pickup_later: bool
    webhook_url: str | None = None
    webhook_secret: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    #: Idempotency key -> (request digest, HTTP status, answer) of its first request.
    answers: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    shipments: dict[str, Shipment] = field(default_factory=dict)  # by tracking number
    booking_requests: int = 0
    cancel_requests: int = 0

    def next_fault(self, key: str) -> Fault | None:
        """The first fault set for a call with this key, counted down."""
        with self.lock:
            fault = next((f for f in self.faults if f.key in (None, key)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            return fault

    def stats(self) -> dict[str, Any]:
        with self.lock:
            shipments = list(self.shipments.values())
            return {
                "bookings": len(shipments),
                "booking_requests": self.booking_requests,
                "cancels": sum(s.cancelled for s in shipments),
                "cancel_requests": self.cancel_requests,
                "keys": {k: a[2].get("tracking_number") for k, a in self.answers.items()},
                "shipments": [s.__dict__ for s in shipments],
            }


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """`Carrier-Signature` as docs/api.md defines it (written here again, as a carrier would)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def _booking_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or set(body) != {"address", "lines"}:
        return "the body must be an object with exactly 'address' and 'lines'"
    address, lines = body["address"], body["lines"]
    if not isinstance(address, dict) or set(address) != set(ADDRESS_FIELDS):
        return f"'address' must have exactly {', '.join(ADDRESS_FIELDS)}"
    if not all(isinstance(address[f], str) and address[f] for f in ADDRESS_FIELDS):
        return "every field of 'address' must be a non-empty string"
    if not isinstance(lines, list) or not lines:
        return "'lines' must be a non-empty list"
    for line in lines:
        if not (
            isinstance(line, dict)
            and set(line) == {"sku", "quantity"}
            and isinstance(line["sku"], str)
            and isinstance(line["quantity"], int)
            and line["quantity"] > 0
        ):
            return "each line must be {'sku': str, 'quantity': int > 0}"
    return None


class Handler(BaseHTTPRequestHandler):
    server: CarrierHTTPServer
    protocol_version = "HTTP/1.1"

    # --- plumbing ---------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"carrier: {self.command} {self.path} {format % args}\n")

    def _read(self) -> tuple[bytes, Any]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            return raw, json.loads(raw or b"null")
        except ValueError:
            return raw, None

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a timeout)

    @property
    def state(self) -> State:
        return self.server.state

    # --- routes -----------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path == "/_control":
            self._send(200, self.state.stats())
        else:
            self._send(404, error("not_found", "no such route"))

    def do_POST(self) -> None:
        raw, body = self._read()
        if self.path == "/_control":
            self._control(body)
        elif self.path == "/_control/dispatch":
            self._dispatch(body)
        elif self.path == "/shipments":
            self._carrier_call(raw, body, booking=True)
        elif self.path.startswith("/shipments/") and self.path.endswith("/cancel"):
            self._carrier_call(raw, body, booking=False)
        else:
            self._send(404, error("not_found", "no such route"))

    def _control(self, body: Any) -> None:
        state = self.state
        if not isinstance(body, dict):
            self._send(400, error("invalid_request", "a JSON object"))
            return
        with state.lock:
            if "mode" in body:
                if body["mode"] == "ok":
                    state.faults.clear()
                else:
                    state.faults.append(
                        Fault(
                            str(body["mode"]),
                            int(body.get("times", 1)),
                            body.get("retry_after"),
                            float(body.get("seconds", 10.0)),
                            str(body.get("reason", "carrier_rejected")),
                            body.get("key"),
                        )
                    )
            if "confirms_pickup_later" in body:
                state.confirms_pickup_later = bool(body["confirms_pickup_later"])
            if "webhook_url" in body:
                state.webhook_url = body["webhook_url"]
            if "webhook_secret" in body:
                state.webhook_secret = body["webhook_secret"]
        self._send(200, {"ok": True})

    def _carrier_call(self, raw: bytes, body: Any, *, booking: bool) -> None:
        state = self.state
        with state.lock:
            if booking:
                state.booking_requests += 1
            else:
                state.cancel_requests += 1
        if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
            self._send(401, error("unauthorized", "a valid bearer token is required"))
            return
        key = self.headers.get("Idempotency-Key")
        if not key:
            self._send(400, error("idempotency_key_missing", "send an Idempotency-Key"))
            return
        fault = state.next_fault(key)
        if fault is not None and fault.mode in ("500", "429", "reject", "garbage"):
            self._fail(fault)
            return
        status, answer, headers = self._answer(key, raw, body, booking)
        if fault is not None and fault.mode == "timeout":
            time.sleep(fault.seconds)  # recorded; the answer comes too late (or never)
        self._send(status, answer, headers)

    def _fail(self, fault: Fault) -> None:
        if fault.mode == "500":
            self._send(500, error("internal", "the carrier is having a bad day"))
        elif fault.mode == "429":
            after = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after else {}
            self._send(429, error("rate_limited", "slow down"), after)
        elif fault.mode == "reject":
            self._send(422, error(fault.reason, "refused, for the address 1 Secret Lane"))
        else:  # garbage: the contract's fields are missing; the body echoes a street
            self._send(200, {"shipment": {"street": "1 Secret Lane"}})

    def _answer(
        self, key: str, raw: bytes, body: Any, booking: bool
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The (first) answer to the call with this key, made once under the lock."""
        state = self.state
        digest = hashlib.sha256(self.path.encode() + b"\n" + raw).hexdigest()
        with state.lock:
            first = state.answers.get(key)
            if first is not None:
                if first[0] != digest:
                    reused = error("idempotency_key_reused", "another request had this key")
                    return 422, reused, {}
                return first[1], first[2], {"Idempotent-Replayed": "true"}
            status, answer = self._book(body) if booking else self._cancel()
            if status < 500:
                state.answers[key] = (digest, status, answer)
            return status, answer, {}

    def _book(self, body: Any) -> tuple[int, dict[str, Any]]:
        state = self.state  # (the lock is held)
        problem = _booking_problem(body)
        if problem is not None:
            return 400, error("invalid_request", problem)
        if body["address"]["country"] not in state.countries:
            return 422, error("unsupported_destination", "we do not go there")
        number = "TC" + uuid.uuid4().hex[:12].upper()
        shipment = Shipment(
            f"shp_{len(state.shipments) + 1}",
            number,
            body["address"],
            body["lines"],
            state.confirms_pickup_later,
        )
        state.shipments[number] = shipment
        return 201, {
            "id": shipment.id,
            "tracking_number": number,
            "carrier": CARRIER_NAME,
            "confirms_pickup_later": shipment.confirms_pickup_later,
        }

    def _cancel(self) -> tuple[int, dict[str, Any]]:
        reference = self.path.removeprefix("/shipments/").removesuffix("/cancel")
        state = self.state  # (the lock is held)
        shipment = state.shipments.get(reference) or next(
            (s for s in state.shipments.values() if s.id == reference), None
        )
        if shipment is None:
            return 404, error("unknown_shipment", "no such shipment")
        shipment.cancelled = True
        return 200, {
            "id": shipment.id,
            "tracking_number": shipment.tracking_number,
            "status": "cancelled",
        }

    def _dispatch(self, body: Any) -> None:
        state = self.state
        if state.webhook_url is None or state.webhook_secret is None:
            self._send(409, error("no_webhook", "set webhook_url and webhook_secret first"))
            return
        number = body["tracking_number"]
        got = []
        for status in body["statuses"]:
            update = {
                "event_id": f"{number}-{status}-{uuid.uuid4().hex[:6]}",
                "tracking_number": number,
                "status": status,
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                "location": "Test Depot",
            }
            got.append(
                _deliver(state.webhook_url, state.webhook_secret, json.dumps(update).encode())
            )
        self._send(200, {"answers": got})


def _deliver(url: str, secret: str, body: bytes, patience: float = 10.0) -> int:
    """Post one signed update until it is accepted (a carrier retries its webhooks); the
    last HTTP status (0: never reached)."""
    deadline = time.monotonic() + patience
    status = 0
    while True:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Carrier-Signature": sign(secret, body, int(time.time())),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        if 200 <= status < 300 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


class CarrierHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: State) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    parser.add_argument("--countries", default="US,CA,GB,DE,FR,NL")
    parser.add_argument("--pickup-later", action="store_true", help="confirms_pickup_later")
    args = parser.parse_args(argv)
    state = State(
        token=args.token,
        countries=frozenset(c.strip().upper() for c in args.countries.split(",") if c.strip()),
        confirms_pickup_later=args.pickup_later,
    )
    server = CarrierHTTPServer(args.port, state)
    print(f"carrier listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


# --- from a test --------------------------------------------------------------------------


@dataclass
class CarrierServer:
    """The carrier process a test started: its URL and control endpoints."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def control(self, **settings: Any) -> None:
        """`POST /_control` (a fault, `confirms_pickup_later`, the webhook)."""
        self._call("POST", "/_control", settings)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_control")
        return result

    def dispatch(self, tracking_number: str, *statuses: str) -> list[int]:
        """Send these tracking updates to the webhook; the HTTP status of each."""
        body = {"tracking_number": tracking_number, "statuses": list(statuses)}
        answers: list[int] = self._call("POST", "/_control/dispatch", body)["answers"]
        return answers

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @classmethod
    @contextmanager
    def start(
        cls,
        log_dir: Path,
        *,
        token: str = "carrier-token-for-the-tests",
        countries: str = "US,CA,GB,DE,FR,NL",
        pickup_later: bool = False,
    ) -> Iterator[CarrierServer]:
        """Run the carrier on a port of its choosing until the block ends."""
        log_path = log_dir / f"carrier-{os.getpid()}-{time.monotonic_ns()}.log"
        command = [sys.executable, str(Path(__file__)), "--port", "0", "--token", token]
        command += ["--countries", countries] + (["--pickup-later"] if pickup_later else [])
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        try:
            assert process.stdout is not None
            line = process.stdout.readline().decode().strip()
            if not line.startswith("carrier listening on "):
                raise AssertionError(f"the carrier did not start: {line!r}\n{log_path.read_text()}")
            yield cls(line.removeprefix("carrier listening on "), token, process, log_path)
        finally:
            process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


if __name__ == "__main__":
    main()
