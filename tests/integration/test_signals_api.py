"""`POST /sagas/{saga_id}/signals/{name}` over HTTP (the ASGI app in-process), on every
backend, with the approval saga of tests/approval_saga.py waiting for its decision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import approval_saga as appr
import pytest
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from saga_testkit import run_jobs

from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import create_api
from fulfillment.service_layer import commands as c

URL = "/sagas/{}/signals/{}"


def waiting_saga(app: App, saga_id: str = "s-1") -> str:
    app.bus.handle(c.StartSaga(saga_id, appr.NAME, {"amount": 10, "room": "b-1"}, version=1))
    run_jobs(app)  # hold_funds, book_room: then it waits (its timer is an hour away)
    return saga_id


def stream(app: App, saga_id: str) -> list[Any]:
    with app.uow() as uow:
        return uow.events.read_stream(f"saga-{saga_id}")


def job_kind(app: App, saga_id: str) -> str | None:
    row = app.queue.for_saga(saga_id)
    return row.kind if row is not None else None


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(create_api(app), base_url=LOOPBACK) as http:
        yield http


def test_a_signal_is_accepted_recorded_with_its_sender_and_moves_the_saga_on(
    app: App, client: TestClient
) -> None:
    saga_id = waiting_saga(app)

    answer = client.post(URL.format(saga_id, "approve"), json={"approver": "ann"})

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"saga_id": saga_id, "signal": "approve", "outcome": "continue"}
    received = stream(app, saga_id)[-1]
    assert received.type == "SagaSignalReceived"
    assert received.metadata["sender"] == "anonymous"  # no API keys configured
    assert received.data["payload"] == {"approver": "ann"}
    assert job_kind(app, saga_id) == "capture"
    run_jobs(app)
    assert stream(app, saga_id)[-1].type == "FundsCaptured"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "approver"),
        ({"approver": ""}, "approver"),
        ({"approver": "ann", "role": "boss"}, "role"),
        ({"approver": 7}, "approver"),
    ],
)
def test_a_body_that_does_not_match_the_signals_schema_is_422_with_its_fields(
    app: App, client: TestClient, body: dict[str, Any], field: str
) -> None:
    saga_id = waiting_saga(app)
    before = len(stream(app, saga_id))

    answer = client.post(URL.format(saga_id, "approve"), json=body)

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert ["body", field] in [d["loc"] for d in error["details"]]
    assert len(stream(app, saga_id)) == before
    assert job_kind(app, saga_id) == "await_approval"


def test_a_signal_the_saga_does_not_wait_for_now_is_409_and_changes_nothing(
    app: App, client: TestClient
) -> None:
    app.bus.handle(c.StartSaga("s-busy", appr.NAME, {"amount": 10, "room": "b-1"}, version=1))
    before = len(stream(app, "s-busy"))

    answer = client.post(URL.format("s-busy", "approve"), json={"approver": "ann"})

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "signal_not_expected"
    assert len(stream(app, "s-busy")) == before
    assert job_kind(app, "s-busy") == "hold_funds"


@pytest.mark.parametrize(
    ("saga_id", "name", "body", "status"),
    [
        ("nobody", "approve", {"approver": "ann"}, 404),
        ("s-1", "teleport", {}, 404),
        ("s-1", "x" * 41, {}, 422),
        ("s-1", "approve", ["not", "an", "object"], 422),
    ],
)
def test_unknown_sagas_signals_and_bad_bodies_are_refused(
    app: App, client: TestClient, saga_id: str, name: str, body: Any, status: int
) -> None:
    waiting_saga(app)

    answer = client.post(URL.format(saga_id, name), json=body)

    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert [e.type for e in stream(app, "s-1")][-1] == "SagaWaitStarted"


def test_the_same_idempotency_key_delivers_a_signal_once(app: App, client: TestClient) -> None:
    saga_id = waiting_saga(app)
    headers = {"Idempotency-Key": "decision-1"}

    first = client.post(URL.format(saga_id, "comment"), json={"text": "hi"}, headers=headers)
    again = client.post(URL.format(saga_id, "comment"), json={"text": "hi"}, headers=headers)
    other = client.post(URL.format(saga_id, "comment"), json={"text": "bye"}, headers=headers)

    assert (first.status_code, again.status_code) == (202, 200)
    assert (
        again.json()
        == first.json()
        == {
            "saga_id": saga_id,
            "signal": "comment",
            "outcome": "wait",
        }
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert [e.type for e in stream(app, saga_id)].count("SagaSignalReceived") == 1


def test_with_api_keys_the_sender_is_the_keys_name(make_app: Callable[..., App]) -> None:
    app = make_app(api_keys=("first-secret", "second-secret"))
    saga_id = waiting_saga(app)
    with TestClient(create_api(app)) as client:
        refused = client.post(URL.format(saga_id, "approve"), json={"approver": "ann"})
        answer = client.post(
            URL.format(saga_id, "approve"),
            json={"approver": "ann"},
            headers={"Authorization": "Bearer second-secret"},
        )

    assert refused.status_code == 401
    assert answer.status_code == 202, answer.text
    assert stream(app, saga_id)[-1].metadata["sender"] == "key2"
