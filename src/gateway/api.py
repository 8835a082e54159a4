"""The HTTP side: the edge (``EdgeMiddleware``), the one generic handler of the operation
catalogue, Tencent's callbacks, the events stream, the operational routes, and the single
errors -> problem+json mapping. Litestar routes every request; the edge is its middleware.

Handlers authenticate, call the service and shape the answer; they hold no logic of their own.
Every error, the gateway's or Litestar's, leaves through ``problem_response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, TypeVar, cast
from urllib.parse import quote

import msgspec
from litestar import Litestar, Request, Response, Router, get, post, route
from litestar.datastructures import State
from litestar.enums import MediaType, ParamType, ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import catalogue, errors, events, idempotency
from gateway.budget import Share
from gateway.callbacks import ACK, Receiver
from gateway.catalogue import Args, Query
from gateway.catalogue.operations import CATALOGUE
from gateway.health import Breaker
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.models import ROOM_ID_MAX, CallbackAck, CallbackBody, EventsLost, Problem, RoomEvent
from gateway.overload import Overload
from gateway.service import RoomService
from gateway.stores.redis import Redis
from gateway.tenants import Directory, Tenant

log = logging.getLogger("gateway.api")
access = logging.getLogger("gateway.access")
_access_line = AccessLog(access, "request")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

PROBLEM_JSON = "application/problem+json"
MAX_BODY = 64 * 1024
_encode = msgspec.json.Encoder().encode
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")  # fullmatch: "$" would let "id\n" through


class Gateway:
    """What the handlers need, held in app state; ``directory`` is swapped on config reload."""

    def __init__(
        self,
        *,
        directory: Directory | None,
        service: RoomService,
        callbacks: Receiver,
        hub: events.Hub,
        breaker: Breaker,
        metrics: Metrics,
        overload: Overload,
        redis: Redis | None = None,
    ) -> None:
        self.directory = directory
        self.overload = overload
        self.service = service
        self.metrics = metrics
        self.breaker = breaker
        self.redis = redis
        self.callbacks = callbacks
        self.hub = hub
        self.draining = False

    def drain(self) -> None:
        """Stop being ready, and end the event streams (their clients reconnect elsewhere)."""
        self.draining = True
        self.hub.close()

    @property
    def mode(self) -> str:
        """``embedded`` (no Redis), ``shared`` (Redis answering) or ``degraded`` (Redis down)."""
        if self.redis is None:
            return "embedded"
        return "degraded" if self.breaker.degraded else "shared"

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def _gateway(state: State) -> Gateway:
    gateway: Gateway = state.gateway
    return gateway


# ---------------------------------------------------------------------- errors


def problem_response(exc: errors.GatewayError, request_id: str | None) -> Reply:
    """The RFC 9457 document for an error, with its status and headers."""
    body = Problem(
        type=f"urn:live-room-gateway:problem:{exc.code}",
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        code=exc.code,
        upstream_code=msgspec.UNSET if exc.upstream_code is None else exc.upstream_code,
        upstream_request_id=exc.upstream_request_id or msgspec.UNSET,
        request_id=request_id or msgspec.UNSET,
        may_have_applied=True if exc.may_have_applied else msgspec.UNSET,
    )
    headers: dict[str, str] = {"idempotent-replayed": "true"} if exc.replayed else {}
    if exc.retry_after is not None or exc.status in (429, 503):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after or 1)))
    if exc.upstream_request_id:
        headers["x-upstream-request-id"] = exc.upstream_request_id
    return Reply(_encode(body), status_code=exc.status, media_type=PROBLEM_JSON, headers=headers)


def _from_litestar(exc: HTTPException) -> errors.GatewayError:
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        reasons = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra)
        return errors.InvalidRequest(reasons or str(exc.detail))
    mapped: dict[int, type[errors.GatewayError]] = {
        400: errors.InvalidRequest,
        404: errors.RouteNotFound,
        405: errors.MethodNotAllowed,
        413: errors.PayloadTooLarge,
    }
    cls = mapped.get(exc.status_code)
    if cls is None:
        return errors.InternalError("unexpected error")
    return cls(str(exc.detail))


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Reply:
    """The one exception handler: gateway errors as they are, Litestar's mapped, others a 500."""
    if isinstance(exc, errors.GatewayError):
        mapped = exc
    elif isinstance(exc, HTTPException):
        mapped = _from_litestar(exc)
    else:
        log.error("unhandled error", exc_info=exc)
        mapped = errors.InternalError("the gateway failed to handle this request")
    scope = request.scope
    state = scope.setdefault("state", {})
    if mapped.upstream_code is not None:
        state["upstream_code"] = mapped.upstream_code
    unmatched = "request_id" not in state  # refused by the router: no route's middleware ran
    rid = request_id(scope["headers"], state) if unmatched else b""
    if unmatched:
        mapped = _refused_path(scope) or mapped
    response = problem_response(mapped, state.get("request_id"))
    allow = exc.headers.get("allow") if isinstance(exc, HTTPException) and exc.headers else None
    if allow:  # RFC 9110: a 405 says which methods the resource takes
        response.headers["allow"] = allow
    if unmatched:
        response.headers["x-request-id"] = rid.decode()
        _record(scope, state, {"status": response.status_code}, None, _gateway(request.app.state).metrics)
    return response


