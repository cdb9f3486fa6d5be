"""Every error of the HTTP API as `{"error": {"code", "message", "details"?}}`.

Also the two guards that answer before any route runs: bearer-key authentication (with
the keys' roles, entrypoints/api_roles.py) and the request body limit. Both are plain
ASGI middlewares, so they see every request, including ones to unknown paths, and count
body bytes as they arrive (chunked or not).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfillment.adapters.db_errors import translate
from fulfillment.adapters.patient_data import PatientDataLocked
from fulfillment.config import ADMIN, ApiKey
from fulfillment.domain.errors import DomainError, InvalidInventory
from fulfillment.domain.saga import SignalNotExpected, TooLateToCancel
from fulfillment.entrypoints.api_roles import allowed
from fulfillment.service_layer.messagebus import (
    ConcurrencyError,
    DatabaseBusy,
    RetryableDatabaseError,
)
from fulfillment.service_layer.saga_engine import (
    Forbidden,
    IdempotencyKeyReused,
    InvalidSignalPayload,
    NotFound,
)

log = logging.getLogger("fulfillment.api")

MAX_BODY_BYTES = 64 * 1024

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    421: "misdirected_request",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by a route to answer with an error."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status_code, headers=headers)


def _field_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic errors without their input (it may be large, or a patient's name)."""
    return [
        {"loc": list(e.get("loc", ())), "message": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's),
    and HEAD where GET is (api_headers.HeadAsGet)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the JSON error shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot even decode (not UTF-8, say): to a
            # client that is malformed JSON, like any other, so the same 422.
            return error_response(
                422,
                "validation_error",
                "the request is not valid",
                [{"loc": ["body"], "message": str(exc.detail), "type": "json_invalid"}],
            )
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, code, str(exc.detail), None, headers or None)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            422, "validation_error", "the request is not valid", _field_errors(exc.errors())
        )

    async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, InvalidSignalPayload):
            return error_response(422, "validation_error", str(exc), exc.errors)
        if isinstance(exc, SignalNotExpected):
            return error_response(409, "signal_not_expected", str(exc))
        if isinstance(exc, Forbidden):
            return error_response(403, "forbidden", str(exc))
        if isinstance(exc, TooLateToCancel):
            return error_response(409, "too_late_to_cancel", str(exc))
        if isinstance(exc, NotFound):
            return error_response(404, "not_found", str(exc))
        if isinstance(exc, InvalidInventory):
            return error_response(409, "inventory_below_reserved", str(exc))
        if isinstance(exc, IdempotencyKeyReused):
            return error_response(409, "idempotency_key_reused", str(exc))
        return error_response(422, "rule_violated", str(exc))

    async def busy(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("request gave up after repeated conflicts: %s", exc)
        return error_response(
            503, "busy", "the database is busy; try again", headers={"Retry-After": "1"}
        )

    async def waited_too_long(_request: Request, exc: Exception) -> JSONResponse:
        # A lock wait or the pool's wait for a connection ran out (a paused process may
        # hold what the request needs): bounded, and said as such, never a 500.
        log.warning("request gave up waiting for the database: %s", type(exc).__name__)
        return error_response(
            503, "busy", "the database is busy; try again", headers={"Retry-After": "1"}
        )

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if isinstance(translate(exc), DatabaseBusy):
            return await waited_too_long(request, exc)
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            return error_response(
                503, "unavailable", "the database is unavailable", headers={"Retry-After": "1"}
            )
        log.exception("database error")
        return error_response(500, "internal_error", "internal error")

    async def patient_data_locked(_request: Request, exc: Exception) -> JSONResponse:
        # A configuration fault of this process, said to its operator; the client is
        # told the data cannot be read here, never that it is erased.
        log.error("%s", exc)
        return error_response(
            503, "patient_data_locked", "patient data cannot be read: the server has no key"
        )

    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(ConcurrencyError, busy)
    app.add_exception_handler(RetryableDatabaseError, busy)
    app.add_exception_handler(DatabaseBusy, waited_too_long)
    app.add_exception_handler(PoolTimeout, waited_too_long)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PatientDataLocked, patient_data_locked)
    app.add_exception_handler(Exception, internal_error)


# --- guards ---------------------------------------------------------------------------


#: The request state's entries naming the API key that authenticated the request, and its role.
SENDER = "api_key_name"
ROLE = "api_key_role"
#: The role on an open path (`/health`, ...) when keys are on: none was asked for.
NO_ROLE = ""


def sender_of(request: Request) -> str:
    """Who sent the request: the API key's name, or `anonymous` when keys are off."""
    return str(getattr(request.state, SENDER, None) or "anonymous")


def role_of(request: Request) -> str:
    """The role of the request's API key; `admin` when keys are off (everyone is an
    anonymous admin then, on loopback only); `NO_ROLE` on an open path with keys on."""
    return str(getattr(request.state, ROLE, ADMIN))


def route_of(request: Request) -> str:
    """The template of the route that serves the request (`/orders/{order_id}/fhir`),
    never its raw path; the raw path where no route matched."""
    return str(getattr(request.scope.get("route"), "path", None) or request.url.path)


def route_path(scope: Scope) -> str:
    """The path as the router matches it (without the root path of a mounted app)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _served(scope: Scope) -> bool:
    """Does some route serve this method at this path (the router's own test)?"""
    application = scope.get("app")
    router = getattr(application, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return True
    return False


class BearerAuth:
    """Every path but the open ones needs `Authorization: Bearer <secret>` of a known key
    (else 401), whose role the policy of api_roles.py allows to send the request (else 403).

    Secrets are compared in constant time and never logged. The key's name and role go
    into the request's state (`sender_of`, `role_of`).
    """

    def __init__(self, app: ASGIApp, keys: Iterable[ApiKey], open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = [(key, key.secret.encode()) for key in keys]
        self.open_paths = frozenset(open_paths)

    def _key(self, scope: Scope) -> ApiKey | None:
        """The key the request carries, or None when it carries no known key."""
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = token.strip()
        # Compare with every key, so the time taken does not tell which one matched.
        matched: ApiKey | None = None
        for key, secret in self.keys:
            if hmac.compare_digest(token, secret):
                matched = key
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        path = route_path(scope)
        if path in self.open_paths:
            state[ROLE] = NO_ROLE
            await self.app(scope, receive, send)
            return
        key = self._key(scope)
        if key is None:
            response = error_response(
                401,
                "unauthorized",
                "a valid 'Authorization: Bearer <key>' header is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        # Who sent a request that records events (their metadata's `sender`), and as what.
        state[SENDER] = key.name
        state[ROLE] = key.role
        method = str(scope.get("method", "GET"))
        verdict = allowed(key.role, method, path)
        if verdict is None and key.role != ADMIN and _served(scope):
            # A route the policy has no row for: only an admin may use it.
            log.warning("no role policy for %s %s: refused to %s", method, path, key.role)
            verdict = False
        if verdict is False:
            response = error_response(
                403, "forbidden", f"the role {key.role!r} of this key may not {method} {path}"
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length, or by counting chunks.

    The body is read (at most `max_bytes` + one chunk) before the route runs and then
    handed on, so a route never sees a truncated body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            "payload_too_large",
            f"the request body exceeds {self.max_bytes} bytes",
            {"max_bytes": self.max_bytes},
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    response = error_response(400, "bad_request", "invalid Content-Length")
                    await response(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
