"""Property-based fuzzing of every operation in `/openapi.json` (schemathesis).

Valid and invalid requests, generated from the schema, must never get a 5xx: bad input
is a 4xx JSON error, never a crash; and a request the schema says is valid is not
refused as invalid (the schema states the server's constraints exactly). Each operation
alone, then in sequences that follow the schema's links (stateful: a placed order's id
into its reads, cancellation and verification, a page's cursor into the next page).
Runs in-process against the ASGI app on SQLite, bounded to a few dozen examples per
operation and a few dozen sequences.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import schemathesis
from conftest import LOOPBACK, settings_for
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from saga_testkit import place_order, run_jobs
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.api import create_api
from fulfillment.service_layer.commands import SetLot
from fulfillment.views.cursors import CURSOR_PATTERN


def _openapi() -> dict[str, object]:
    """The schema as the server publishes it (building it touches no database)."""
    app = bootstrap(Settings(database_url="sqlite://"))
    try:
        return create_api(app).openapi()
    finally:
        app.close()


schema = schemathesis.openapi.from_dict(_openapi())


@pytest.fixture
def backend() -> str:
    """The schema and the validation do not depend on the database: SQLite only."""
    return "sqlite"


@pytest.fixture
def app(database_url: str) -> Iterator[App]:
    app = bootstrap(settings_for(database_url))
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def api(app: App) -> FastAPI:
    return create_api(app)


def schema_valid_requests_are_accepted(
    ctx: CheckContext, response: Any, case: schemathesis.Case
) -> bool | None:
    """`positive_data_acceptance`, but for a cursor: one of the right shape that the API did
    not sign is `invalid_cursor`, and no schema can say which it signed."""
    cursor = (case.query or {}).get("cursor")
    if (
        response.status_code == 422
        and response.json()["error"]["code"] == "invalid_cursor"
        and isinstance(cursor, str)
        and re.fullmatch(CURSOR_PATTERN, cursor)
    ):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    schema_valid_requests_are_accepted,
    response_schema_conformance,
    status_code_conformance,
]


def assert_json_error(response: Any) -> None:
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_request_crashes_the_api(case: schemathesis.Case, api: FastAPI) -> None:
    # Without API keys the API answers only a loopback Host (421 otherwise).
    response = case.call_and_validate(app=api, base_url=LOOPBACK, checks=CHECKS)
    assert_json_error(response)


def test_no_sequence_of_linked_requests_crashes_the_api(app: App, api: FastAPI) -> None:
    """Stateful: sequences of requests along the schema's links (api_openapi.LINKS),
    from the listings (where schemathesis starts) of orders placed beforehand: fulfilled
    ones with their lots and shipments, and a cancelled one."""
    app.bus.handle(SetLot("FUZZ-RX", "L1", 50, date(2099, 1, 1)))
    place_order(app, "fuzz-short", sku="FUZZ-RX", qty=500)  # cancelled: insufficient stock
    for n in range(4):  # fulfilled, from lot L1; the newest first in the listings
        place_order(app, f"fuzz-{n}", sku="FUZZ-RX", customer_id=f"fuzz-customer-{n}")
    run_jobs(app)
    Projector(app.engine, app.mapper).catch_up()

    class Workflow(schema.as_state_machine()):
        def call(self, case: schemathesis.Case, **kwargs: Any) -> Any:
            return case.call(app=api, base_url=LOOPBACK, **kwargs)

        def validate_response(
            self, response: Any, case: schemathesis.Case, *args: Any, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)
            assert_json_error(response)

    Workflow.run(
        settings=settings(
            max_examples=80,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
    )
