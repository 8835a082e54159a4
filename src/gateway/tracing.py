"""Traces (SPEC §11): W3C trace context in, OpenTelemetry spans out over OTLP/HTTP.

Off unless an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``) and ``OTEL_SDK_DISABLED`` is not true. Off, the
app is built exactly as without this module: no middleware, no span code on any path.
On, ``create_app`` builds the traced variants below in place of the plain collaborators, so the
request path stays straight-line code either way.

A request's spans::

    SERVER  GET /v1/tenants/{tenant}/rooms/{room_id}   (ServerSpans)
      cache room                                        hit | miss | coalesced | stale
        budget wait                                     the API, waited seconds, granted | refused | paused
        CLIENT get_room_info                            one per attempt: ErrorCode, RequestId, status
      callback / publish event                          on the callback route

Nothing secret is recorded: no URL with its query (the upstream's carries the UserSig; a
callback's carries its Sign), no header values, no exception messages or stacks. An unsampled
request starts no inner spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from gateway import errors
from gateway.budget import Budget, Paused, Refusal, SendNow, Share, Slot
from gateway.cache import CacheResult, Filled, RoomCache
from gateway.callbacks import Callback, Receiver
from gateway.events import EventLog, Page
from gateway.models import Envelope
from gateway.tenants import Tenant
from gateway.transport import LaunchedCall, OnTime, Reply, TooLate
from gateway.upstream import LIVE, Api, Upstream
from gateway.upstream import Send as UpstreamSend

R = TypeVar("R", bound=Envelope)
SERVICE_NAME = "live-room-gateway"
_TRUE = ("true", "1", "yes")
_SAMPLERS: dict[str, Callable[[float], sampling.Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda _: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
}
_BSP = {  # OTEL_BSP_* -> BatchSpanProcessor's argument
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
}


# ---------------------------------------------------------------------- configuration


def endpoint(env: Mapping[str, str]) -> str | None:
    """Where spans go (None: tracing is off), from the standard variables."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return None
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