# ---------------------------------------------------------------------- edge middleware


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    """A header's first value (b"" if absent), read from raw ASGI headers: ``request.headers``
    builds a mapping of all of them first, on every request."""
    return next((v for k, v in headers if k == name), b"")


def _headers(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of a header, as sent."""
    return [v for k, v in headers if k == name]


class Reply(Response[bytes | None]):
    """A response of bytes (or none), sent as Litestar's ``ASGIResponse`` sends one (the headers,
    then content-type and content-length unless the status allows no body) without building one:
    at one caller that took ~200 µs of a forwarded write's ~700 µs in the gateway. Litestar asks
    every Response for its ASGI app (``to_asgi_response``); this one is its own."""

    def __init__(
        self,
        content: bytes | None,
        *,
        status_code: int,
        media_type: MediaType | str = MediaType.JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Response.__init__'s checks against typing.Mapping took ~5 µs a request (a cache hit is
        # ~60); the attributes are those Litestar reads of a Response it did not build itself.
        self.content = content
        self.status_code = status_code
        self.media_type = media_type
        self.headers = headers if headers is not None else {}
        self.cookies, self.background, self.encoding, self.response_type_encoders = [], None, "utf-8", {}

    # Litestar only calls the ASGI app it gets; its declared ASGIResponse would cost the building.
    def to_asgi_response(  # type: ignore[override]
        self, app: Litestar | None, request: Request[Any, Any, Any], **_: Any
    ) -> ASGIApp:
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = self.status_code or 200
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        body = self.content or b""
        if status in (204, 304) or status < 200:
            body = b""
        else:
            media_type = self.media_type.value if isinstance(self.media_type, Enum) else str(self.media_type)
            headers.append((b"content-type", media_type.encode("latin-1")))
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class EdgeMiddleware(ASGIMiddleware):
    """The edge, as Litestar middleware on every route: request ids in and out, refusal of paths
    that would decode into other routes, and the request's metrics and access-log line. A request
    Litestar's router refuses (404, 405) never reaches a route's middleware: ``handle_error``
    gives it its id and counts it (route ``unmatched``). An overloaded replica's refusals come
    before the app, from the server (``admission``): the edge never sees them.

    Request ids the gateway makes are 32 hex digits: a random per-process half and a counter
    (unique across replicas without a system call per request, unlike ``uuid4``)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, *, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = self._clock()
        state = scope.setdefault("state", {})
        rid = request_id(scope["headers"], state)
        sent: dict[str, Any] = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                headers = message.get("headers", [])
                sent["upstream"] = _header(headers, b"x-upstream-request-id")
                message["headers"] = [*headers, (b"x-request-id", rid)]
            await send(message)

        try:
            if (refused := _refused_path(scope)) is not None:
                await problem_response(refused, state["request_id"])(scope, receive, send_with_id)
            else:
                await next_app(scope, receive, send_with_id)
        finally:
            _record(scope, state, sent, self._clock() - started, self._metrics)


def _refused_path(scope: Scope) -> errors.GatewayError | None:
    """A path with an encoded ``/`` or ``\\``: the server decodes it before routing, so
    ``rooms/a%2Fmetadata`` would address room ``a``'s metadata (or no route at all)."""
    raw_path = (scope.get("raw_path") or b"").lower()
    if b"%2f" in raw_path or b"%5c" in raw_path:
        return errors.InvalidRequest("room ids containing '/' or '\\' cannot be addressed")
    return None


