"""The gateway as `gateway serve` runs it (uvicorn, uvloop, httptools, JSON logs, gc.freeze), plus
a bare Litestar route in the same server that returns a constant room: the ceiling for a cache hit;
and a bare forwarding hop (``hop``): the least a forwarded write through this server costs.

    python -m bench.apps PORT [bare]   (env: BENCH_UPSTREAM, BENCH_QPS, BENCH_PROXY, BENCH_SERVER,
                                        BENCH_SENDER, any GATEWAY_* setting)

``bare``: a Litestar app of that one route alone, in a process of its own (the bar of issue 25).
``BENCH_SERVER=granian`` serves either on granian's embedded server in this event loop, set up as
`gateway serve` would run it (the candidate of 2026-12-07, BENCHMARKS.md; commit 21c87ca had it
draining on SIGTERM). For granian's own worker process (``python -m granian``, not embedded),
``bench.apps:factory`` builds either (env BENCH_APP=gateway|bare, BENCH_PORT).
``BENCH_SENDER=aiohttp``: the gateway sends to Tencent through aiohttp's client
(``bench.upstream_transport.AiohttpSender``) instead of its transport (issue 24), the send window
asked on aiohttp's connection signals; ``aiohttp-headers`` asks it on ``on_request_headers_sent``,
``aiohttp-unchecked`` does not ask it (a reference, not a contract the budget can use).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, patch
from tests.support import APP_ID, KEY, SECRETS, directory
from TLSSigAPIv2 import TLSSigAPIv2

from gateway import logs
from gateway.app import create_app
from gateway.cli import _run, _server
from gateway.models import Room
from gateway.settings import Settings, settings_from_env
from gateway.transport import PooledTransport

if TYPE_CHECKING:
    from granian.server.embed import Server

ROOM = msgspec.json.encode(
    Room(
        room_id="room-1",
        room_name="room-1",
        room_type="Live",
        owner_account="administrator",
        create_time=1795300000,
        is_seat_enabled=True,
        take_seat_mode="FreeToTake",
        max_seat_count=8,
        max_member_count=300,
        is_message_disabled=False,
        cover_url="",
        category=[],
        activity_status=0,
        view_count=0,
        is_public_visible=True,
    )
)


@get("/bare/rooms/{room_id:str}", sync_to_thread=False)
def bare(room_id: str) -> Response[bytes]:
    return Response(ROOM, media_type="application/json")


_HOP: dict[str, PooledTransport] = {}


@patch("/bare/hop/{room_id:str}", status_code=204)
async def hop(request: Request[Any, Any, Any], room_id: str) -> None:
    """The least a forwarding hop in this server costs (``bench.forwarding``'s control): the body
    read, one fixed, pre-signed ``update_room_info`` POSTed to BENCH_UPSTREAM through the gateway's
    transport, its status checked. No auth, budget, validation, signing, idempotency or metrics."""
    await request.body()
    transport = _HOP.get("transport") or _HOP.setdefault("transport", PooledTransport(connections=64))
    reply = await transport.post(os.environ["BENCH_UPSTREAM"], HOP_TARGET, HOP_BODY)
    if reply.status != 200 or msgspec.json.decode(reply.content).get("ErrorCode") != 0:
        raise RuntimeError(f"the upstream refused the hop's call: {reply.status}")


HOP_BODY = msgspec.json.encode({"RoomInfo": {"RoomId": "room-1", "ActivityStatus": 1}})
HOP_TARGET = (
    f"/v4/live_engine_http_srv/update_room_info?sdkappid={APP_ID}&identifier=administrator"
    f"&usersig={TLSSigAPIv2(APP_ID, KEY).gen_sig('administrator', 86400)}&random=7&contenttype=json"
)


def build(port: int) -> Litestar:
    settings = settings_from_env(os.environ, host="127.0.0.1", port=port)
    upstream = os.environ["BENCH_UPSTREAM"]
    qps, proxy = int(os.environ.get("BENCH_QPS", "200")), os.environ.get("BENCH_PROXY")
    otel = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}  # (tracing: bench.cache_hits traces)
    sender = None
    checks = {"aiohttp": "connection", "aiohttp-headers": "headers", "aiohttp-unchecked": None}
    if (name := os.environ.get("BENCH_SENDER", "transport")) != "transport":
        from bench.upstream_transport import AiohttpSender

        sender = functools.partial(AiohttpSender, connections=settings.upstream_connections, check=checks[name])
    app = create_app(
        settings,
        env={**SECRETS, **otel},
        directory=directory(upstream, qps, proxy_url=proxy),
        transport_factory=sender,
    )
    for control in (bare, hop):  # (behind the edge, as the gateway's own routes; "app": older trees)
        getattr(app, "app", app).register(control)
    return app


def bare_app() -> Litestar:
    return Litestar(route_handlers=[bare], openapi_config=None, logging_config=None)


def on_granian(app: Litestar, settings: Settings) -> Server:
    """granian's embedded server as the candidate `gateway serve` ran it (without its drain)."""
    from granian.constants import HTTPModes, Interfaces  # (the bench extra: pip install -e .[bench])
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        app,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        backlog=4096,
        log_access=False,
        log_level=LogLevels(settings.log_level),
    )
    logs.configure(settings.log_level)  # (after granian's own logging set-up)
    return server


def overload_variant(server: uvicorn.Server) -> uvicorn.Server:
    """``server`` with the overload variant of ``bench.overload`` the environment names:
    BENCH_BACKLOG (the listen backlog), BENCH_REFUSAL=close (every refusal closes its connection,
    as before issue 27's second admission session), BENCH_SHED=1 (sheds every API request, for
    what a refusal costs; with GATEWAY_OVERLOAD_LAG=0, so that no lag sample ends it, and a long
    GATEWAY_OVERLOAD_UNREADY_AFTER, or its refusals close once it is unready)."""
    from gateway.admission import protocol

    overload = server.config.app.state.gateway.overload
    if "BENCH_BACKLOG" in os.environ:
        server.config.backlog = int(os.environ["BENCH_BACKLOG"])
    if os.environ.get("BENCH_REFUSAL") == "close":
        server.config.http = protocol(overload, keep_alive=False)  # type: ignore[assignment]
    if os.environ.get("BENCH_SHED") == "1":
        overload.shedding = True
    return server


def factory() -> Litestar:
    """For granian's worker process (``--factory bench.apps:factory``): the app BENCH_APP names."""
    logs.configure(os.environ.get("GATEWAY_LOG_LEVEL", "info"))  # type: ignore[arg-type]
    return bare_app() if os.environ.get("BENCH_APP") == "bare" else build(int(os.environ["BENCH_PORT"]))


if __name__ == "__main__":
    port = int(sys.argv[1])
    settings = settings_from_env(os.environ, host="127.0.0.1", port=port)
    if os.environ.get("BENCH_SERVER") == "granian":
        _run(on_granian(bare_app() if sys.argv[2:] == ["bare"] else build(port), settings).serve())
    elif sys.argv[2:] == ["bare"]:  # uvicorn as `gateway serve` sets it up, without the gateway's drain
        _run(uvicorn.Server(_server(bare_app(), settings).config).serve())
    else:
        _run(overload_variant(_server(build(port), settings)).serve())
