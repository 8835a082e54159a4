"""Traces (SPEC §11): the caller's W3C trace context in, spans out over OTLP/HTTP to a real
receiver (decoded with opentelemetry-proto), nothing secret in them, and tracing off without an
endpoint."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import sampling

from gateway import tracing
from gateway.cache import RoomCache
from gateway.callbacks import Receiver
from gateway.errors import ConfigError
from gateway.upstream import Upstream
from live_engine_emulator import Emulator
from live_engine_emulator.state import HTTP_502
from tests.otlp import CLIENT, SERVER, Received, attributes, receiver
from tests.support import CALLBACK_TOKEN, KEY, OTHER_KEY, TOKENS, SkipClock, start_gateway
from tests.test_callbacks import signed, update_body

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ROOM = "/v1/tenants/acme/rooms/room-1"


def otel_env(url: str) -> dict[str, str]:
    """Tracing on, exporting to ``url`` every 50 ms."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=rooms",
    }


def server_span(received: Received, trace_id: str | None = None, route: str | None = None) -> Span:
    spans = [
        s
        for s in received.spans
        if s.kind == SERVER
        and (trace_id is None or s.trace_id.hex() == trace_id)
        and (route is None or s.name.endswith(route))
    ]
    assert len(spans) == 1, [s.name for s in received.spans]
    return spans[0]


def under(span: Span, root: Span, received: Received) -> bool:
    """Whether ``span`` descends from ``root`` (same trace, through its parents)."""
    by_id = {s.span_id: s for s in received.spans if s.trace_id == root.trace_id}
    current: Span | None = span
    while current is not None and current.span_id != root.span_id:
        current = by_id.get(current.parent_span_id)
    return current is not None