def _pairs(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (W3C Baggage style, values percent-encoded), as OTEL_RESOURCE_ATTRIBUTES
    and OTEL_EXPORTER_OTLP_HEADERS spell them."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {unquote(k).strip(): unquote(v).strip() for k, v in pairs if k.strip()}


def sampler(env: Mapping[str, str]) -> sampling.Sampler:
    """OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default: parentbased_always_on)."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    if name not in _SAMPLERS:
        raise errors.ConfigError(f"invalid setting OTEL_TRACES_SAMPLER: {name!r} (one of {', '.join(_SAMPLERS)})")
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise errors.ConfigError(f"invalid setting OTEL_TRACES_SAMPLER_ARG: {raw!r} (a ratio from 0 to 1)")
    return _SAMPLERS[name](ratio)


def _batch_options(env: Mapping[str, str]) -> dict[str, int]:
    options: dict[str, int] = {}
    for name, argument in _BSP.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdigit() or (int(raw) == 0 and argument != "schedule_delay_millis"):
            raise errors.ConfigError(f"invalid setting {name}: {raw!r} (a positive integer)")
        options[argument] = int(raw)
    return options


def provider_from_env(env: Mapping[str, str]) -> TracerProvider | None:
    """This app's tracer provider (None: tracing off), from ``env`` alone: the SDK would read
    os.environ, and tests build many apps with their own settings in one process."""
    where = endpoint(env)
    if where is None:
        return None
    # The exporter (and the requests library under it) is loaded only when tracing is on.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    attributes: dict[str, str] = {"service.name": SERVICE_NAME}
    attributes.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    headers = _pairs(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    chosen, batching = sampler(env), _batch_options(env)  # (a bad value stops start-up before anything runs)
    exporter = OTLPSpanExporter(endpoint=where, headers=headers or None)
    try:
        processor = BatchSpanProcessor(
            exporter,
            max_queue_size=batching.get("max_queue_size"),
            schedule_delay_millis=batching.get("schedule_delay_millis"),
            max_export_batch_size=batching.get("max_export_batch_size"),
            export_timeout_millis=batching.get("export_timeout_millis"),
        )
    except ValueError as exc:  # e.g. a batch larger than the queue
        raise errors.ConfigError(f"invalid OTEL_BSP_* settings: {exc}") from exc
    provider = TracerProvider(resource=Resource.create(attributes), sampler=chosen)
    provider.add_span_processor(processor)
    return provider


async def shutdown(provider: TracerProvider) -> None:
    """Export what is queued and stop (blocking HTTP in the SDK: off the event loop)."""
    await asyncio.to_thread(provider.shutdown)


# ---------------------------------------------------------------------- the SERVER span

_PARAM = re.compile(r"\{(\w+):\w+\}")  # Litestar's "{room_id:str}": the template says "{room_id}"
_BARE = r"{\1}"
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_FROM_STATE = (("tenant", "gateway.tenant"), ("caller", "gateway.caller"), ("request_id", "gateway.request_id"))


def _carrier(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The trace-context headers, as W3C Trace Context reads repeated ones: two ``traceparent``
    headers are invalid (a new trace, and the ``tracestate`` goes with it); repeated
    ``tracestate`` or ``baggage`` headers are one list, joined by commas."""
    carrier: dict[str, str] = {}
    repeated_parent = False
    for key, value in headers:
        if key not in _CONTEXT_HEADERS:
            continue
        name, text = key.decode("latin-1"), value.decode("latin-1")
        if name not in carrier:
            carrier[name] = text
        elif name == "traceparent":
            repeated_parent = True
        else:
            carrier[name] = f"{carrier[name]},{text}"
    if repeated_parent:
        del carrier["traceparent"]
        carrier.pop("tracestate", None)
    return carrier


class ServerSpans(ASGIMiddleware):
    """The SERVER span of every routed request, as Litestar middleware (outside the edge): its
    parent is the caller's ``traceparent``/``tracestate`` (the global propagator: W3C Trace
    Context unless OTEL_PROPAGATORS says otherwise), none or a malformed one starts a new trace.
    Named by the route template; the operation id, tenant, caller, request id and status are
    attributes; the trace and span ids go to the scope's state for the access log.

    Ours rather than Litestar's OpenTelemetry plugin: the plugin's ASGI instrumentation costs
    ~100 µs of CPU per request even when the request is not sampled (README: Traces), and starts
    its span before routing, named by the raw path."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._names: dict[tuple[str, str], str] = {}

    def _name(self, method: str, template: str) -> str:
        name = self._names.get((method, template))
        if name is None:
            name = self._names[(method, template)] = f"{method} {_PARAM.sub(_BARE, template)}"
        return name

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        carrier = _carrier(scope["headers"])
        parent = propagate.extract(carrier) if carrier else None
        method = str(scope.get("method", ""))
        name = self._name(method, str(scope.get("path_template", "")))
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        if not span.is_recording():
            with trace.use_span(span, end_on_exit=True):
                await next_app(scope, receive, send)
            return
        operation = getattr(scope.get("route_handler"), "operation_id", None)
        span.set_attributes(
            {
                "http.request.method": method,
                "http.route": name.partition(" ")[2],
                "url.path": scope.get("path", ""),  # (never the query: a callback's carries its Sign)
                **({"gateway.operation_id": operation} if isinstance(operation, str) else {}),
            }
        )
        context = span.get_span_context()
        state = scope.setdefault("state", {})
        state["trace_id"], state["span_id"] = f"{context.trace_id:032x}", f"{context.span_id:016x}"

        async def send_with_attributes(message: Message) -> None:
            if message["type"] == "http.response.start":  # (tenant and caller are known by now)
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                for key, attribute in _FROM_STATE:
                    if key in state:
                        span.set_attribute(attribute, state[key])
            await send(message)

        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            await next_app(scope, receive, send_with_attributes)


# ---------------------------------------------------------------------- spans inside the request


def _unrecorded() -> bool:
    """Whether the request is not sampled: then its inner spans are not even started (a child of
    an unsampled span would be dropped by the parent-based samplers, or orphaned by the others)."""
    return not trace.get_current_span().is_recording()


def _failed(span: trace.Span, exc: errors.GatewayError) -> None:
    """An error status with the problem's code: never the message (it may quote Tencent)."""
    span.set_status(Status(StatusCode.ERROR, exc.code))
    span.set_attribute("error.type", exc.code)


@contextlib.contextmanager
def _span(tracer: Tracer, name: str, **options: Any) -> Iterator[trace.Span]:
    """A current span whose failure is recorded by the problem's code, or the exception's type:
    never its message or stack (the SDK's default puts ``str(exc)`` in the status)."""
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False, **options) as span:
        try:
            yield span
        except errors.GatewayError as exc:
            _failed(span, exc)
            raise
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute("error.type", type(exc).__name__)
            raise


