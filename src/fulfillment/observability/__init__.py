"""Observability: Prometheus metrics, structured logs and optional tracing.

* ``counters``: metric counters derived from the event log, kept by the projector.
* ``metrics``: the Prometheus collector and ``render_metrics(app)`` for ``GET /metrics``.
* ``logging``: structlog set-up (JSON or console) and the fields every job's lines carry.
* ``tracing``: OpenTelemetry spans around each saga job, when switched on.
* ``telemetry``: the job observer that binds the log fields and opens the span of a job.

Nothing is imported here, so adapters can use ``counters`` without import cycles.
See docs/observability.md.
"""