_ID_PREFIX, _ID_COUNTER = secrets.token_hex(8), itertools.count(1)


def request_id(headers: Iterable[tuple[bytes, bytes]], state: dict[str, Any]) -> bytes:
    """The request's id (the caller's ``X-Request-Id`` if it is one we accept, else a new one),
    kept in the scope's state for the handlers and logs."""
    given = _header(headers, b"x-request-id")
    value = given.decode() if _REQUEST_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
    state["request_id"] = value
    return value.encode()


def _record(scope: Scope, state: dict[str, Any], sent: dict[str, Any], elapsed: float | None, metrics: Metrics) -> None:
    """The request's metrics and access-log line (``elapsed`` unknown: no duration observed)."""
    route = scope.get("path_template") or "unmatched"
    method = scope.get("method", "")
    if method not in _METHODS:
        method = "other"
    status = int(sent["status"])
    metrics.child(metrics.requests, route, method, str(status)).inc()
    if elapsed is not None:
        metrics.child(metrics.request_seconds, route, method).observe(elapsed)
    if access.isEnabledFor(logging.INFO):  # (AccessLog checks too; this skips building the fields)
        upstream = sent.get("upstream")
        fields = {
            "request_id": state.get("request_id"),
            "trace_id": state.get("trace_id"),  # (set when the request is traced: tracing.ServerSpans)
            "span_id": state.get("span_id"),
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": None if elapsed is None else round(elapsed * 1000, 3),
            "tenant": state.get("tenant"),
            "upstream_code": state.get("upstream_code"),
            "upstream_request_id": upstream.decode("latin-1") if upstream else None,
        }
        _access_line({k: v for k, v in fields.items() if v is not None})


# ---------------------------------------------------------------------- handlers

T = TypeVar("T")


_PATH_ORDER = {"tenant": 0, "room_id": 1}


def _parameter(
    name: str, description: str, *, schema: Schema | None = None, header: bool = False, required: bool = False
) -> Parameter:
    """A documented query parameter (or header) of a handler that reads it itself."""
    return Parameter(
        name=name,
        param_in=ParamType.HEADER if header else ParamType.QUERY,
        required=required,
        deprecated=False,
        description=description,
        schema=schema or Schema(type=OpenAPIType.STRING),
    )


BODY_SCHEMAS: dict[str, Any] = {}  # request bodies' and events' JSON Schemas, by component name (``_documented``)
_SEGMENT = r"^[^/\\\x00-\x1f\x7f]+$"  # a path segment the gateway serves (the edge refuses %2F, %5C, controls)
_PATH_PARAMETERS: dict[str, tuple[str, Any]] = {
    "tenant": ("A configured tenant's name", Annotated[str, msgspec.Meta(pattern=_SEGMENT)]),
    "room_id": (
        f"1-{ROOM_ID_MAX} UTF-8 bytes without control characters; an id with '/' or '\\' cannot be "
        "addressed (its encoded %2F or %5C is refused with 400)",
        Annotated[str, msgspec.Meta(min_length=1, max_length=ROOM_ID_MAX, pattern=_SEGMENT)],
    ),
}
_KEYWORDS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minItems": "min_items",
    "maxItems": "max_items",
}


def _schema(annotation: Any) -> Schema:
    """The OpenAPI schema of a parameter's type, constraints included, as msgspec makes it."""
    return _from_json_schema(msgspec.json.schema(annotation))


def _from_json_schema(schema: dict[str, Any]) -> Schema:
    keywords = {ours: schema[theirs] for theirs, ours in _KEYWORDS.items() if theirs in schema}
    items = _from_json_schema(schema["items"]) if "items" in schema else None
    return Schema(type=OpenAPIType(schema["type"]), items=items, **keywords)


def openapi_document(app: Litestar) -> OpenAPI:
    """Litestar's document, tidied for generated clients (``tidy_openapi``) the first time it is
    asked for: building it takes ~65 ms, which every app made for a test would pay at start-up."""
    document = app.openapi_schema
    if not app.state.get("openapi_tidied"):
        tidy_openapi(document)
        app.state["openapi_tidied"] = True
    return document


async def _tidied_first(request: Request[Any, Any, Any]) -> None:
    """The schema routes' before-request hook: the document they serve is the tidied one."""
    openapi_document(request.app)


