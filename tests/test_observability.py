"""Metrics, logs and request ids as operators see them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.logs import JsonFormatter
from live_engine_emulator import Emulator
from tests.support import KEY, OTHER_KEY, TOKENS, Gateway

ROOT = Path(__file__).resolve().parent.parent
ROOM_ROUTE = "/v1/tenants/{tenant}/rooms/{room_id}"


async def scrape(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    response = await gateway.client.get("/metrics", headers={"authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_cached_read_counts_once_upstream_and_twice_inbound(gateway: Gateway) -> None:
    """A miss then a hit: one upstream call (code 0), one budget grant, cache miss + hit, two requests."""
    before = await scrape(gateway)
    await gateway.client.get("/v1/tenants/acme/rooms/room-1")
    await gateway.client.get("/v1/tenants/acme/rooms/room-1")
    after = await scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_upstream_calls_total", tenant="acme", api="get_room_info", code="0") == 1
    assert delta("gateway_budget_grants_total", tenant="acme", api="get_room_info") == 1
    assert delta("gateway_budget_wait_seconds_count", tenant="acme", api="get_room_info") == 1
    assert delta("gateway_room_cache_results_total", tenant="acme", result="miss") == 1
    assert delta("gateway_room_cache_results_total", tenant="acme", result="hit") == 1
    assert delta("gateway_http_requests_total", route=ROOM_ROUTE, method="GET", status="200") == 2
    assert delta("gateway_http_request_duration_seconds_count", route=ROOM_ROUTE, method="GET") == 2
    assert delta("gateway_upstream_call_duration_seconds_count", api="get_room_info") == 1
    assert value(after, "gateway_usersig_issued_total") == 1


async def test_errors_and_retries_are_counted_by_code_and_reason(gateway: Gateway, emulator: Emulator) -> None:
    """100001 then success: one call per code, one transient retry; a 404 counts under its status."""
    emulator.fail_next("get_room_info", 100001)
    await gateway.client.get("/v1/tenants/acme/rooms/room-2")
    await gateway.client.get("/v1/tenants/acme/rooms/missing")
    samples = await scrape(gateway)
    calls = "gateway_upstream_calls_total"
    assert value(samples, calls, tenant="acme", api="get_room_info", code="100001") == 1
    assert value(samples, calls, tenant="acme", api="get_room_info", code="0") == 1
    assert value(samples, calls, tenant="acme", api="get_room_info", code="100004") == 1
    retries = "gateway_upstream_retries_total"
    assert value(samples, retries, tenant="acme", api="get_room_info", reason="transient") == 1
    assert value(samples, "gateway_http_requests_total", route=ROOM_ROUTE, method="GET", status="404") == 1


async def test_budget_refusals_and_limits(upstream_url: str) -> None:
    """The configured budget is a gauge per tenant and API; a refused call counts as a refusal."""
    from tests.support import start_gateway

    async with start_gateway(upstream_url, qps=1, budget_max_wait=0.0) as gateway:
        await gateway.client.patch("/v1/tenants/acme/rooms/room-1", json={"room_name": "a"})
        refused = await gateway.client.patch("/v1/tenants/acme/rooms/room-1", json={"room_name": "b"})
        assert refused.status_code == 429
        samples = await scrape(gateway)
    assert value(samples, "gateway_budget_limit_per_second", tenant="acme", api="update_room_info") == 1
    assert value(samples, "gateway_budget_limit_per_second", tenant="globex", api="get_room_info") == 200
    assert value(samples, "gateway_budget_limit_per_second", tenant="globex", api="get_room_list") == 10  # Tencent's
    assert value(samples, "gateway_budget_limit_per_second", tenant="acme", api="get_room_list") == 1  # qps lowers it
    for api in ("send_custom_msg", "set_callback_token"):  # (chosen by the body; outside the catalogue)
        assert value(samples, "gateway_budget_limit_per_second", tenant="globex", api=api) == 200
    assert value(samples, "gateway_budget_refusals_total", tenant="acme", api="update_room_info") == 1


async def test_no_label_carries_a_room_id_key_or_raw_path(gateway: Gateway) -> None:
    """Room ids, metadata keys and unmatched paths never become label values."""
    await gateway.client.get("/v1/tenants/acme/rooms/zz-secret-room")
    await gateway.client.get("/v1/tenants/acme/rooms/room-1/metadata", params={"key": "zz-secret-key"})
    await gateway.client.get("/zz/secret/path")
    await gateway.client.get("/v1/tenants/zz-tenant/rooms/x")
    text = (await gateway.client.get("/metrics")).text
    assert "zz-" not in text
    assert 'route="unmatched"' in text


async def test_metrics_need_no_token_and_include_build_info(gateway: Gateway) -> None:
    """/metrics answers without a token and says which version runs."""
    samples = await scrape(gateway)
    assert any(name == "gateway_build_info" for name, _ in samples)
    assert value(samples, "gateway_redis_degraded") == 0


@pytest.fixture
def json_log() -> Iterator[list[str]]:
    """Every log line the gateway writes during the test, formatted as in production."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_one_json_line_per_request(gateway: Gateway, json_log: list[str]) -> None:
    """Each request logs one JSON object with its id, route template, status, duration, tenant and
    Tencent's RequestId and ErrorCode when there was a call."""
    await gateway.client.get("/v1/tenants/acme/rooms/room-1", headers={"x-request-id": "trace-1"})
    await gateway.client.get("/v1/tenants/acme/rooms/missing", headers={"x-request-id": "trace-2"})
    entries = [json.loads(line) for line in json_log if '"logger":"gateway.access"' in line]
    first = next(e for e in entries if e["request_id"] == "trace-1")
    assert first["route"] == ROOM_ROUTE
    assert first["status"] == 200
    assert first["tenant"] == "acme"
    assert first["upstream_request_id"].startswith("Id-emu")
    assert first["duration_ms"] > 0
    assert first["level"] == "info"
    second = next(e for e in entries if e["request_id"] == "trace-2")
    assert (second["status"], second["upstream_code"]) == (404, 100004)
    assert len([e for e in entries if e["request_id"] == "trace-1"]) == 1


