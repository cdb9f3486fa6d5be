"""Structured logs: every line of a saga job says which order, saga, job, step and attempt."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from fulfillment.observability.logging import (
    JOB_FIELDS,
    REDACTED,
    configure_logging,
    job_context,
    level_from_env,
    wants_json,
)
from fulfillment.observability.telemetry import JobTelemetry
from fulfillment.service_layer import commands as c

from .builders import address, lines, prescription
from .fakes import FakeApp, make_fake_app

ASPIRIN = "ASPIRIN-100"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Where configure_logging writes; the logging set-up is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def app() -> FakeApp:
    app = make_fake_app()
    app.runner.observer = JobTelemetry(app.bus.uow_factory)
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    return app


def place(app: FakeApp, order_id: str, country: str = "NL") -> None:
    app.bus.handle(
        c.CreateOrder(order_id, "c-1", lines((ASPIRIN, 1)), prescription(), address(country))
    )


def test_every_line_of_a_job_carries_the_six_saga_fields(app: FakeApp, output: io.StringIO) -> None:
    configure_logging(json=True, level="DEBUG", stream=output)
    app.carrier.down_for = 1  # the first booking fails transiently: a retry, then success
    place(app, "o-42", country="NL")
    place(app, "o-43", country="JP")  # not served: the step fails, compensation runs
    app.run_until_idle()

    job_lines = [line for line in json_lines(output) if line["logger"] == "fulfillment.jobs"]
    assert job_lines, "the jobs logged nothing"
    for line in job_lines:
        assert set(JOB_FIELDS) <= line.keys(), line
        assert line["order_id"] == line["saga_id"] == line["correlation_id"]
        assert isinstance(line["job_id"], int)
        assert line["level"] in ("debug", "info")
        assert line["timestamp"].endswith("Z")

    retry = next(x for x in job_lines if "retrying" in x["event"])
    assert (retry["order_id"], retry["step"], retry["attempt"]) == ("o-42", "initiate_shipment", 1)
    second_try = [
        x for x in job_lines if x["order_id"] == "o-42" and x["step"] == "initiate_shipment"
    ]
    # started, retrying, finished; started, finished
    assert [x["attempt"] for x in second_try] == [1, 1, 1, 2, 2]
    failed = next(x for x in job_lines if "failed (" in x["event"])
    assert failed["order_id"] == "o-43" and "unsupported_destination" in failed["event"]
    steps = {x["step"] for x in job_lines if x["order_id"] == "o-43"}
    assert {"initiate_shipment", "release_inventory", "cancel_prescription"} <= steps


def test_structlog_and_standard_library_lines_share_the_bound_fields(
    output: io.StringIO,
) -> None:
    configure_logging(json=True, level="INFO", stream=output)
    fields = {
        "order_id": "o-1",
        "saga_id": "o-1",
        "job_id": 7,
        "step": "reserve_inventory",
        "attempt": 2,
        "correlation_id": "o-1",
    }
    with job_context(**fields):
        structlog.get_logger("fulfillment.test").info("reserving", skus=1)
        logging.getLogger("fulfillment.other").warning("stock low for %s", ASPIRIN)
    logging.getLogger("fulfillment.other").info("outside any job")

    inside, stdlib, outside = json_lines(output)
    for line in (inside, stdlib):
        assert {k: line[k] for k in JOB_FIELDS} == fields
    assert inside["event"] == "reserving" and inside["skus"] == 1
    assert stdlib["event"] == f"stock low for {ASPIRIN}" and stdlib["level"] == "warning"
    assert not set(JOB_FIELDS) & outside.keys()


def test_api_keys_never_reach_the_log(output: io.StringIO) -> None:
    key = "k3y-that-must-stay-secret"
    configure_logging(json=True, level="INFO", secrets=[key, "another-key"], stream=output)
    log = logging.getLogger("fulfillment.api")
    log.warning("rejected Authorization: Bearer %s", key)
    log.info("request", extra={"authorization": "Bearer whatever", "api_key": "abc"})
    structlog.get_logger().info("settings", api_keys=[key], headers={"Authorization": "x"})
    try:
        raise RuntimeError(f"boom with {key}")
    except RuntimeError:
        log.exception("failed")

    text = output.getvalue()
    assert key not in text and "Bearer whatever" not in text
    first, extra, settings, failure = json_lines(output)
    assert first["event"] == f"rejected Authorization: Bearer {REDACTED}"
    assert extra["authorization"] == REDACTED and extra["api_key"] == REDACTED
    assert settings["api_keys"] == REDACTED and settings["headers"]["Authorization"] == REDACTED
    assert "RuntimeError: boom with " + REDACTED in failure["exception"]


def test_console_format_is_for_people(output: io.StringIO) -> None:
    configure_logging(json=False, level="INFO", stream=output)
    with job_context(order_id="o-9", step="create_prescription"):
        logging.getLogger("fulfillment.jobs").info("prescription created")
    line = output.getvalue().strip()
    assert not line.startswith("{")
    assert "prescription created" in line
    assert "order_id=o-9" in line and "step=create_prescription" in line


def test_configuring_twice_keeps_one_handler(output: io.StringIO) -> None:
    configure_logging(json=True, level="INFO", stream=output)
    configure_logging(json=True, level="INFO", stream=output)
    logging.getLogger("fulfillment.x").info("once")
    assert [line["event"] for line in json_lines(output)] == ["once"]


def test_log_format_and_level_come_from_the_environment() -> None:
    assert wants_json({"FULFILLMENT_LOG_FORMAT": "json"})
    assert not wants_json({"FULFILLMENT_LOG_FORMAT": "console"})
    assert wants_json({}, stream=io.StringIO())  # not a terminal: JSON
    with pytest.raises(ValueError, match="FULFILLMENT_LOG_FORMAT"):
        wants_json({"FULFILLMENT_LOG_FORMAT": "xml"})
    assert level_from_env(environ={"FULFILLMENT_LOG_LEVEL": "debug"}) == "DEBUG"
    assert level_from_env(environ={}) == "INFO"
    with pytest.raises(ValueError, match="FULFILLMENT_LOG_LEVEL"):
        level_from_env(environ={"FULFILLMENT_LOG_LEVEL": "chatty"})