def openapi_router() -> Router:
    """Litestar's router for ``/schema``, serving the tidied document."""
    return Router("/schema", route_handlers=[], include_in_schema=False, before_request=_tidied_first)


def tidy_openapi(document: OpenAPI) -> OpenAPI:
    """What Litestar's generated document needs for generated clients: request bodies as named
    components, no body on 204 answers, and one-armed ``oneOf``s (Litestar's rendering of an
    optional field) flattened."""
    if document.components.schemas is not None:
        document.components.schemas.update(BODY_SCHEMAS)
    for item in (document.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.delete, item.patch):
            if operation is None:
                continue
            for status, response in (operation.responses or {}).items():
                if status == "204" and isinstance(response, OpenAPIResponse):
                    response.content = None
    _flatten(document.components.schemas)
    return document


def _flatten(node: Any) -> None:
    """Replace each ``oneOf`` of a single schema by that schema, everywhere below ``node``."""
    if isinstance(node, dict):
        for value in node.values():
            _flatten(value)
    elif isinstance(node, list):
        for value in node:
            _flatten(value)
    elif isinstance(node, Schema):
        if node.one_of is not None and len(node.one_of) == 1 and isinstance(node.one_of[0], Schema):
            only = node.one_of[0]
            node.one_of = None
            for name in ("type", "enum", "items", "format", "properties", "required", "pattern", "const"):
                if getattr(node, name, None) is None and getattr(only, name, None) is not None:
                    setattr(node, name, getattr(only, name))
        for name in ("properties", "items", "one_of", "any_of", "all_of"):
            _flatten(getattr(node, name, None))


def _component(annotation: Any, name: str) -> Reference:
    """A reference to ``annotation``'s JSON Schema, named ``name`` among the document's components
    with every Struct it uses (generated clients name their types after them). A Struct's
    ``json_schema_extra`` adds the keywords of a rule over its fields together."""
    (schema,), components = msgspec.json.schema_components([annotation], ref_template="#/components/schemas/{name}")
    if "$ref" not in schema:
        components[name] = schema
    components[name].update(getattr(annotation, "json_schema_extra", {}))
    BODY_SCHEMAS.update(components)
    return Reference(ref=f"#/components/schemas/{name}")


def _documented(
    body: type[msgspec.Struct] | None = None,
    *parameters: Parameter,
    stream: Any = None,
    headers: Mapping[str, OpenAPIHeader] | None = None,
) -> type[Operation]:
    """An Operation documenting what the handler reads itself: ``body`` as the JSON request
    body, ``parameters`` (header or query parameters), path parameters in the path's order with
    their limits (``_PATH_PARAMETERS``), and ``stream`` as one event of a 200 text/event-stream;
    and ``headers`` on its success answer (a write's ``Idempotent-Replayed``).

    Handlers take only the request (each parameter Litestar injects costs CPU on every call) and
    decode bodies themselves (``_decode``):
    strictly typed ("1" is not an integer), in one pass, every malformed input a 400. Litestar's
    own body parsing is lax and lets a RecursionError or UnicodeDecodeError escape as a 500.
    """
    request_body = None
    if body is not None:
        media = OpenAPIMediaType(schema=_component(body, body.__name__))
        request_body = RequestBody(content={"application/json": media}, required=True)
    event = None if stream is None else _component(stream, "StreamEvent")

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            if request_body is not None:
                self.request_body = request_body
            for parameter in self.parameters or []:
                if isinstance(parameter, Parameter) and parameter.name in _PATH_PARAMETERS:
                    parameter.description, annotation = _PATH_PARAMETERS[parameter.name]
                    parameter.schema = _schema(annotation)
            response = (self.responses or {}).get("200")
            if event is not None and isinstance(response, OpenAPIResponse) and response.content:
                response.content["text/event-stream"].schema = event
            for code, answer in (self.responses or {}).items():
                if headers and code.startswith("2") and isinstance(answer, OpenAPIResponse):
                    answer.headers = {**(answer.headers or {}), **headers}
            params = [*(self.parameters or []), *parameters]
            self.parameters = sorted(params, key=lambda p: _PATH_ORDER.get(getattr(p, "name", ""), 2))

    return Documented


