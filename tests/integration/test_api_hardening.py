"""The HTTP API's outermost layers: `Cache-Control: no-store` and `nosniff` on every
response, and, without API keys, only requests to a loopback `Host` (421 otherwise:
DNS rebinding). Over HTTP, in-process (TestClient); the database plays no part, so
SQLite only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from conftest import LOOPBACK
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.api_headers import is_loopback_host

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

KEYS = ("shop:client:secret-shop", "watcher:viewer:secret-watcher", "root:admin:secret-root")
SHOP = {"Authorization": "Bearer secret-shop"}
WATCHER = {"Authorization": "Bearer secret-watcher"}
ROOT = {"Authorization": "Bearer secret-root"}


def assert_hardened(response: httpx.Response) -> None:
    assert response.headers.get_list("cache-control") == ["no-store"], response.headers
    assert response.headers.get_list("x-content-type-options") == ["nosniff"], response.headers


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def with_a_failing_route(api: FastAPI) -> FastAPI:
    @api.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    return api


@pytest.fixture
def open_api(app: App) -> Iterator[TestClient]:
    """No keys: the loopback-only API."""
    api = with_a_failing_route(create_api(app))
    with TestClient(api, base_url=LOOPBACK, raise_server_exceptions=False) as http:
        yield http


@pytest.fixture
def keyed_api(make_app: Callable[..., App]) -> Iterator[TestClient]:
    api = with_a_failing_route(create_api(make_app(api_keys=KEYS)))
    # TestClient's own host (`testserver`): with keys any Host is fine.
    with TestClient(api, raise_server_exceptions=False) as http:
        yield http


# --- headers ---------------------------------------------------------------------------


def test_every_answer_of_the_open_api_says_no_store_and_nosniff(open_api: TestClient) -> None:
    answers = {
        "health": open_api.get("/health"),
        "metrics": open_api.get("/metrics"),
        "dashboard page": open_api.get("/"),
        "dashboard script": open_api.get("/dashboard/app.js"),
        "dashboard data": open_api.get("/api/dashboard/overview"),
        "a listing": open_api.get("/orders"),
        "the schema": open_api.get("/openapi.json"),
        "404": open_api.get("/no/such/thing"),
        "405": open_api.delete("/orders"),
        "422": open_api.post("/orders", json={"customer_id": ""}),
        "413": open_api.post("/orders", content=b"x" * (65 * 1024)),
        "500": open_api.get("/boom"),
        "421": open_api.get("/health", headers={"Host": "evil.example"}),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "health": 200,
        "metrics": 200,
        "dashboard page": 200,
        "dashboard script": 200,
        "dashboard data": 200,
        "a listing": 200,
        "the schema": 200,
        "404": 404,
        "405": 405,
        "422": 422,
        "413": 413,
        "500": 500,
        "421": 421,
    }
    for name, answer in answers.items():
        try:
            assert_hardened(answer)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_the_guards_answers_say_no_store_and_nosniff_too(keyed_api: TestClient) -> None:
    answers = {
        "401": keyed_api.get("/orders"),
        "403": keyed_api.get("/events", headers=SHOP),
        "200": keyed_api.get("/orders", headers=WATCHER),
        "open path": keyed_api.get("/health"),
        "500": keyed_api.get("/boom", headers=ROOT),
    }
    assert {name: a.status_code for name, a in answers.items()} == {
        "401": 401,
        "403": 403,
        "200": 200,
        "open path": 200,
        "500": 500,
    }
    for answer in answers.values():
        assert_hardened(answer)


# --- the loopback Host rule ------------------------------------------------------------

LOOPBACK_HOSTS = [
    "localhost",
    "LocalHost:8000",
    "127.0.0.1",
    "127.0.0.1:80",
    "127.1.2.3:65535",
    "[::1]",
    "[::1]:8000",
]
OTHER_HOSTS = [
    "testserver",
    "evil.example",
    "evil.example:8000",
    "127.0.0.1.evil.example",
    "localhost.evil.example",
    "128.0.0.1",
    "10.0.0.1:8000",
    "[::2]",
    "[::1",
    "::1",
    "127.0.0.1:",
    "127.0.0.1:80:80",
    "127.0.0.1:x",
    "127.1",
    "0x7f.0.0.1",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_without_keys_a_loopback_host_is_served(open_api: TestClient, host: str) -> None:
    assert is_loopback_host(host)
    assert open_api.get("/orders", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_without_keys_any_other_host_is_refused_with_421(open_api: TestClient, host: str) -> None:
    assert not is_loopback_host(host)
    answer = open_api.put(
        "/inventory/ASPIRIN/lots/L1",
        headers={"Host": host},
        json={"on_hand": 1, "expires_on": "2099-01-01"},
    )
    assert_error(answer, 421, "misdirected_request")
    message = answer.json()["error"]["message"]
    assert "loopback" in message and "FULFILLMENT_API_KEYS" in message
    # Refused before any route ran: nothing was changed.
    assert open_api.get("/inventory/ASPIRIN").status_code == 404


def test_the_default_host_of_testclient_is_refused_without_keys(app: App) -> None:
    with TestClient(create_api(app)) as http:  # http://testserver
        assert_error(http.get("/health"), 421, "misdirected_request")


def test_without_keys_a_request_without_a_host_is_refused(app: App) -> None:
    api = create_api(app)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "http",
        "path": "/health",
        "raw_path": b"/health",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    anyio.run(api, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 421
    assert (b"cache-control", b"no-store") in start["headers"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"misdirected_request" in body


@pytest.mark.parametrize("host", ["evil.example", "pharmacy.example.com:8443", "10.0.0.1"])
def test_with_keys_any_host_is_accepted(keyed_api: TestClient, host: str) -> None:
    assert keyed_api.get("/health", headers={"Host": host}).status_code == 200
    assert keyed_api.get("/orders", headers={"Host": host, **WATCHER}).status_code == 200
    assert_error(keyed_api.get("/orders", headers={"Host": host}), 401, "unauthorized")
