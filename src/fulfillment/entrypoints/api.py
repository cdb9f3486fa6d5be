"""The HTTP API (docs/api.md): FastAPI over the command bus and the read models.

Writes go through the command bus (one handler per command); reads come from
`fulfillment.views`. `create_api(app)` builds the ASGI application over a bootstrapped
`App`; `api_server` runs it as `fulfillment serve`, with workers and the projector.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

import anyio
import pydantic
from fastapi import Body, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from fulfillment import __version__, views
from fulfillment.adapters.access_log import AccessLog, subjects_of
from fulfillment.adapters.idempotency import find as find_idempotency_key
from fulfillment.adapters.idempotency import request_hash
from fulfillment.bootstrap import App
from fulfillment.domain.saga import CancellationAccepted, SignalNotExpected, TooLateToCancel
from fulfillment.domain.status import OrderStatus
from fulfillment.entrypoints import api_schemas as s
from fulfillment.entrypoints.api_errors import (
    ApiError,
    BearerAuth,
    BodySizeLimit,
    error_response,
    install_error_handlers,
    role_of,
    route_of,
    sender_of,
)
from fulfillment.entrypoints.api_headers import (
    HeadAsGet,
    LoopbackHostOnly,
    NoDotSegments,
    SecurityHeaders,
    is_head_request,
    wrap_outermost,
)
from fulfillment.entrypoints.api_inventory import inventory_router
from fulfillment.entrypoints.api_openapi import document_extras
from fulfillment.entrypoints.api_rate_limit import RateLimit
from fulfillment.entrypoints.api_roles import SIGNED_PATHS
from fulfillment.entrypoints.dashboard import SHELL_PATHS, dashboard_router
from fulfillment.entrypoints.personal_data import forget_customer
from fulfillment.entrypoints.webhook_signature import InvalidSignature
from fulfillment.entrypoints.webhook_signature import verify as verify_signature
from fulfillment.observability.metrics import Metrics
from fulfillment.service_layer.commands import (
    CancelSaga,
    CreateOrder,
    RecordTrackingUpdate,
    SignalSaga,
)
from fulfillment.service_layer.saga_engine import (
    SignalAccepted,
    UnknownSignal,
    cancel_idempotency,
    order_idempotency,
    signal_idempotency,
)
from fulfillment.views.fhir import patient_of

log = logging.getLogger("fulfillment.api")

# The dashboard's static shell holds no data; everything it shows needs a key. The
# carrier's webhook is signed instead (its own HMAC, not a bearer key).
OPEN_PATHS = ("/health", *SHELL_PATHS, *SIGNED_PATHS)
MAX_LIMIT = 1000
MAX_POSITION = 2**63 - 1

# Path parameters follow the rules of request texts (entrypoints/identifiers.py).
OrderId = Annotated[s.Text, Path()]
CustomerId = Annotated[s.Text, Path()]
SignalName = Annotated[s.SignalNameText, Path()]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"1..{MAX_LIMIT}")]
Cursor = Annotated[
    s.CursorText | None,
    Query(
        description="`next_cursor` of the previous page (signed; 422 `invalid_cursor` for "
        "any other)",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=s.MAX_TEXT,
        pattern=s.NO_CONTROL_CHARACTERS,
        description="Replaying a request with the same key and body returns the first "
        "response and starts nothing; the same key with another body is refused (409).",
    ),
]


class Services(Protocol):
    """Background loops that start and stop with the application (workers, projector)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


_errors = s.error_responses


def _page(items: list[Any], next_cursor: object) -> dict[str, Any]:
    return {"items": items, "next_cursor": None if next_cursor is None else str(next_cursor)}