async def _body(request: Request[Any, Any, Any]) -> bytes:
    """The body, read from ASGI ``receive`` (``Request.body`` cost ~7% of a forwarded write's
    CPU); over MAX_BODY bytes is a 413, checked as the chunks arrive."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequest("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]  # an http.request message
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.PayloadTooLarge(f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _decode(raw: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        if "Expected `int`, got `float`" in str(exc):  # (34.0: the document's integer, JSON Schema's too)
            with contextlib.suppress(msgspec.ValidationError):
                return cast(T, msgspec.convert(_whole_floats(msgspec.json.decode(raw)), decoder.type))
        raise errors.InvalidRequest(f"invalid body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise errors.InvalidRequest(f"body is not valid JSON: {exc}") from None


def _whole_floats(value: Any) -> Any:
    """``value`` with every float that has no fraction (``34.0``, ``3.4e1``) as an int: JSON
    Schema's ``integer`` is any number without a fraction. Strings stay strings (``"34"`` is not
    an integer), and ``34.5`` stays a float, which an integer field refuses."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats(v) for v in value]
    return value


_ERRORS = {
    status: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, description=text, generate_examples=False)
    for status, text in {
        400: "Invalid request (invalid_request)",
        401: "Missing or unknown bearer token (unauthenticated)",
        403: "Caller may not use this tenant or scope (forbidden)",
        404: "Unknown tenant, room or metadata keys",
        409: "A room with this id exists (room_exists), or this Idempotency-Key's first request is still "
        "running (idempotency_key_in_use)",
        413: "Request body over 64 KiB (payload_too_large)",
        422: "Room metadata limit exceeded (metadata_limit_exceeded), a room's 5 admins (admin_limit_exceeded), "
        "or an Idempotency-Key sent with another request (idempotency_key_reused)",
        429: "Budget exhausted within the wait cap, or Tencent rate-limited (rate_limited)",
        502: "Tencent unavailable or rejected the call (upstream_unavailable, upstream_rejected)",
        503: "Tencent rejected the gateway's credentials (upstream_misconfigured), or this replica is "
        "overloaded (overloaded: its event loop lags, or it has GATEWAY_MAX_IN_FLIGHT requests in flight; "
        "Retry-After, and the connection closes: retry, another replica may answer)",
        504: "Tencent did not answer within the deadline (upstream_timeout)",
    }.items()
}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


def _authorize(request: Request[Any, Any, Any], gateway: Gateway, tenant: str, scope: str) -> tuple[Tenant, Share]:
    """The tenant, if the bearer may use it with this scope, and the caller's share of its budget."""
    if gateway.directory is None:
        raise errors.InternalError("configuration not loaded")
    raw = _header(request.scope["headers"], b"authorization")
    scheme, _, token = raw.decode("latin-1").partition(" ")
    caller = gateway.directory.authenticate(token.strip() if scheme.lower() == "bearer" else "")
    resolved = gateway.directory.authorize(caller, tenant, scope)
    state = request.scope.setdefault("state", {})
    state["tenant"], state["caller"] = resolved.name, caller.name  # configured names: safe to log and trace
    return resolved, Share(caller.name, caller.weight)


def _upstream_header(request_id: str | None) -> dict[str, str]:
    return {"x-upstream-request-id": request_id} if request_id else {}


