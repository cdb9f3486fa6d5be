"""Observability: Prometheus metrics, structured logs and optional tracing.

* ``metrics``: the Prometheus collector and ``Metrics`` (one registry) for ``GET /metrics``;
  the counters it reads are kept by the projector (``adapters/metric_counters.py``).
* ``logging``: structlog set-up (JSON or console) and the fields every job's lines carry.
* ``tracing``: OpenTelemetry spans around each saga job, when switched on.
* ``telemetry``: the job observer that binds the log fields and opens the span of a job.

See docs/observability.md.
"""