async def test_logs_metrics_and_errors_carry_no_secret(
    gateway: Gateway, emulator: Emulator, json_log: list[str]
) -> None:
    """After signature failures, errors and normal traffic, no secret key, token or UserSig appears
    in the logs, the metrics or any response body."""
    bodies = []
    emulator.fail_next("get_room_info", 70001, 70009)
    for path in ("/v1/tenants/acme/rooms/room-1", "/v1/tenants/acme/rooms/room-2", "/v1/tenants/acme/rooms/x"):
        bodies.append((await gateway.client.get(path, headers={"cache-control": "no-cache"})).text)
    bodies.append(
        (await gateway.client.get("/v1/tenants/acme/rooms/room-1", headers={"authorization": "Bearer nope"})).text
    )
    bodies.append((await gateway.client.get("/metrics")).text)
    bodies.append((await gateway.client.get("/schema/openapi.json")).text)
    secrets = [KEY, OTHER_KEY, *TOKENS.values(), *emulator.usersigs[1400000001]]
    assert emulator.usersigs[1400000001], "the run did sign"
    everything = "\n".join(json_log + bodies)
    for secret in secrets:
        assert secret not in everything


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(gateway_[a-z0-9_]+)", text))


def _known_names(gateway: Gateway) -> set[str]:
    names = set()
    for family in gateway.app.state.gateway.metrics.registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


async def test_dashboard_and_alerts_use_real_metric_names(gateway: Gateway) -> None:
    """Every metric the Grafana dashboard and the alert rules query exists in the gateway."""
    known = _known_names(gateway)
    dashboard = json.loads((ROOT / "helm" / "live-room-gateway" / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "helm" / "live-room-gateway" / "files" / "prometheus-rules.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used
    assert used <= known, used - known
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "GatewayBudgetSaturated",
        "GatewayUpstreamErrors",
        "GatewayRedisDegraded",
        "GatewayUserSigRejected",
    } <= alerts


def test_access_lines_written_straight_to_the_stream_match_what_logging_writes() -> None:
    """The access line's fast path (straight to ``configure``'s handler) writes the very line the
    JSON formatter would, and steps aside for any other logging set-up (here: a filter)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        logs.configure("info")
        assert logs._HANDLER is not None
        logs._HANDLER.setStream(stream)
        logger = logging.getLogger("test.access")
        fields = {"request_id": "r-1", "status": 204, "duration_ms": 1.5, "tenant": "acme"}
        handled: list[logging.LogRecord] = []
        logger.handle = handled.append  # type: ignore[method-assign]  # records that went through logging
        logs.AccessLog(logger, "request")(fields)
        assert handled == [], "the fast path did not run: the line went through logging"
        del logger.handle  # back to Logger.handle
        logger.info("request", extra={"fields": fields})
        direct, formatted = (json.loads(line) for line in stream.getvalue().splitlines())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct.pop("ts"))
        formatted.pop("ts")
        assert direct == formatted
        seen: list[logging.LogRecord] = []

        def keep(record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

        logger.addFilter(keep)
        logs.AccessLog(logger, "request")(fields)
        assert len(seen) == 1  # went through logging
        assert len(stream.getvalue().splitlines()) == 3
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logs._HANDLER = None
        logging.getLogger("test.access").filters.clear()
