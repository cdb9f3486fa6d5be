"""Property-based fuzzing of every operation in `/openapi.json` (schemathesis).

Valid and invalid requests, generated from the schema, must never get a 5xx: bad input
is a 4xx JSON error, never a crash. Runs in-process against the ASGI app on SQLite,
bounded to a few dozen examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from conftest import settings_for
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fulfillment.bootstrap import bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.api import create_api


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
def api(database_url: str) -> Iterator[FastAPI]:
    app = bootstrap(settings_for(database_url))
    try:
        yield create_api(app)
    finally:
        app.close()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_request_crashes_the_api(case: schemathesis.Case, api: FastAPI) -> None:
    response = case.call_and_validate(
        app=api,
        # Without API keys the API answers only a loopback Host (421 otherwise).
        base_url="http://127.0.0.1",
        checks=[
            not_a_server_error,
            negative_data_rejection,
            response_schema_conformance,
            status_code_conformance,
        ],
    )
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