@post(
    "/v1/callbacks/tencent",
    summary="Tencent's callbacks (webhooks): verified, deduplicated, the cached room invalidated",
    description=(
        "Tencent's query parameters, names in any case: SdkAppid, CallbackCommand, contenttype, "
        "ClientIP, OptPlatform, RequestTime and Sign (sha256 of the tenant's callback token and "
        "RequestTime). No bearer token: the signature is the authentication."
    ),
    status_code=200,
    responses={
        200: ResponseSpec(
            data_container=CallbackAck, description="Accepted (or a duplicate, dropped)", generate_examples=False
        ),
        400: _ERRORS[400],
        401: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description="Unknown SDKAppID, stale RequestTime or bad Sign (unauthenticated)",
            generate_examples=False,
        ),
        413: _ERRORS[413],
    },
    tags=["callbacks"],
    operation_id="tencentCallback",
    operation_class=_documented(
        CallbackBody,
        *(
            _parameter(name, text, required=name in ("SdkAppid", "CallbackCommand", "RequestTime", "Sign"))
            for name, text in (
                ("SdkAppid", "the tenant's SDKAppID"),
                ("CallbackCommand", "e.g. Live.CallbackAfterDestroyRoom"),
                ("contenttype", "json"),
                ("ClientIP", "the client's IP, when there was one"),
                ("OptPlatform", "RESTAPI, Web, Android, iOS, ..."),
                ("RequestTime", "Unix seconds; within 60 s of the gateway's clock"),
                ("Sign", "hex sha256 of the tenant's callback token followed by RequestTime"),
            )
        ),
    ),
)
async def tencent_callback(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway = _gateway(request.app.state)
    if gateway.directory is None:
        raise errors.InternalError("configuration not loaded")
    query = {key.lower(): value for key, value in request.query_params.items()}
    callback = gateway.callbacks.verify(gateway.directory, query, await _body(request))
    await gateway.callbacks.accept(callback)
    return Response(ACK, media_type=MediaType.JSON)


_EVENT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"
_EVENT_ID = Schema(type=OpenAPIType.STRING, pattern=r"^([0-9]{1,20}(-[0-9]{1,20})?)?$")  # (empty: absent)
_ROOM_EVENT = _component(RoomEvent, "RoomEvent")
_EVENTS_LOST = _component(EventsLost, "EventsLost")


class EventFrame(msgspec.Struct, kw_only=True, tag_field="event", tag="message"):
    """An event of the stream as an SSE client reads it (an EventSource ``message``): its id and,
    as its data, a RoomEvent's JSON text (SSE data is text: the client parses it)."""

    id: Annotated[str, msgspec.Meta(pattern=_EVENT_ID_PATTERN)]
    data: Annotated[
        str,
        msgspec.Meta(
            extra_json_schema={"contentMediaType": "application/json", "contentSchema": {"$ref": _ROOM_EVENT.ref}}
        ),
    ]


class LostFrame(msgspec.Struct, kw_only=True, tag_field="event", tag="lost"):
    """``event: lost``: its data an EventsLost's JSON text, its id the newest event no longer
    kept (when known; else the client keeps the last id it had)."""

    data: Annotated[
        str,
        msgspec.Meta(
            extra_json_schema={"contentMediaType": "application/json", "contentSchema": {"$ref": _EVENTS_LOST.ref}}
        ),
    ]
    id: Annotated[str, msgspec.Meta(pattern=_EVENT_ID_PATTERN)] | msgspec.UnsetType = msgspec.UNSET


_LAST_EVENT_ID = _parameter(
    "last-event-id",
    "Resume after this event id (an SSE client sends it when it reconnects; empty: as if absent)",
    schema=_EVENT_ID,
    header=True,
)
_LAST_EVENT_ID_QUERY = _parameter(
    "last_event_id",
    "As the Last-Event-ID header (which wins; each given one must be an event id), for clients that cannot set headers",
    schema=_EVENT_ID,
)
_COMMANDS = _parameter(
    "command",
    "Only events of these callback commands (repeat it for several; all when absent)",
    schema=_schema(
        Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]], msgspec.Meta(max_length=32)]
    ),
)
_EVENTS_DESCRIPTION = """Server-Sent Events: every callback the gateway accepted for the tenant, as
`id: <id>` and `data: {"command", "room_id", "event_time", "payload"}` (payload: Tencent's body).
Resume with `Last-Event-ID`: nothing still kept is lost. Idle streams get a `: keep-alive`
comment every GATEWAY_EVENTS_HEARTBEAT seconds. A subscriber that resumes from, or falls behind
to, events no longer kept gets `event: lost` with data `{"code": "events_lost", "after",
"through", "detail"}`, then the oldest events still kept. A replica that shuts down ends its
streams; reconnect (to any replica) with Last-Event-ID."""


def _position(request: Request[Any, Any, Any]) -> str | None:
    """Where a subscriber resumes: Last-Event-ID, else ``?last_event_id=``, as ``<ms>-<seq>``.
    Each one given must be an event id (empty is absent; the header without HTTP's whitespace)."""
    header = _header(request.scope["headers"], b"last-event-id").decode("latin-1").strip()
    given = [_event_id(raw) for raw in (header, request.query_params.get("last_event_id", "")) if raw]
    return given[0] if given else None


def _event_id(raw: str) -> str:
    try:
        ms, seq = events.order(raw)
    except ValueError:
        raise errors.InvalidRequest("Last-Event-ID: not an event id (<milliseconds>-<sequence>)") from None
    return f"{ms}-{seq}"