async def traced_requests(
    upstream_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> tuple[Received, list[dict[str, Any]]]:
    """A paced write with a transient failure (caller's trace), a read without trace context, a
    read with a malformed one and a signed callback, against a traced gateway; then shut down.
    Returns what the receiver got and the access lines' fields."""
    with receiver() as (url, received), caplog.at_level(logging.INFO, logger="gateway.access"):
        async with start_gateway(upstream_url, app_env=otel_env(url)) as gateway:
            emulator.fail_next("update_room_info", 100001)
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=opaque"}
            patched = await gateway.client.patch(ROOM, json={"room_name": "traced"}, headers=headers)
            assert patched.status_code == 204
            assert (await gateway.client.get("/v1/tenants/acme/rooms/room-2")).status_code == 200
            malformed = {"traceparent": "00-not-a-trace-id-01"}
            read = await gateway.client.get("/v1/tenants/acme/rooms/room-3", headers=malformed)
            assert read.status_code == 200
            callback = await gateway.client.post(signed("Live.CallbackAfterUpdateRoomInfo"), json=update_body())
            assert callback.status_code == 200
        # Shutting the app down flushed the spans: no waiting for the exporter.
    return received, [getattr(r, "fields", {}) for r in caplog.records if r.name == "gateway.access"]


async def test_a_request_joins_the_callers_trace_with_a_client_span_per_attempt(
    upstream_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's trace id and parent span are used; inside the SERVER span (named by route,
    with operation, tenant, caller and status) each attempt at Tencent is a CLIENT span named by
    its command, with its ErrorCode, RequestId, attempt number and status, after a budget span."""
    received, _ = await traced_requests(upstream_url, emulator, caplog)
    root = server_span(received, TRACE_ID)
    assert root.parent_span_id.hex() == PARENT_ID
    assert root.name == "PATCH /v1/tenants/{tenant}/rooms/{room_id}"
    assert attributes(root) | {
        "gateway.operation_id": "updateRoom",
        "gateway.tenant": "acme",
        "gateway.caller": "checkout",
        "http.response.status_code": 204,
    } == attributes(root)
    in_trace = [s for s in received.spans if s.trace_id == root.trace_id]
    clients = sorted((s for s in in_trace if s.kind == CLIENT), key=lambda s: attributes(s)["gateway.attempt"])
    # A slot missed under load (the process stalled past its send window, as under coverage on
    # CI) is a CLIENT span too, marked unsent, and is booked again: not an attempt at Tencent.
    unsent = [s for s in clients if attributes(s).get("gateway.sent") is False]
    assert all("tencent.error_code" not in attributes(s) for s in unsent)
    attempts = [s for s in clients if s not in unsent]
    assert [s.name for s in attempts] == ["update_room_info", "update_room_info"]
    assert all(under(s, root, received) for s in attempts)
    first, second = (attributes(s) for s in attempts)
    assert (first["gateway.attempt"], first["tencent.error_code"]) == (1, 100001)
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    assert (second["gateway.attempt"], second["tencent.error_code"], second["http.response.status_code"]) == (2, 0, 200)
    assert second["tencent.request_id"]
    assert attempts[1].status.code != Status.STATUS_CODE_ERROR
    budget = [attributes(s) for s in in_trace if s.name == "budget wait" and under(s, root, received)]
    assert len(budget) == len(clients)  # a slot for each, the missed ones' included
    assert {(b["gateway.budget.api"], b["gateway.budget.outcome"]) for b in budget} == {("update_room_info", "granted")}
    assert all(b["gateway.budget.waited_seconds"] >= 0 for b in budget)
    assert received.resources[0]["service.name"] == "gateway-under-test"
    assert received.resources[0]["team"] == "rooms"
    assert set(received.paths) == {"/v1/traces"}


async def test_without_or_with_a_malformed_traceparent_a_request_starts_a_new_trace(
    upstream_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """No trace context, or a malformed one, starts a new trace (no parent) and the answer is
    normal; the cache read is a span saying it missed; access lines carry the trace's ids."""
    received, access = await traced_requests(upstream_url, emulator, caplog)
    fresh = [s for s in received.spans if s.kind == SERVER and s.name == "GET /v1/tenants/{tenant}/rooms/{room_id}"]
    assert len(fresh) == 2
    assert all(s.parent_span_id == b"" and s.trace_id.hex() != TRACE_ID for s in fresh)
    assert fresh[0].trace_id != fresh[1].trace_id
    for root in fresh:
        cache = [attributes(s) for s in received.spans if s.name == "cache room" and under(s, root, received)]
        assert cache == [{"gateway.cache.result": "miss", "gateway.cache.bypass": False}]
    lines = {line.get("trace_id"): line for line in access}
    assert lines[TRACE_ID]["span_id"] == server_span(received, TRACE_ID).span_id.hex()
    assert {s.trace_id.hex() for s in fresh} <= set(lines)


async def test_callbacks_and_event_publications_are_spans(
    upstream_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed callback's request has a callback span (command, outcome) and a publish span, and
    its SERVER span keeps no query string (the Sign)."""
    received, _ = await traced_requests(upstream_url, emulator, caplog)
    root = server_span(received, route="/v1/callbacks/tencent")
    spans = {s.name: attributes(s) for s in received.spans if under(s, root, received) and s is not root}
    assert spans["callback"]["tencent.callback.command"] == "Live.CallbackAfterUpdateRoomInfo"
    assert spans["callback"]["gateway.callback.outcome"] == "accepted"
    assert spans["publish event"]["gateway.event.held"] is False
    assert all("?" not in str(v) for v in attributes(root).values())


async def test_no_span_carries_a_secret(
    upstream_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """No attribute of any exported span (nor any resource) holds a secret key, a bearer token,
    the callback token or signature, or a UserSig Tencent saw; no span records an event (an
    exception's message or stack)."""
    received, _ = await traced_requests(upstream_url, emulator, caplog)
    usersigs = {sig for sigs in emulator.usersigs.values() for sig in sigs}
    assert usersigs
    secrets = {KEY, OTHER_KEY, CALLBACK_TOKEN, *TOKENS.values(), *usersigs, "usersig", "Sign="}
    texts = [str(v) for span in received.spans for v in attributes(span).values()]
    texts += [str(v) for resource in received.resources for v in resource.values()]
    texts += [span.name for span in received.spans]
    texts += [span.status.message for span in received.spans]
    leaked = {secret for secret in secrets for text in texts if secret.lower() in text.lower()}
    assert not leaked
    assert not any(span.events for span in received.spans)


async def test_a_repeated_traceparent_starts_a_new_trace_and_a_failure_is_recorded_by_its_code(
    upstream_url: str, emulator: Emulator
) -> None:
    """Two ``traceparent`` headers are invalid (W3C Trace Context): a new trace, not either one.
    A failed cache fill and its attempts end with an error status holding the problem's code,
    never the exception's message (which quotes Tencent)."""
    other = "0af7651916cd43dd8448eb211c80319c"
    headers = [
        ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        ("traceparent", f"00-{other}-{PARENT_ID}-01"),
        ("tracestate", "vendor=opaque"),
    ]
    with receiver() as (url, received):
        async with start_gateway(upstream_url, app_env=otel_env(url)) as gateway:
            emulator.fail_next("get_room_info", 70001, 70001)  # (retried once with a new UserSig)
            failed = await gateway.client.get(ROOM, headers=headers)
    assert failed.status_code == 503
    code = failed.json()["code"]
    root = server_span(received)
    assert root.parent_span_id == b""
    assert root.trace_id.hex() not in (TRACE_ID, other)
    errored = {s.name: s.status.message for s in received.spans if s.status.code == Status.STATUS_CODE_ERROR}
    assert errored == {root.name: "", "cache room": code, "get_room_info": code}
    assert all(attributes(s).get("error.type", code) == code for s in received.spans)


async def test_the_cache_span_says_hit_stale_or_coalesced(upstream_url: str, emulator: Emulator) -> None:
    """A read served from the cache is a ``hit``, one served past its TTL because Tencent failed
    is ``stale``, and a read that waited for another's fill is ``coalesced``."""
    clock = SkipClock()
    with receiver() as (url, received):
        async with start_gateway(
            upstream_url, app_env=otel_env(url), cache_ttl=0.1, stale_ttl=5.0, retry_attempts=2, clock=clock
        ) as gateway:
            await gateway.client.get(ROOM)  # miss
            await gateway.client.get(ROOM)  # hit
            clock.skip(0.15)
            emulator.fail_next("get_room_info", HTTP_502, HTTP_502)
            assert (await gateway.client.get(ROOM)).headers["x-cache"] == "stale"
            emulator.faults.latency = 0.2
            together = await asyncio.gather(*(gateway.client.get("/v1/tenants/acme/rooms/room-2") for _ in range(2)))
            emulator.faults.latency = 0.0
            assert all(r.status_code == 200 for r in together)
    results = [attributes(s)["gateway.cache.result"] for s in received.spans if s.name == "cache room"]
    assert sorted(results) == ["coalesced", "hit", "miss", "miss", "stale"]


async def test_without_an_endpoint_tracing_is_off(upstream_url: str) -> None:
    """No OTLP endpoint (or OTEL_SDK_DISABLED): no tracer provider, no span middleware, and the
    plain collaborators."""
    for env in (
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
    ):
        assert tracing.provider_from_env(env) is None
        async with start_gateway(upstream_url, app_env=env) as gateway:
            app = gateway.app
            assert [type(m).__name__ for m in app.middleware] == ["EdgeMiddleware"]
            service = app.state.gateway.service
            assert type(service._upstream) is Upstream
            assert type(service._budget).__name__ != "TracedBudget"
            assert type(service._cache) is RoomCache
            assert type(app.state.gateway.callbacks) is Receiver
            assert (await gateway.client.get(ROOM)).status_code == 200


def test_the_otel_variables_are_read_from_the_mapping_given() -> None:
    """Endpoints (the traces one as is, the base one + /v1/traces), the sampler and its ratio,
    and bad values refused at start-up."""
    assert tracing.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
    assert tracing.endpoint(both) == "http://t/x"
    assert isinstance(tracing.sampler({}), sampling.ParentBased)
    ratio = tracing.sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
    assert isinstance(ratio, sampling.TraceIdRatioBased)
    assert ratio.rate == 0.01
    bad: list[dict[str, Any]] = [
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_MAX_QUEUE_SIZE": "many"},
    ]
    for env in bad:
        with pytest.raises(ConfigError, match="OTEL_"):
            tracing.provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", **env})


async def test_an_unsampled_request_exports_nothing_and_logs_no_trace_ids(
    upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With a sampler that keeps no new trace, a request (a miss: cache, budget and upstream)
    exports no span, its access line has no trace ids, and a caller's sampled trace is still
    followed (parent-based)."""
    with receiver() as (url, received), caplog.at_level(logging.INFO, logger="gateway.access"):
        env = {**otel_env(url), "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
        async with start_gateway(upstream_url, app_env=env) as gateway:
            assert (await gateway.client.get(ROOM)).status_code == 200
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            assert (await gateway.client.get("/v1/tenants/acme/rooms/room-2", headers=headers)).status_code == 200
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.name == "gateway.access"]
    assert [line.get("trace_id") for line in lines] == [None, TRACE_ID]
    assert {s.trace_id.hex() for s in received.spans} == {TRACE_ID}
    assert {s.name for s in received.spans} >= {
        "GET /v1/tenants/{tenant}/rooms/{room_id}",
        "cache room",
        "get_room_info",
    }
