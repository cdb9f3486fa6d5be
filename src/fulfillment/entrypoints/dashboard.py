"""The dashboard: a small hand-written front end at `/`, and the JSON it reads.

The shell (`/`, `/dashboard/app.js`, `/dashboard/app.css`) holds no data, loads nothing
from another origin (its Content-Security-Policy says so) and is served without a key:
`SHELL_PATHS` are the only paths the bearer-key guard lets through for it. Every bit of
data comes from key-protected JSON: the public API and the `/api/dashboard/...` routes
below. When the server has `FULFILLMENT_API_KEYS`, the page asks for a key once, keeps
it in the tab's sessionStorage and sends it as `Authorization: Bearer`. Every role may
read the dashboard's data; the timeline's events leave the patient data out for a role
that may not read it (api_roles.PHI_READERS), and a timeline with patient data is
recorded in the access audit (adapters/access_log.py).

Pages are hash routes of the one shell: `#/` (overview, the pharmacist's queue and
orders), `#/orders/<id>` (one order's saga timeline and lifecycle), so no dashboard path
collides with the API's. The queue's buttons send the decision to the public API
(`POST /orders/{id}/verification`) with the stored key: only a `pharmacist` or `admin`
key may, whoever may read the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from fulfillment import views
from fulfillment.bootstrap import App
from fulfillment.domain.status import OrderStatus
from fulfillment.entrypoints import api_schemas as s
from fulfillment.entrypoints.api_errors import ApiError, role_of
from fulfillment.entrypoints.api_roles import may_read_phi
from fulfillment.views.dashboard import QUEUE_SHOWN, verification_queue

#: file name in `static/` -> (path it is served at, media type)
_SHELL = {
    "index.html": ("/", "text/html; charset=utf-8"),
    "app.js": ("/dashboard/app.js", "text/javascript; charset=utf-8"),
    "app.css": ("/dashboard/app.css", "text/css; charset=utf-8"),
}
#: The paths the bearer-key guard leaves open: the static shell, never data.
SHELL_PATHS: tuple[str, ...] = tuple(path for path, _ in _SHELL.values())

_SHELL_HEADERS = {
    # Nothing from another origin: no CDN, no fonts, no analytics.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_DATA_HEADERS = {"Cache-Control": "no-store"}
DEFAULT_PAGE = 25
MAX_PAGE = 200

OrderId = Annotated[s.Text, Path()]
#: Records that a request was shown the patient data of orders (order id -> customer id).
Audit = Callable[[Request, Mapping[str, str | None]], None]


def _load_shell() -> dict[str, tuple[bytes, str]]:
    static = resources.files("fulfillment.entrypoints").joinpath("static")
    return {
        path: (static.joinpath(name).read_bytes(), media_type)
        for name, (path, media_type) in _SHELL.items()
    }


def dashboard_router(app: App, audit: Audit) -> APIRouter:
    """The dashboard's shell and JSON routes over `app` (none of them in the OpenAPI
    schema); `audit` records the timelines served with patient data."""
    router = APIRouter(include_in_schema=False, redirect_slashes=False)
    shell = _load_shell()

    def serve(path: str) -> None:
        body, media_type = shell[path]

        def static_file() -> Response:
            return Response(body, media_type=media_type, headers=_SHELL_HEADERS)

        router.add_api_route(path, static_file, methods=["GET"], name=f"dashboard:{path}")

    for path in shell:
        serve(path)

    @router.get("/api/dashboard/overview")
    def dashboard_overview() -> JSONResponse:
        """Outcome counts, throughput per minute, queue depth, stuck sagas, projection lag."""
        return JSONResponse(views.overview(app), headers=_DATA_HEADERS)

    @router.get("/api/dashboard/orders")
    def dashboard_order_list(
        status: OrderStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[s.CursorText | None, Query()] = None,
    ) -> JSONResponse:
        """A page of orders, newest first, with the times the list shows."""
        try:
            items, next_cursor = views.dashboard_orders(
                app, status.value if status else None, limit, cursor
            )
        except views.InvalidQuery as exc:
            raise ApiError(422, "invalid_cursor", str(exc)) from exc
        return JSONResponse({"items": items, "next_cursor": next_cursor}, headers=_DATA_HEADERS)

    @router.get("/api/dashboard/verifications")
    def dashboard_verifications(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = QUEUE_SHOWN,
    ) -> JSONResponse:
        """The pharmacist's queue: orders awaiting verification, the longest waiting
        first, with their items and verification status (no patient data)."""
        return JSONResponse(verification_queue(app, limit), headers=_DATA_HEADERS)

    @router.get("/api/dashboard/orders/{order_id}/timeline")
    def dashboard_timeline(order_id: OrderId, request: Request) -> JSONResponse:
        """One order's saga: steps, compensations in the order they ran, its lifecycle
        and its events (without the prescription, the address and the notes for a key
        that may not read patient data)."""
        include_phi = may_read_phi(role_of(request))
        timeline = views.order_timeline(app, order_id, include_phi=include_phi)
        if timeline is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        if include_phi:
            audit(request, {order_id: timeline["order"]["customer_id"]})
        return JSONResponse(timeline, headers=_DATA_HEADERS)

    return router
