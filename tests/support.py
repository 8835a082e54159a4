"""Test plumbing: the emulator over real HTTP, the gateway under a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import httpx
import uvicorn
from litestar import Litestar

from gateway.admission import protocol
from gateway.app import create_app
from gateway.settings import Settings
from gateway.tenants import Directory, hash_token, parse_config, resolve
from gateway.transport import OnTime, PooledTransport, Proxy, Reply, Sender, TooLate, tls_context
from live_engine_emulator import Emulator
from tests import openloop

APP_ID = 1400000001
OTHER_APP_ID = 1400000002
KEY = "test-secret-key-0123456789abcdef"
OTHER_KEY = "other-secret-key-0123456789abcdef"
TOKENS = {
    "rw": "token-rw",
    "ro": "token-ro",
    "other": "token-other",
    "star": "token-star",
    "wo": "token-wo",
    "ev": "token-ev",
}
ROOMS = ("room-1", "room-2", "room-3")

# Settings that keep tests quick: tiny backoffs and pauses; everything else is the default. No
# shedding: an in-process gateway shares its event loop with the test's clients, whose bursts
# are that loop's lag (test_overload.py turns it on; processes from `gateway serve` keep it).
FAST = {
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "rate_limit_pause": 0.05,
    "misconfig_cooldown": 0.0,
    "overload_lag": 0.0,
}


def config_yaml(base_url: str, qps: int = 200, weights: dict[str, int] | None = None) -> str:
    """The suite's config file; ``weights``: callers' weights (else the default, 1)."""
    digests = {k: hash_token(v) for k, v in TOKENS.items()}
    text = _CONFIG.format(base_url=base_url, qps=qps, APP_ID=APP_ID, OTHER_APP_ID=OTHER_APP_ID, **digests)
    for caller, weight in (weights or {}).items():
        text = text.replace(f"  {caller}:\n", f"  {caller}:\n    weight: {weight}\n", 1)
    return text


_CONFIG = """
tenants:
  acme:
    sdkappid: {APP_ID}
    identifier: administrator
    secret_key_env: ACME_SECRET_KEY
    region: singapore
    base_url: {base_url}
    qps: {qps}
    callback_token_env: ACME_CALLBACK_TOKEN
  globex:
    sdkappid: {OTHER_APP_ID}
    identifier: administrator
    secret_key_env: GLOBEX_SECRET_KEY
    region: china
    base_url: {base_url}
callers:
  checkout:
    token_sha256: {rw}
    tenants: [acme]
    scopes: [read, write]
  viewer:
    token_sha256: {ro}
    tenants: [acme]
    scopes: [read]
  writer:
    token_sha256: {wo}
    tenants: [acme]
    scopes: [write]
  globex-app:
    token_sha256: {other}
    tenants: [globex]
    scopes: [read, write]
  ops:
    token_sha256: {star}
    tenants: ["*"]
    scopes: [read]
  listener:
    token_sha256: {ev}
    tenants: [acme]
    scopes: [events]
"""


CALLBACK_TOKEN = "acme-callback-token"
SECRETS = {"ACME_SECRET_KEY": KEY, "GLOBEX_SECRET_KEY": OTHER_KEY, "ACME_CALLBACK_TOKEN": CALLBACK_TOKEN}


def directory(
    base_url: str, qps: int = 200, *, proxy_url: str | None = None, env: dict[str, str] | None = None
) -> Directory:
    """The suite's tenants and callers; ``proxy_url`` for acme, ``env`` beside the secrets (HTTPS_PROXY, ...)."""
    text = config_yaml(base_url, qps)
    if proxy_url is not None:
        text = text.replace(f"    qps: {qps}\n", f"    qps: {qps}\n    proxy_url: {proxy_url}\n", 1)
    return resolve(parse_config(text.encode(), source="test.yaml"), {**SECRETS, **(env or {})})


def new_emulator() -> Emulator:
    emulator = Emulator(seed=7)
    emulator.add_app(APP_ID, KEY, {"administrator"})
    emulator.add_app(OTHER_APP_ID, OTHER_KEY, {"administrator"})
    for room_id in ROOMS:
        emulator.add_room(APP_ID, room_id)
        emulator.add_room(OTHER_APP_ID, room_id, RoomName="globex room")
    return emulator


def settings(**overrides: Any) -> Settings:
    return Settings(**{**FAST, **overrides})


class _Server(uvicorn.Server):
    """uvicorn's server, told to stop rather than polled: uvicorn looks at ``should_exit`` every
    0.1 s, then sleeps 0.1 s before it waits (in 0.1 s steps) for connections to close. That was
    ~0.2 s of every in-process gateway's teardown, minutes over the suite. Here the stop wakes the
    main loop at once, and shutdown does uvicorn's steps in uvicorn's order, polling every 5 ms."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # (the tick keeps the Date header current)
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        while self.server_state.connections or self.server_state.tasks:  # noqa: ASYNC110 - uvicorn has no event for it
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextlib.asynccontextmanager
async def serve_app(app: Litestar) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop on a free loopback port; yield its URL."""
    admitting = protocol(app.state.gateway.overload)  # (`gateway serve`'s: the overload refusals are the server's)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, loop="none", http=admitting)
    server = _Server(config)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it every response written in two parts (head, then body) waited ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()
        await task
        sock.close()


