"""Structured logs with structlog: JSON lines for machines, a readable console format for people.

`configure_logging` routes both structlog loggers and the standard library's `logging`
(which most modules use: ``logging.getLogger("fulfillment.jobs")``) through one handler
whose `ProcessorFormatter` adds the same fields to every line: a UTC timestamp, level,
logger name, and the context bound while a saga job runs (`job_context`): order_id,
saga_id, job_id, step, attempt and correlation_id. Secrets (the API keys, and any field
named like a credential) are replaced by ``[REDACTED]`` before a line is written, and
the fields a library adds for its own coloured console (uvicorn's ``color_message``, the
message again with ANSI escapes) are dropped.

Format: ``FULFILLMENT_LOG_FORMAT=json|console``; by default JSON unless stderr is a
terminal. Level: ``FULFILLMENT_LOG_LEVEL`` (default INFO).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: Fields every log line of a saga job carries.
JOB_FIELDS = ("order_id", "saga_id", "job_id", "step", "attempt", "correlation_id")
REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"(authorization|api[_-]?keys?|password|passwd|secret|bearer)", re.I)
_HANDLER_MARK = "_fulfillment_handler"
#: Fields of standard library records that are not data: uvicorn's `color_message` (its
#: message with ANSI colour escapes, for its own console format).
CONSOLE_FIELDS = ("color_message",)


def wants_json(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """JSON or console? ``FULFILLMENT_LOG_FORMAT`` decides; else JSON unless on a terminal."""
    env = os.environ if environ is None else environ
    chosen = env.get("FULFILLMENT_LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "console"):
        return chosen == "json"
    if chosen:
        raise ValueError(f"FULFILLMENT_LOG_FORMAT must be json or console, got {chosen!r}")
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


def level_from_env(default: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """``FULFILLMENT_LOG_LEVEL``, or `default`."""
    env = os.environ if environ is None else environ
    level = (env.get("FULFILLMENT_LOG_LEVEL") or default).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"FULFILLMENT_LOG_LEVEL must be a logging level, got {level!r}")
    return level


class Redactor:
    """A processor that blanks secrets: configured values anywhere, credential-named fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a key containing another is blanked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, Mapping):
            return {k: self._field(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def _field(self, key: str, value: Any) -> Any:
        if _SECRET_KEY.search(key) and value not in (None, "", (), []):
            return REDACTED
        return self._clean(value)

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            if not key.startswith("_"):
                event_dict[key] = self._field(key, event_dict[key])
        return event_dict


def drop_console_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """A processor that leaves out `CONSOLE_FIELDS`."""
    for key in CONSOLE_FIELDS:
        event_dict.pop(key, None)
    return event_dict


def _shared_processors() -> list[Processor]:
    """Run for every line, structlog's own and the standard library's."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        drop_console_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    json: bool | None = None,
    level: int | str | None = None,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send all logs (structlog and standard library) to `stream` (stderr), formatted alike.

    `json`: JSON lines when true, a readable console format when false, None: from the
    environment (`wants_json`). `level`: None reads ``FULFILLMENT_LOG_LEVEL`` (INFO).
    `secrets` (the API keys) never appear in a line. Calling it again replaces the set-up.
    Returns the handler installed on the root logger.
    """
    stream = stream or sys.stderr
    as_json = wants_json(stream=stream) if json is None else json
    level = level_from_env() if level is None else level
    shared = _shared_processors()
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if as_json
        else structlog.dev.ConsoleRenderer(
            colors=hasattr(stream, "isatty") and stream.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text before redaction, so a secret in one is blanked too.
            structlog.processors.format_exc_info,
            Redactor(secrets),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return handler


@contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Bind `fields` (JOB_FIELDS) to every log line emitted inside, on this thread only.

    Nested use restores the outer values on exit.
    """
    with structlog.contextvars.bound_contextvars(**fields):
        yield


def bound_context() -> MutableMapping[str, Any]:
    """The fields bound on this thread right now (for tests and diagnostics)."""
    return structlog.contextvars.get_contextvars()