def create_api(
    app: App,
    *,
    services: Services | None = None,
    close_app: bool = False,
) -> FastAPI:
    """The FastAPI application over `app`; starts and stops `services` with itself, and
    the writer of the access audit of patient data (`api.state.access_log`)."""
    metrics_of_app = Metrics(app.engine, app.mapper)
    # Who read patient data (adapters/access_log.py): written off the request path.
    access_log = AccessLog(app.engine)

    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        access_log.start()
        if services is not None:
            services.start()
        try:
            yield
        finally:
            if services is not None:
                await anyio.to_thread.run_sync(services.stop)
            await anyio.to_thread.run_sync(access_log.close)
            if close_app:
                app.close()

    api = FastAPI(
        # No Swagger/ReDoc pages: they load their scripts from a CDN, and this service
        # works offline. The schema itself is at /openapi.json.
        docs_url=None,
        redoc_url=None,
        title="Fulfillment Saga",
        version=__version__,
        description="Order fulfillment for an online pharmacy. Every error is "
        '`{"error": {"code", "message", "details"?}}`.',
        lifespan=lifespan,
        responses=_errors(401, 403, 405, 413, 421, 503),
        # A path with a trailing slash is 404, never a redirect (which would echo the Host).
        redirect_slashes=False,
    )
    install_error_handlers(api)
    api.add_middleware(BodySizeLimit)
    if app.settings.rate_limit_per_minute is not None:
        # Inside the bearer-key guard, which names the sender.
        api.add_middleware(
            RateLimit, per_minute=app.settings.rate_limit_per_minute, exempt_paths=SIGNED_PATHS
        )
    if app.settings.api_keys:
        api.add_middleware(BearerAuth, keys=app.settings.api_keys, open_paths=OPEN_PATHS)
        wrap_outermost(api, SecurityHeaders, HeadAsGet, NoDotSegments)
    else:
        # No keys: no authentication, so only requests to a loopback host (DNS rebinding).
        wrap_outermost(api, SecurityHeaders, HeadAsGet, LoopbackHostOnly, NoDotSegments)
    api.state.fulfillment = app
    api.state.access_log = access_log

    def audit(request: Request, subjects: Mapping[str, str | None]) -> None:
        """Record that the request's key was shown these orders' patient data (a HEAD
        shows none)."""
        if not is_head_request(request.scope):
            access_log.record_all(sender_of(request), route_of(request), subjects)

    api.include_router(inventory_router(app))

    @api.post(
        "/orders",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": s.OrderAccepted, "description": "Accepted: the saga runs"},
            200: {"model": s.OrderAccepted, "description": "Replay of an Idempotency-Key"},
            **_errors(409, 422, 503),
        },
        tags=["orders"],
    )
    def post_order(
        body: s.CreateOrderRequest, request: Request, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Place an order; its fulfillment saga runs in the background."""
        order_id = str(uuid.uuid4())
        accepted = {"order_id": order_id, "status": "pending"}
        sender = sender_of(request)
        record = None
        if idempotency_key is not None:
            fingerprint = request_hash(body.model_dump(mode="json"))
            record = order_idempotency(sender, idempotency_key, fingerprint, order_id, accepted)
        command = CreateOrder(
            order_id=order_id,
            customer_id=body.customer_id,
            items=body.lines(),
            prescription=body.prescription_details(),
            shipping_address=body.address(),
            idempotency=record,
            legacy_key=idempotency_key,
        )
        created: str = app.bus.handle(command, sender=sender)
        if created == order_id:
            return JSONResponse(
                accepted, status_code=202, headers={"Location": f"/orders/{created}"}
            )
        assert record is not None and idempotency_key is not None
        stored = find_idempotency_key(app.engine, record.key) or find_idempotency_key(
            app.engine, idempotency_key
        )
        first = stored.response if stored else {"order_id": created, "status": "pending"}
        return JSONResponse(
            first,
            status_code=200,
            headers={"Location": f"/orders/{created}", "Idempotent-Replayed": "true"},
        )

    @api.get(
        "/orders",
        response_model=None,
        responses={200: {"model": s.Page}, **_errors(422)},
        tags=["orders"],
    )
    def list_orders(
        status: OrderStatus | None = None, limit: Limit = 100, cursor: Cursor = None
    ) -> JSONResponse:
        """Orders, newest first, optionally of one status; follow `next_cursor` for more."""
        try:
            items, next_cursor = views.list_orders(
                app, status.value if status else None, limit, cursor
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_cursor", str(exc)) from exc
        return JSONResponse(_page(items, next_cursor))

    @api.get(
        "/orders/{order_id}",
        response_model=None,
        responses={200: {"model": s.OrderView}, **_errors(404, 422)},
        tags=["orders"],
    )
    def get_order(order_id: OrderId) -> JSONResponse:
        """An order, its saga's steps and its shipment."""
        order = views.get_order(app, order_id)
        if order is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        return JSONResponse(order)

    @api.get(
        "/orders/{order_id}/events",
        response_model=None,
        responses={200: {"model": list[s.EventView]}, **_errors(404, 422)},
        tags=["orders", "events"],
    )
    def get_order_events(order_id: OrderId, request: Request) -> JSONResponse:
        """The order's and its saga's events, in commit order."""
        events = views.order_events(app, order_id)
        if events is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        audit(request, {order_id: subjects_of(events).get(order_id)})
        return JSONResponse(events)

    @api.get(
        "/sagas",
        response_model=None,
        responses={200: {"model": s.Page}, **_errors(422)},
        tags=["sagas"],
    )
    def list_sagas(
        status: s.SagaFilter | None = None, limit: Limit = 100, cursor: Cursor = None
    ) -> JSONResponse:
        """Sagas newest first, with their job; `status` is a saga status or `stuck`
        (parked, job dead, or no progress for a whole step timeout)."""
        try:
            items, next_cursor = views.list_sagas(app, status, limit, cursor)
        except ValueError as exc:
            raise ApiError(422, "invalid_cursor", str(exc)) from exc
        return JSONResponse(_page(items, next_cursor))

    @api.post(
        "/sagas/{saga_id}/signals/{name}",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": s.SignalAccepted, "description": "Delivered to the saga's wait"},
            200: {"model": s.SignalAccepted, "description": "Replay of an Idempotency-Key"},
            **_errors(404, 409, 422, 503),
        },
        tags=["sagas"],
    )
    def post_signal(
        saga_id: OrderId,
        name: SignalName,
        request: Request,
        body: Annotated[dict[str, Any], Body(description="validated by the signal's schema")],
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Deliver a signal to the saga's wait (docs/sagas.md): 409 `signal_not_expected`
        when the saga does not wait for it now, 422 when the body does not match."""
        sender = sender_of(request)
        record = None
        if idempotency_key is not None:
            fingerprint = request_hash({"signal": name, "body": body})
            record = signal_idempotency(saga_id, name, idempotency_key, fingerprint, sender=sender)
        accepted: SignalAccepted = app.bus.handle(
            SignalSaga(saga_id, name, body, sender, record, role_of(request)), sender=sender
        )
        if accepted.replayed:
            return JSONResponse(
                accepted.as_dict(), status_code=200, headers={"Idempotent-Replayed": "true"}
            )
        return JSONResponse(accepted.as_dict(), status_code=202)

    def _order_status(order_id: str) -> str | None:
        order = views.current_order(app, order_id)
        return None if order is None else order["status"]

    @api.post(
        "/orders/{order_id}/verification",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": s.OrderStatusView, "description": "Decision recorded"},
            200: {"model": s.OrderStatusView, "description": "Replay of an Idempotency-Key"},
            **_errors(403, 404, 409, 422, 503),
        },
        tags=["orders"],
    )
    def post_verification(
        order_id: OrderId,
        body: s.VerificationRequest,
        request: Request,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """A pharmacist's decision on the order's prescription: `approve` lets the saga
        go on, `reject` cancels the order (`verification_rejected`),
        `request_clarification` keeps it waiting. 409 `verification_not_pending` when
        the order does not wait for a decision."""
        if views.current_order(app, order_id) is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        sender = sender_of(request)
        record = None
        if idempotency_key is not None:
            fingerprint = request_hash({"verification": body.model_dump(mode="json")})
            record = signal_idempotency(
                order_id, body.decision, idempotency_key, fingerprint, sender=sender
            )
        command = SignalSaga(
            order_id, body.decision, body.payload(), sender, record, role_of(request)
        )
        try:
            accepted: SignalAccepted = app.bus.handle(command, sender=sender)
        except (SignalNotExpected, UnknownSignal) as exc:
            raise ApiError(
                409,
                "verification_not_pending",
                f"order {order_id} is not waiting for a pharmacist's decision",
            ) from exc
        answer = {"order_id": order_id, "status": _order_status(order_id)}
        if accepted.replayed:
            return JSONResponse(answer, status_code=200, headers={"Idempotent-Replayed": "true"})
        return JSONResponse(answer, status_code=202)

    @api.post(
        "/orders/{order_id}/cancel",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": s.OrderStatusView, "description": "Cancellation under way"},
            **_errors(403, 404, 409, 422, 503),
        },
        tags=["orders"],
    )
    def post_cancel(
        order_id: OrderId,
        body: s.CancelRequest,
        request: Request,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Stop the order until the carrier has picked the parcel up: the saga
        compensates after its step in progress (label voided, stock released,
        prescription cancelled) and the order ends `cancelled` with the given reason.
        Again 202 while it is cancelling; 409 `too_late_to_cancel` after pickup or once
        the order has ended. Idempotent by nature: an `Idempotency-Key` is accepted."""
        if views.current_order(app, order_id) is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        sender = sender_of(request)
        record = None
        if idempotency_key is not None:
            fingerprint = request_hash({"cancel": order_id, "body": body.model_dump(mode="json")})
            record = cancel_idempotency(order_id, idempotency_key, fingerprint, sender=sender)
        command = CancelSaga(order_id, body.reason, body.note, sender, record)
        try:
            accepted = app.bus.handle(command, sender=sender)
        except TooLateToCancel as exc:
            raise ApiError(409, "too_late_to_cancel", str(exc)) from exc
        answer = {"order_id": order_id, "status": _order_status(order_id)}
        if accepted is CancellationAccepted.REPLAYED:
            return JSONResponse(answer, status_code=200, headers={"Idempotent-Replayed": "true"})
        return JSONResponse(answer, status_code=202)

    @api.get(
        "/orders/{order_id}/fhir",
        response_model=None,
        responses={200: {"description": "A FHIR R5 Bundle (collection)"}, **_errors(404, 422)},
        tags=["orders"],
    )
    def get_order_fhir(order_id: OrderId, request: Request) -> JSONResponse:
        """The order as a FHIR R5 Bundle: its MedicationRequest and MedicationDispense."""
        bundle = views.order_fhir(app, order_id)
        if bundle is None:
            raise ApiError(404, "not_found", f"unknown order {order_id!r}")
        audit(request, {order_id: patient_of(bundle)})
        return JSONResponse(bundle, media_type="application/fhir+json")

    @api.delete(
        "/customers/{customer_id}/personal-data",
        response_model=None,
        responses={
            200: {"model": s.PersonalDataErasedView, "description": "Erased (or already)"},
            **_errors(403, 422, 503),
        },
        tags=["customers"],
    )
    def delete_personal_data(customer_id: CustomerId, request: Request) -> JSONResponse:
        """Erase a customer's personal data (admin): their sagas still running are
        cancelled with reason `personal_data_erased`, then their data key is deleted, so
        every patient-data field of their orders reads `"[erased]"` from then on. The
        events themselves stay. Idempotent: again, the same answer."""
        answer = forget_customer(app, customer_id, sender=sender_of(request))
        return JSONResponse(answer)

    @api.post(
        "/webhooks/carrier",
        response_model=None,
        responses={
            200: {"model": s.TrackingAccepted, "description": "Recorded, or a repeat"},
            **_errors(404, 422),
            401: {"model": s.ErrorResponse, "description": "Bad or missing signature"},
        },
        tags=["carrier"],
    )
    async def post_carrier_webhook(
        request: Request,
        signature: Annotated[str | None, Header(alias="Carrier-Signature")] = None,
    ) -> JSONResponse:
        """A carrier's tracking update, signed with FULFILLMENT_CARRIER_WEBHOOK_SECRET:
        `Carrier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
        404 when no secret is configured."""
        secret = app.settings.carrier_webhook_secret
        if secret is None:
            raise ApiError(404, "not_found", "carrier webhooks are not configured")
        raw = await request.body()
        try:
            verify_signature(secret, raw, signature, time.time())
        except InvalidSignature as exc:
            raise ApiError(401, "invalid_signature", str(exc)) from exc
        try:
            update = s.TrackingUpdate.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            raise RequestValidationError(errors) from exc
        command = RecordTrackingUpdate(
            update.event_id,
            update.tracking_number,
            update.status,
            update.occurred_at,
            update.location,
        )
        accepted = await anyio.to_thread.run_sync(lambda: app.bus.handle(command, sender="carrier"))
        return JSONResponse({"accepted": bool(accepted)})

    @api.get(
        "/events",
        response_model=None,
        responses={200: {"model": list[s.EventView]}, **_errors(422)},
        tags=["events"],
    )
    def get_events(
        request: Request,
        after: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
        limit: Limit = 100,
    ) -> JSONResponse:
        """Every event with a position greater than `after`, in position (commit) order.

        A follower that polls with the last position it saw never misses an event.
        """
        events = views.events_after(app, after, limit)
        audit(request, subjects_of(events))  # the orders whose prescription is in the page
        return JSONResponse(events)

    @api.get(
        "/health",
        response_model=None,
        responses={
            200: {"model": s.Health},
            503: {"model": s.ErrorResponse, "description": "Database unavailable"},
        },
        tags=["operations"],
    )
    def health() -> JSONResponse:
        """200 when the database answers; never needs a key."""
        try:
            views.check_database(app)
        except Exception as exc:
            log.warning("health check: database unavailable: %s", type(exc).__name__)
            return error_response(503, "unavailable", "the database does not answer")
        try:
            projections: dict[str, Any] | None = views.projection_status(app)
        except Exception:
            log.exception("health check: projection status unavailable")
            projections = None
        return JSONResponse({"status": "ok", "database": "ok", "projections": projections})

    @api.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **_errors(503),
        },
        tags=["operations"],
    )
    def metrics() -> Response:
        """Prometheus metrics, aggregated through the database (see docs/observability.md)."""
        try:
            payload, content_type = metrics_of_app.render()
        except Exception as exc:
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            return error_response(503, "unavailable", "the database does not answer")
        return Response(payload, media_type=content_type)

    api.include_router(dashboard_router(app, audit))
    _document_security(api, bool(app.settings.api_keys))
    return api


def _document_security(api: FastAPI, required: bool) -> None:
    """With keys configured, the schema says so: bearer auth everywhere but /health."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
            )
            document_extras(schema)  # the 429 of the rate limit, the links
            if required:
                components = schema.setdefault("components", {})
                components.setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                }
                schema["security"] = [{"bearer": []}]
                for path in OPEN_PATHS:
                    for operation in schema["paths"].get(path, {}).values():
                        operation["security"] = []
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