class TracedBudget:
    """The budget, each wait a ``budget wait`` span: the API, seconds waited, and the outcome."""

    def __init__(self, budget: Budget, *, tracer: Tracer, clock: Callable[[], float]) -> None:
        self._budget = budget
        self._tracer = tracer
        self._clock = clock

    async def acquire(
        self,
        scope: str,
        api: str,
        *,
        qps: int,
        max_wait: float,
        share: Share,
        forfeit: Slot | None = None,
        send: SendNow | None = None,
    ) -> Slot | Refusal | Paused:
        acquire = functools.partial(
            self._budget.acquire, scope, api, qps=qps, max_wait=max_wait, share=share, forfeit=forfeit, send=send
        )
        if _unrecorded():
            return await acquire()
        with _span(self._tracer, "budget wait") as span:
            began = self._clock()
            got = await acquire()
            outcome = "granted" if isinstance(got, Slot) else "paused" if isinstance(got, Paused) else "refused"
            span.set_attributes(
                {
                    "gateway.budget.api": api,
                    "gateway.budget.waited_seconds": got.waited if isinstance(got, Slot) else self._clock() - began,
                    "gateway.budget.outcome": outcome,
                    "gateway.budget.rebooked": forfeit is not None,
                    "gateway.caller": share.name,
                }
            )
            return got

    async def defer(self, scope: str, api: str, pause: float) -> None:
        await self._budget.defer(scope, api, pause)

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        await self._budget.pause(scope, seconds, code, reason)


class TracedRoomCache(RoomCache):
    """The room cache, each read a ``cache <what>`` span: hit, miss, coalesced or stale."""

    def __init__(self, *, tracer: Tracer, what: str, **options: Any) -> None:
        super().__init__(**options)
        self._tracer = tracer
        self._span_name = f"cache {what}"

    async def read(self, key: str, fetch: Callable[[], Awaitable[Filled]], *, bypass: bool = False) -> CacheResult:
        if _unrecorded():
            return await super().read(key, fetch, bypass=bypass)
        with _span(self._tracer, self._span_name) as span:
            result = await super().read(key, fetch, bypass=bypass)
            span.set_attributes(
                {
                    "gateway.cache.result": "coalesced" if result.coalesced else result.status,
                    "gateway.cache.bypass": bypass,
                }
            )
            return result


class _RecordedLaunch:
    """A call the budget sent already (``Upstream.launch``): its reply's status goes on the span."""

    def __init__(self, call: LaunchedCall) -> None:
        self._call = call

    async def reply(self) -> Reply:
        reply = await self._call.reply()
        trace.get_current_span().set_attribute("http.response.status_code", reply[0])
        return reply

    def abandon(self) -> None:
        self._call.abandon()


