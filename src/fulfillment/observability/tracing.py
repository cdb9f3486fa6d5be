"""Optional OpenTelemetry tracing: one span per saga job (a step, a compensation, completion).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set, which exports over OTLP/HTTP, or ``FULFILLMENT_TRACING=console``, which prints spans
to stdout; ``FULFILLMENT_TRACING=off`` switches it off whatever else is set. Needs the
``tracing`` extra (``pip install 'fulfillment-saga[tracing]'``); without it, or when off,
everything here is a no-op and OpenTelemetry is never imported.

The jobs of one saga run one after another, often in different processes. They are tied
together by the correlation id (the order id): the trace id of every job span is derived
from it, so all the steps and compensations of one saga land in one trace, under a
(virtual) root span whose id is derived from it too. `trace_context_for` gives that
parent to any other code (the HTTP API, say) that wants to join the saga's trace.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger("fulfillment.tracing")

SERVICE_NAME = "fulfillment"
_OFF = ("off", "none", "false", "0")


class SpanHandle(Protocol):
    """What a job may do with its span while it runs."""

    def set(self, key: str, value: str | int | float | bool) -> None: ...

    def fail(self, description: str) -> None: ...


class _NoSpan:
    def set(self, key: str, value: str | int | float | bool) -> None:
        pass

    def fail(self, description: str) -> None:
        pass


NO_SPAN = _NoSpan()


class _Span:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, description))


def trace_ids_for(correlation_id: str) -> tuple[int, int]:
    """(trace id, root span id) of a saga's trace, derived from its correlation id."""
    digest = hashlib.sha256(f"fulfillment-saga:{correlation_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def trace_context_for(correlation_id: str) -> Any:
    """An OpenTelemetry context whose parent is the saga's (virtual) root span.

    Spans started in it belong to the saga's trace. Requires OpenTelemetry.
    """
    from opentelemetry import trace

    trace_id, span_id = trace_ids_for(correlation_id)
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


class Tracing:
    """Spans of saga jobs, or nothing at all (the default, `NO_TRACING`)."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("fulfillment.saga") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(
        self, name: str, correlation_id: str, attributes: Mapping[str, str | int | float | bool]
    ) -> Iterator[SpanHandle]:
        """A span named `name` in the trace of `correlation_id`, current while inside.

        An exception escaping the block is recorded on the span and re-raised.
        """
        if self._tracer is None:
            yield NO_SPAN
            return
        with self._tracer.start_as_current_span(
            name, context=trace_context_for(correlation_id), attributes=dict(attributes)
        ) as span:
            yield _Span(span)

    def current_ids(self) -> dict[str, str]:
        """trace_id and span_id of the current span, as hex (empty when off or outside one)."""
        if self._tracer is None:
            return {}
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    def shutdown(self) -> None:
        """Flush and stop the exporter (spans still buffered are sent)."""
        if self.provider is not None:
            self.provider.shutdown()


NO_TRACING = Tracing()


def tracing_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """The tracing mode from the environment: "console", "otlp", or None (off)."""
    env = os.environ if environ is None else environ
    chosen = env.get("FULFILLMENT_TRACING", "").strip().lower()
    if chosen in _OFF:
        return None
    if chosen == "console":
        return "console"
    if (
        chosen == "otlp"
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return "otlp"
    if chosen:
        raise ValueError(f"FULFILLMENT_TRACING must be console, otlp or off, got {chosen!r}")
    return None


def setup_tracing(environ: Mapping[str, str] | None = None, *, exporter: Any = None) -> Tracing:
    """A `Tracing` from the environment, or with `exporter` (tests: an in-memory one).

    Returns `NO_TRACING` when tracing is off, or when OpenTelemetry's SDK is missing
    (with a warning). Uses a tracer provider of its own, never the global one.
    """
    env = os.environ if environ is None else environ
    mode = "custom" if exporter is not None else tracing_mode(env)
    if mode is None:
        return NO_TRACING
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        log.warning(
            "tracing requested but OpenTelemetry is not installed: "
            "pip install 'fulfillment-saga[tracing]'"
        )
        return NO_TRACING
    service = env.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if mode == "custom":
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning(
                "OTLP endpoint set but the OTLP exporter is not installed: "
                "pip install 'fulfillment-saga[tracing]'"
            )
            return NO_TRACING
        # The exporter reads OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)
