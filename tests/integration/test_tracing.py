"""Tracing: each saga job runs in a span, and all the spans of one saga share one trace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial

import pytest
from conftest import settings_for
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from saga_testkit import place_order, run_jobs

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.bootstrap import App, bootstrap
from fulfillment.observability.tracing import (
    NO_TRACING,
    setup_tracing,
    trace_ids_for,
    tracing_mode,
)
from fulfillment.service_layer import commands as c

SKU = "IBUPROFEN-200"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_app(database_url: str, exporter: InMemorySpanExporter) -> Iterator[App]:
    failed_once: set[str] = set()
    lock = threading.Lock()

    def fail_first_booking(key: str) -> bool:
        with lock:
            first = key == "bumpy:shipment" and key not in failed_once
            failed_once.add(key)
            return first

    app = bootstrap(
        settings_for(database_url),
        carrier=SimulatedCarrier(("US",), fail_keys=fail_first_booking),
        tracing=setup_tracing(exporter=exporter),
    )
    app.bus.handle(c.SetInventory(SKU, 10))
    yield app
    app.close()


# One unit of the SKU the fixture stocks.
place = partial(place_order, sku=SKU)


def spans_of(exporter: InMemorySpanExporter, order_id: str) -> list[ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if s.attributes is not None]
    return sorted(
        (s for s in spans if s.attributes and s.attributes.get("order_id") == order_id),
        key=lambda s: s.start_time or 0,
    )


def test_each_step_of_a_saga_runs_in_a_span_of_the_sagas_trace(
    traced_app: App, exporter: InMemorySpanExporter
) -> None:
    place(traced_app, "smooth")
    run_jobs(traced_app, 2, timeout=30)

    spans = spans_of(exporter, "smooth")
    assert [s.name for s in spans] == [
        "create_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "complete",
    ]
    trace_id, root_span_id = trace_ids_for("smooth")
    for span in spans:
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == root_span_id
        attributes = dict(span.attributes or {})
        assert attributes["saga_id"] == attributes["correlation_id"] == "smooth"
        assert attributes["step"] == span.name
        assert attributes["attempt"] == 1
        assert attributes["outcome"] == "done"
        assert isinstance(attributes["job_id"], int)
    assert [dict(s.attributes or {})["job_type"] for s in spans] == [
        "step",
        "step",
        "step",
        "completion",
    ]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_retried_step_gets_a_span_per_attempt(
    traced_app: App, exporter: InMemorySpanExporter
) -> None:
    place(traced_app, "bumpy")
    run_jobs(traced_app, 2, timeout=30)

    shipments = [s for s in spans_of(exporter, "bumpy") if s.name == "initiate_shipment"]
    assert [
        (dict(s.attributes or {})["attempt"], dict(s.attributes or {})["outcome"])
        for s in shipments
    ] == [
        (1, "retry_scheduled"),
        (2, "done"),
    ]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_compensations_run_in_spans_and_the_failed_step_is_marked(
    traced_app: App, exporter: InMemorySpanExporter
) -> None:
    place(traced_app, "abroad", country="JP")
    run_jobs(traced_app, 2, timeout=30)

    spans = spans_of(exporter, "abroad")
    assert [s.name for s in spans] == [
        "create_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "release_inventory",
        "cancel_prescription",
    ]
    failed = spans[2]
    assert failed.status.status_code is StatusCode.ERROR
    assert "unsupported_destination" in (failed.status.description or "")
    assert {dict(s.attributes or {})["job_type"] for s in spans[3:]} == {"compensation"}
    assert len({s.context.trace_id for s in spans if s.context}) == 1


def test_tracing_is_off_unless_asked_for() -> None:
    assert tracing_mode({}) is None
    assert setup_tracing({}) is NO_TRACING
    assert tracing_mode({"FULFILLMENT_TRACING": "console"}) == "console"
    assert tracing_mode({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == "otlp"
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "FULFILLMENT_TRACING": "off"}
    assert tracing_mode(off) is None
    with pytest.raises(ValueError, match="FULFILLMENT_TRACING"):
        tracing_mode({"FULFILLMENT_TRACING": "loud"})