class TracedUpstream(Upstream):
    """The upstream, each attempt a CLIENT span named by Tencent's command: its ErrorCode,
    RequestId, HTTP status and attempt number; an error status when it failed. Never the URL:
    its query holds the UserSig."""

    def __init__(self, *, tracer: Tracer, **options: Any) -> None:
        super().__init__(**options)
        self._tracer = tracer

    def _sender(self, tenant: Tenant) -> UpstreamSend:
        send = super()._sender(tenant)

        async def recorded(target: str, body: bytes, on_time: OnTime | None) -> Reply:
            reply = await send(target, body, on_time)
            trace.get_current_span().set_attribute("http.response.status_code", reply[0])
            return reply

        return recorded

    async def call(
        self,
        tenant: Tenant,
        api: Api,
        *,
        body: bytes,
        usersig: str,
        reply: type[R],
        within: float,
        send_by: float | None = None,
        service: str = LIVE,
        attempt: int = 1,
        launched: LaunchedCall | None = None,
    ) -> R:
        attempted = functools.partial(
            super().call,
            tenant,
            api,
            body=body,
            usersig=usersig,
            reply=reply,
            within=within,
            send_by=send_by,
            service=service,
            attempt=attempt,
            launched=None if launched is None else _RecordedLaunch(launched),
        )
        if _unrecorded():
            return await attempted()
        attributes: dict[str, AttributeValue] = {
            "gateway.attempt": attempt,
            "gateway.tenant": tenant.name,
            "tencent.service": service,
        }
        with _span(self._tracer, api, kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                decoded = await attempted()
            except errors.GatewayError as exc:
                if exc.upstream_code is not None:
                    span.set_attribute("tencent.error_code", exc.upstream_code)
                if exc.upstream_request_id:
                    span.set_attribute("tencent.request_id", exc.upstream_request_id)
                raise
            except TooLate:
                span.set_attribute("gateway.sent", False)  # the slot's send window passed: nothing left
                raise
            span.set_attributes({"tencent.error_code": decoded.ErrorCode or 0, "tencent.request_id": decoded.RequestId})
            return decoded


class TracedEventLog:
    """The event log, each publication a ``publish event`` span (reads are not traced)."""

    def __init__(self, log: EventLog, *, tracer: Tracer) -> None:
        self._log = log
        self._tracer = tracer

    async def publish(self, scope: str, command: str, data: bytes) -> str | None:
        if _unrecorded():
            return await self._log.publish(scope, command, data)
        with _span(self._tracer, "publish event") as span:
            entry = await self._log.publish(scope, command, data)
            span.set_attributes({"gateway.event.command": command, "gateway.event.held": entry is None})
            if entry is not None:
                span.set_attribute("gateway.event.id", entry)
            return entry

    async def tail(self, scope: str) -> str:
        return await self._log.tail(scope)

    async def page(self, scope: str, after: str, count: int) -> Page:
        return await self._log.page(scope, after, count)

    async def wait(self, scope: str, after: str) -> Page:
        return await self._log.wait(scope, after)


class TracedReceiver(Receiver):
    """The callback receiver, each verified callback a ``callback`` span: its command, room and
    whether it was acted on or dropped as a duplicate."""

    def __init__(self, *, tracer: Tracer, **options: Any) -> None:
        super().__init__(**options)
        self._tracer = tracer

    async def accept(self, callback: Callback) -> bool:
        if _unrecorded():
            return await super().accept(callback)
        with _span(self._tracer, "callback") as span:
            span.set_attributes({"gateway.tenant": callback.tenant.name, "tencent.callback.command": callback.command})
            if callback.room_id is not None:
                span.set_attribute("gateway.room_id", callback.room_id)
            accepted = await super().accept(callback)
            outcome: Literal["accepted", "duplicate"] = "accepted" if accepted else "duplicate"
            span.set_attribute("gateway.callback.outcome", outcome)
            return accepted
