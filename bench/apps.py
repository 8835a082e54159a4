"""The gateway as `gateway serve` runs it (granian's embedded server, uvloop, JSON logs,
gc.freeze), plus a bare Litestar route in the same server that returns a constant room: the
ceiling for a cache hit.

    python -m bench.apps PORT [bare]   (env: BENCH_UPSTREAM, BENCH_QPS, BENCH_PROXY, BENCH_SERVER,
                                        any GATEWAY_* setting)

``bare``: a Litestar app of that one route alone, in a process of its own (the bar of issue 25).
``BENCH_SERVER=uvicorn`` serves either on uvicorn configured as `gateway serve` ran it until
2026-12-07 (httptools, no access log, backlog 4096), to compare the two servers in one run.
"""

from __future__ import annotations

import os
import sys

import msgspec
import uvicorn
from litestar import Litestar, Response, get
from tests.support import SECRETS, directory

from gateway import logs
from gateway.app import create_app
from gateway.cli import _run, _server
from gateway.models import Room
from gateway.settings import Settings, settings_from_env

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


def build(port: int) -> Litestar:
    settings = settings_from_env(os.environ, host="127.0.0.1", port=port)
    upstream = os.environ["BENCH_UPSTREAM"]
    qps, proxy = int(os.environ.get("BENCH_QPS", "200")), os.environ.get("BENCH_PROXY")
    otel = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}  # (tracing: bench.cache_hits traces)
    app = create_app(settings, env={**SECRETS, **otel}, directory=directory(upstream, qps, proxy_url=proxy))
    getattr(app, "app", app).register(bare)  # (behind the edge, as the gateway's own routes; "app": older trees)
    return app


def bare_app() -> Litestar:
    return Litestar(route_handlers=[bare], openapi_config=None, logging_config=None)


def on_uvicorn(app: Litestar, settings: Settings) -> uvicorn.Server:
    """uvicorn as `gateway serve` configured it before granian (without its drain on SIGTERM)."""
    logs.configure(settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_config=None,
        server_header=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        backlog=4096,
    )
    return uvicorn.Server(config)


if __name__ == "__main__":
    port = int(sys.argv[1])
    settings = settings_from_env(os.environ, host="127.0.0.1", port=port)
    app = bare_app() if sys.argv[2:] == ["bare"] else build(port)
    _run((on_uvicorn if os.environ.get("BENCH_SERVER") == "uvicorn" else _server)(app, settings).serve())