class Call(NamedTuple):
    """One request as the scripted Tencent saw it."""

    origin: str
    path: str
    params: dict[str, str]
    body: bytes


class ScriptedTencent:
    """A stateful Tencent behind the production seam (``transport.Sender``): ``answer`` gives
    each call's (status, body). Like ``PooledTransport`` it asks ``on_time`` right before the
    request would be written and sends nothing (``TooLate``) when the window has passed, so
    ``Upstream`` and the budget run exactly the code they run in production."""

    def __init__(self, answer: Callable[[Call], tuple[int, bytes]]) -> None:
        self.answer = answer
        self.calls: list[Call] = []

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        if on_time is not None and not on_time():
            raise TooLate
        parts = urlsplit(target)
        call = Call(origin, parts.path, dict(parse_qsl(parts.query)), body)
        self.calls.append(call)
        status, content = self.answer(call)
        return Reply(status, [(b"content-type", b"application/json")], content)

    async def aclose(self) -> None:
        return None


class SkipClock:
    """The monotonic clock, which a test moves forward: a TTL passes at once, and exactly (no
    real sleep that a loaded machine could stretch past the next bound)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def skip(self, seconds: float) -> None:
        self.ahead += seconds


class Gateway:
    """A running gateway: its app (for internals), URL and an httpx client with a token."""

    def __init__(self, app: Litestar, url: str, client: httpx.AsyncClient) -> None:
        self.app = app
        self.url = url
        self.client = client

    def as_(self, who: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {TOKENS[who]}"} if who else {}


@functools.cache
def system_tls() -> ssl.SSLContext:
    """The gateway's default upstream TLS (``transport.tls_context``: the system's CAs), built
    once for the suite: loading the CAs took ~0.1 s of each in-process gateway's start."""
    return tls_context()


@functools.cache
def client_tls() -> ssl.SSLContext:
    """The test clients' TLS (httpx's default: certifi's CAs), built once for the same reason;
    the suite's gateways speak plain HTTP, so no test client uses it."""
    return httpx.create_ssl_context()


@contextlib.asynccontextmanager
async def start_gateway(
    upstream_url: str,
    *,
    transport_factory: Callable[[], Sender] | None = None,
    qps: int = 200,
    proxy_url: str | None = None,
    env: dict[str, str] | None = None,
    app_env: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    **overrides: Any,
) -> AsyncIterator[Gateway]:
    """A gateway with the suite's settings; ``env``: beside the tenants' secrets (HTTPS_PROXY, ...),
    ``app_env``: the environment create_app reads (OTEL_* variables), ``clock``: its monotonic
    clock. Without a ``transport_factory`` or a CA file it sends through the production
    ``PooledTransport``, as create_app would, but on the suite's one copy of the system's TLS context."""
    chosen = settings(**overrides)
    if transport_factory is None and chosen.upstream_ca_file is None:
        tls = system_tls()
        transport_factory = functools.partial(PooledTransport, connections=chosen.upstream_connections, tls=tls)
    app = create_app(
        chosen,
        env=app_env or {},
        directory=directory(upstream_url, qps, proxy_url=proxy_url, env=env),
        transport_factory=transport_factory,
        clock=clock,
    )
    async with serve_app(app) as url:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(
            base_url=url,
            headers={"authorization": f"Bearer {TOKENS['rw']}"},
            limits=limits,
            timeout=30,
            verify=client_tls(),
        ) as client:
            yield Gateway(app, url, client)


async def blast(
    url: str,
    paths: list[str],
    *,
    token: str,
    method: str = "GET",
    json: Any = None,
    spacing: float = 0.0,
    headers: dict[str, str] | None = None,
) -> list[int]:
    """Send one request per path (optionally ``spacing`` seconds apart) with aiohttp; statuses in order."""
    hdrs = {"authorization": f"Bearer {token}", **(headers or {})}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int, path: str) -> int:
            await asyncio.sleep(i * spacing)
            async with session.request(method, url + path, headers=hdrs, json=json) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(paths))))


async def drive(
    urls: list[str],
    paths: list[str],
    *,
    token: str,
    rate: float,
    seconds: float,
    method: str = "GET",
    json: Any = None,
    headers: dict[str, str] | None = None,
    arrivals: list[float] | None = None,
) -> list[tuple[int, float]]:
    """Offer ``rate`` requests/s for ``seconds``, round-robin over replicas and paths, open loop
    (``tests.openloop``: a light generator, so that it does not take the CPU from the replicas).

    Returns (status, seconds taken) per request; status 0 means the connection failed or no
    answer came within 30 s of the last request. ``arrivals`` gets each reply's moment, in
    seconds from the first offer, in the same order (``openloop.offer``)."""
    hdrs = {"Authorization": f"Bearer {token}", **(headers or {})}
    count = math.lcm(len(urls), len(paths))  # request i goes to urls[i % U] + paths[i % P]
    targets = [
        openloop.target(urls[i % len(urls)] + paths[i % len(paths)], method=method, headers=hdrs, body=json)
        for i in range(count)
    ]
    return await openloop.offer(targets, rate=rate, seconds=seconds, arrivals=arrivals)