@get(
    "/v1/tenants/{tenant:str}/events",
    summary="The tenant's room events (Tencent's callbacks) as a Server-Sent Events stream",
    description=_EVENTS_DESCRIPTION,
    responses={
        200: ResponseSpec(
            data_container=str, media_type="text/event-stream", description="The stream", generate_examples=False
        ),
        **{status: _ERRORS[status] for status in (400, 401, 403, 404)},
        503: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description="The replica is draining (draining), serves its maximum of streams (too_many_subscribers) "
            "or is overloaded (overloaded)",
            generate_examples=False,
        ),
    },
    security=_SECURITY,
    tags=["events"],
    operation_id="streamEvents",
    operation_class=_documented(None, _LAST_EVENT_ID, _LAST_EVENT_ID_QUERY, _COMMANDS, stream=EventFrame | LostFrame),
    media_type="text/event-stream",
)
async def tenant_events(request: Request[Any, Any, Any]) -> Stream:
    gateway = _gateway(request.app.state)
    resolved, _ = _authorize(request, gateway, request.path_params["tenant"], "events")
    position = _position(request)
    commands = request.query_params.getall("command", [])
    if len(commands) > 32 or any(not c or len(c) > 128 for c in commands):
        raise errors.InvalidRequest("command: at most 32, each 1 to 128 characters")
    hub = gateway.hub
    if gateway.draining or hub.closed:
        raise errors.Draining("this replica is shutting down; reconnect with Last-Event-ID", retry_after=1)
    if hub.full():
        raise errors.TooManySubscribers(
            f"this replica serves {hub.max_subscribers} event streams already; try another", retry_after=5
        )
    stream = events.follow(hub, str(resolved.sdkappid), resolved.name, position=position, commands=frozenset(commands))
    return Stream(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


# ---------------------------------------------------------------------- the catalogue's routes


def _query_parameter(query: Query) -> Parameter:
    schema = _schema(query.annotation)
    return _parameter(query.name, query.description, schema=schema, header=query.header, required=query.required)


_IDEMPOTENCY_KEY = _parameter(
    "Idempotency-Key",
    "Makes retrying this write safe (README: Retrying writes): the first request with a key runs; a repeat "
    "with the same method, path, query and body gets its answer again, with Idempotent-Replayed: true, and "
    "Tencent is not called. 1-255 printable ASCII characters, bare or as a quoted string; a key belongs to "
    "the caller and tenant and is kept GATEWAY_IDEMPOTENCY_TTL (24 h).",
    schema=Schema(type=OpenAPIType.STRING, pattern=r'^(?:[!#-~][ -~]{0,254}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$'),
    header=True,
)
_REPLAYED = OpenAPIHeader(
    description="true when this is the kept answer of an earlier request with the same Idempotency-Key "
    "(Tencent was not called again); absent otherwise",
    schema=Schema(type=OpenAPIType.STRING, enum=["true"]),
)
_REPEATABLE = (
    "Repeatable: applying it twice leaves Tencent as applying it once, so the gateway retries it after a "
    "transient failure."
)
_NOT_REPEATABLE = (
    "Not repeatable: a second application is visible. The gateway retries it only when an attempt certainly "
    "did not reach Tencent; after a timeout or a connection lost once the request was sent, it answers "
    "504/502 at once with `may_have_applied: true`. Send an Idempotency-Key to retry it safely."
)


def _route_path(op: catalogue.Operation) -> str:
    return "/v1/tenants/{tenant:str}" + op.path.replace("{room_id}", "{room_id:str}")


def catalogue_route(op: catalogue.Operation) -> HTTPRouteHandler:
    """The route an operation of the catalogue declares: authorize, decode, run, answer."""
    decoder = None if op.body is None else msgspec.json.Decoder(op.body)
    success: dict[int, ResponseSpec] = {}
    if op.reply is not None:
        success[op.status] = ResponseSpec(data_container=op.reply, description=op.summary, generate_examples=False)

    async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
        gateway = _gateway(request.app.state)
        params = request.path_params
        scope = request.scope
        tenant, share = _authorize(request, gateway, params["tenant"], op.scope)
        key = None if op.method == "GET" else idempotency.parse_key(_headers(scope["headers"], b"idempotency-key"))
        raw = await _body(request) if decoder is not None or key is not None else b""
        body = None if decoder is None else _decode(raw, decoder)
        query = {name: request.query_params.getall(name) for name in request.query_params}
        no_cache = op.cache == "room" and b"no-cache" in _header(scope["headers"], b"cache-control").lower()
        args = Args(room_id=params.get("room_id", ""), query=query, body=body, no_cache=no_cache)
        keyed = None
        if key is not None:
            path = scope.get("raw_path") or scope["path"].encode()
            keyed = idempotency.keyed(
                caller=share.name,
                tenant=tenant.name,
                key=key,
                method=op.method,
                path=path,
                query=scope["query_string"],
                body=raw,
            )
        done = await gateway.service.run(op, tenant, args, share=share, key=keyed)
        headers = _upstream_header(done.upstream_request_id)
        if done.replayed:
            headers["idempotent-replayed"] = "true"
        if done.cache is not None:
            headers["x-cache"] = done.cache
        if op.status == 201:
            headers["location"] = f"/v1/tenants/{params['tenant']}/rooms/{quote(args.room_id, safe='')}"
        if done.body is None:
            return Reply(None, status_code=204, headers=headers)
        return Reply(done.body, status_code=op.status, media_type=MediaType.JSON, headers=headers)

    handler.__name__ = handler.__qualname__ = op.id
    if op.status == 204:  # (Litestar checks that a 204 handler returns no body)
        handler.__annotations__["return"] = "Response[None]"
    return route(
        _route_path(op),
        http_method=[op.method],
        status_code=op.status,
        summary=op.summary,
        description=None if op.method == "GET" else _REPEATABLE if op.repeatable else _NOT_REPEATABLE,
        responses={**success, **_ERRORS},
        security=_SECURITY,
        tags=[op.path.split("/")[3] if op.path.count("/") > 2 else "rooms"],
        operation_id=op.id,
        operation_class=_documented(
            op.body,
            *(_query_parameter(q) for q in op.query),
            *(() if op.method == "GET" else (_IDEMPOTENCY_KEY,)),
            headers=None if op.method == "GET" else {"Idempotent-Replayed": _REPLAYED},
        ),
    )(handler)


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    mode: str | None = None


@get("/livez", summary="Process is up", tags=["operations"], operation_id="livez")
async def livez() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    summary="Ready for traffic: config loaded, not draining, not overloaded for long (degraded Redis mode is ready)",
    tags=["operations"],
    operation_id="readyz",
    responses={503: ResponseSpec(data_container=Health, description="Not ready", generate_examples=False)},
)
async def readyz(state: State) -> Response[Health]:
    gateway = _gateway(state)
    if gateway.directory is None or gateway.draining:
        return Response(Health(status="draining" if gateway.draining else "starting"), status_code=503)
    if not gateway.overload.ready(asyncio.get_running_loop().time()):
        return Response(Health(status="overloaded", mode=gateway.mode), status_code=503)
    return Response(Health(status="ready", mode=gateway.mode))


