"""Hostile input: generated requests from the committed OpenAPI document, and hand-made nasties.
Every one gets a clear 4xx (or its documented answer), never a 5xx, and nothing reaches Tencent
that the gateway can tell is invalid."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.tenants import Caller, Directory
from tests.fleet import GATEWAY, stop, wait_http
from tests.redis_servers import free_port
from tests.support import SECRETS, TOKENS, config_yaml

ROOT = Path(__file__).resolve().parent.parent
schema = schemathesis.openapi.from_path(str(ROOT / "openapi" / "openapi.yaml"))
AUTH = {"authorization": f"Bearer {TOKENS['rw']}"}


class Running:
    def __init__(self, gateway: str, emulator: str) -> None:
        self.gateway = gateway
        self.emulator = emulator

    def upstream_calls(self) -> int:
        return sum(httpx.get(f"{self.emulator}/_emulator/stats").json()["calls"].values())


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A `gateway serve` process in front of a `gateway emulator` process."""
    tmp = tmp_path_factory.mktemp("hostile")
    emu_port, gw_port = free_port(), free_port()
    config = tmp / "gateway.yaml"
    config.write_text(config_yaml(f"http://127.0.0.1:{emu_port}", qps=100_000))
    env = {**os.environ, **SECRETS, "GATEWAY_CONFIG": str(config), "GATEWAY_LOG_LEVEL": "warning"}
    emulator = subprocess.Popen(
        [*GATEWAY, "emulator", "--port", str(emu_port), "--config", str(config), "--rooms", "3", "--no-rate-limit"],
        env=env,
    )
    gateway = subprocess.Popen([*GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(gw_port)], env=env)
    try:
        wait_http(f"http://127.0.0.1:{emu_port}/_emulator/stats", emulator)
        wait_http(f"http://127.0.0.1:{gw_port}/readyz", gateway)
        yield Running(f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{emu_port}")
    finally:
        stop(gateway)
        stop(emulator)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_match_the_spec(case: schemathesis.Case, running: Running) -> None:
    """Requests generated from openapi/openapi.yaml: no 5xx but the documented upstream ones, and
    every status, content type and body as the document says."""
    if "tenant" in case.path_parameters:
        case.path_parameters["tenant"] = "acme"  # reach past auth into validation and the upstream call
    case.call_and_validate(
        base_url=running.gateway,
        headers=AUTH,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        excluded_checks=[not_a_server_error],  # 502/503/504 are documented answers; checked just below
    )
    response = case.call(base_url=running.gateway, headers=AUTH)
    assert response.status_code not in (500, 501), response.text


DEMO_CHECKS = schemathesis.openapi.from_path(
    str(ROOT / "openapi" / "openapi.yaml"),
    config=SchemathesisConfig.from_path(ROOT / "openapi" / "schemathesis.toml"),
)


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """`gateway demo`, as openapi/schemathesis.toml's command runs it."""
    port = free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([*GATEWAY, "demo", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def accepts_documented_data(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """Schemathesis' positive_data_acceptance, with openapi/schemathesis.toml's statuses, and
    stricter than the config on one point: a schema-valid request the gateway refuses itself (a
    400 without upstream_code) fails even for the operations where Tencent may refuse it for the
    room's state."""
    if response.status_code == 400 and case.meta is not None and case.meta.generation.mode.is_positive:
        problem = response.json()
        assert "upstream_code" in problem, f"a schema-valid request refused by the gateway: {problem['detail']}"
    return positive_data_acceptance(ctx, response, case)


@DEMO_CHECKS.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_demo_passes_every_schemathesis_check(case: schemathesis.Case, demo: str) -> None:
    """Every Schemathesis check (``--checks all``: status codes, content types, headers, bodies,
    SSE events, schema-valid requests accepted and invalid ones refused, Allow on 405, ...)
    passes against `gateway demo` with openapi/schemathesis.toml: the document says what the
    gateway validates."""
    case.call_and_validate(
        base_url=demo,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepts_documented_data],
        timeout=0.2 if case.operation.path.endswith("/events") else 10,  # (read the stream's start, then stop)
    )


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes exactly as given (clients would normalise or refuse them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (b"/v1/tenants/acme/rooms/../../../etc/passwd", 404),
        (b"/v1/tenants/acme/rooms/..%2F..%2Fadmin", 400),
        (b"/v1/tenants/acme/rooms/room-1%2Fmetadata", 400),
        (b"/v1/tenants/acme/rooms/%5C..%5Croom", 400),
        (b"/v1/tenants/acme/rooms/%00", 400),
        (b"/v1/tenants/acme/rooms/" + b"a" * 49, 400),
        (b"/v1/tenants/acme/rooms/room-1/metadata?" + b"&".join(b"key=k%d" % i for i in range(11)), 400),
        (b"/v1/tenants/acme/rooms/room-1/metadata?key=" + b"k" * 60_000, 400),
    ],
)
def test_hostile_paths_are_4xx_without_an_upstream_call(running: Running, path: bytes, status: int) -> None:
    """Traversal-looking, encoded, oversized and over-many inputs: a clear 4xx, nothing sent upstream."""
    before = running.upstream_calls()
    port = int(running.gateway.rsplit(":", 1)[1])
    reply = raw_request(
        port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-rw\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == status, reply[:300]
    assert running.upstream_calls() == before


def test_header_injection_in_request_id_is_refused(running: Running) -> None:
    """A CR/LF inside X-Request-Id is refused by the HTTP server before the gateway sees it (a
    400, nothing echoed, nothing upstream); the gateway's own rule behind it is pinned by
    ``test_request_ids_outside_the_safe_alphabet_are_never_echoed``."""
    before = running.upstream_calls()
    port = int(running.gateway.rsplit(":", 1)[1])
    reply = raw_request(
        port,
        b"GET /v1/tenants/acme/rooms/room-1 HTTP/1.1\r\nHost: x\r\n"
        b"X-Request-Id: a\rSet-Cookie: evil=1\r\nAuthorization: Bearer token-rw\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_of(reply) == 400
    assert b"evil" not in reply
    assert running.upstream_calls() == before


@pytest.mark.parametrize(
    "given",
    [b"a\r\nSet-Cookie: evil=1", b"a\nevil", b"abc\n", b"a;evil=1", b"caf\xc3\xa9", b"x" * 129, b""],
    ids=["crlf", "lf", "trailing-lf", "semicolon", "non-ascii", "too-long", "empty"],
)
async def test_request_ids_outside_the_safe_alphabet_are_never_echoed(given: bytes) -> None:
    """The edge's own rule, whatever the HTTP server in front lets through: an X-Request-Id that
    is not ``[A-Za-z0-9._:@/+=-]{1,128}`` is replaced by a fresh 32-hex-digit id, and only that
    one header is added; a valid id is echoed as it came."""
    from prometheus_client import CollectorRegistry

    from gateway.api import EdgeMiddleware
    from gateway.metrics import Metrics

    async def inner(scope: dict[str, object], receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"", "more_body": False})  # type: ignore[operator]

    edge = EdgeMiddleware(metrics=Metrics(CollectorRegistry()), clock=lambda: 0.0)

    async def answer(request_id: bytes) -> list[tuple[bytes, bytes]]:
        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/livez",
            "raw_path": b"/livez",
            "headers": [(b"x-request-id", request_id)],
        }
        await edge.handle(scope, None, send, inner)  # type: ignore[arg-type]
        return sent[0]["headers"]  # type: ignore[return-value]

    headers = await answer(given)
    assert len(headers) == 1
    name, value = headers[0]
    assert name == b"x-request-id"
    assert re.fullmatch(rb"[0-9a-f]{32}", value), value
    assert await answer(b"caller-id.1:2@x/y+z=") == [(b"x-request-id", b"caller-id.1:2@x/y+z=")]


@pytest.mark.parametrize(
    "body",
    [
        b"{" * 100_000,
        b'{"room_name": "\xff\xfe"}',
        b'{"room_name": "x"' + b", " * 30_000 + b"}",
        b'{"room_name": 1e999999}',
        b"\x00\x01\x02",
    ],
)
def test_hostile_bodies_are_4xx_without_an_upstream_call(running: Running, body: bytes) -> None:
    """Deep nesting, invalid UTF-8, huge or binary bodies: 400 or 413, nothing sent upstream."""
    before = running.upstream_calls()
    response = httpx.patch(
        f"{running.gateway}/v1/tenants/acme/rooms/room-1",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code in (400, 413)
    assert response.headers["content-type"] == "application/problem+json"
    assert running.upstream_calls() == before


def test_tokens_are_compared_against_every_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication compares the token's hash with every caller's, whatever matches, so its
    time does not tell how far through the list a token got."""
    callers = tuple(
        Caller(
            name=f"c{i}",
            token_sha256=hashlib.sha256(f"t{i}".encode()).digest(),
            tenants=frozenset({"*"}),
            scopes=frozenset({"read"}),
        )
        for i in range(5)
    )
    directory = Directory(tenants={}, callers=callers)
    compared = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert directory.authenticate("t0").name == "c0"
    assert len(compared) == 5
