"""The outermost layers of the HTTP API: headers on every response, HEAD served as GET
without the body, the loopback `Host` check that stops DNS rebinding while no API keys
are configured, and 404 for a path with dot segments.

They wrap the whole application, Starlette's own error handler included
(`wrap_outermost`), so they also cover the answers of the guards (401, 403, 413, ...),
of the router (404, 405), of the exception handlers and of the dashboard's static files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfillment.entrypoints.api_errors import error_response

#: Set on every response: nothing the API answers (patient data, or the dashboard's
#: shell) is kept by a browser or a proxy cache, and no body is content-sniffed.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)
_REPLACED = frozenset(name for name, _ in SECURITY_HEADERS)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response, replacing any such header a route set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() not in _REPLACED
                ]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_loopback_host(host: str) -> bool:
    """Is a `Host` header's value a loopback name or address, with or without a port:
    `localhost`, any `127.x.y.z`, `[::1]`?"""
    bracketed = host.startswith("[")
    if bracketed:
        name, bracket, port = host[1:].partition("]")
        if not bracket:
            return False
    else:
        name, colon, number = host.partition(":")
        port = colon + number
    if port and not (port.startswith(":") and port[1:].isascii() and port[1:].isdigit()):
        return False
    if not bracketed and name.lower() == "localhost":
        return True
    try:
        address = ipaddress.IPv6Address(name) if bracketed else ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return address.is_loopback


#: Set in the scope of a HEAD request that `HeadAsGet` hands on as a GET.
HEAD_REQUEST = "fulfillment.head_request"


def is_head_request(scope: Scope) -> bool:
    """Was the request a HEAD (answered by its GET, without the body)?"""
    return bool(scope.get(HEAD_REQUEST))


class HeadAsGet:
    """Serve HEAD wherever GET is served: the request goes on as a GET (so routes, guards
    and the role policy see one), and its answer goes back with the GET's status and
    headers, `Content-Length` included, and no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_REQUEST: True}, receive, send_headers_only)


def has_dot_segment(path: str) -> bool:
    """Does the (decoded) path hold a `.` or `..` segment (`/inventory/%2e%2e`)?"""
    return any(segment in (".", "..") for segment in path.split("/"))


class NoDotSegments:
    """404 for a path with a `.` or `..` segment: no route is named so, and no SKU or lot
    either, so nothing reads them as a resource or redirects to another path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and has_dot_segment(str(scope.get("path", ""))):
            response = error_response(404, "not_found", "no such path: it has a dot segment")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LoopbackHostOnly:
    """Without API keys, answer only requests addressed to a loopback host (else 421).

    The server then binds to loopback, but a web page the operator opens could still
    reach it through a name that an attacker's DNS points at 127.0.0.1 (DNS rebinding):
    its requests carry that name as `Host`, which is refused here. A request without
    `Host` is refused as well.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((value for name, value in scope.get("headers", ()) if name == b"host"), None)
        if host is None or not is_loopback_host(host.decode("latin-1")):
            response = error_response(
                421,
                "misdirected_request",
                "without FULFILLMENT_API_KEYS this server answers only requests to a "
                "loopback host (localhost, 127.0.0.1, [::1]): use one, or configure "
                "FULFILLMENT_API_KEYS",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def wrap_outermost(api: FastAPI, *layers: Callable[[ASGIApp], ASGIApp]) -> None:
    """Wrap `api`'s whole middleware stack in `layers` (the first is the outermost).

    `add_middleware` places a middleware inside Starlette's ServerErrorMiddleware, which
    answers unhandled errors (500) itself; these layers must see those answers too.
    """
    build = api.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        stack = build()
        for layer in reversed(layers):
            stack = layer(stack)
        return stack

    api.build_middleware_stack = build_wrapped  # type: ignore[method-assign]