@get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    tags=["operations"],
    operation_id="metrics",
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics(state: State) -> Response[bytes]:
    return Response(generate_latest(_gateway(state).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def options_route(path: str, methods: Iterable[str]) -> HTTPRouteHandler:
    """``OPTIONS`` for a path several operations share, with every method in ``Allow``.
    Litestar makes one itself for each route handler it is given, and keeps the first one's
    when it merges several handlers of one path: its ``Allow`` named that handler's method only."""
    allow = ", ".join(sorted({*methods, "OPTIONS"}))

    async def options() -> Reply:
        return Reply(None, status_code=204, headers={"allow": allow})

    options.__annotations__["return"] = "Response[None]"  # (Litestar checks that a 204 handler has no body)
    return route(path, http_method=["OPTIONS"], status_code=204, include_in_schema=False, name=f"options {path}")(
        options
    )


def _catalogue_routes() -> list[HTTPRouteHandler]:
    """Each operation's route, after each path's ``OPTIONS`` (registered first, so that Litestar
    does not make its own)."""
    paths: dict[str, set[str]] = {}
    for op in CATALOGUE:
        paths.setdefault(_route_path(op), set()).add(op.method)
    return [*(options_route(path, methods) for path, methods in paths.items()), *map(catalogue_route, CATALOGUE)]


ROUTES = [
    *_catalogue_routes(),
    tencent_callback,
    tenant_events,
    livez,
    readyz,
    metrics,
]
