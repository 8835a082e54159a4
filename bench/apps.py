"""The gateway as `gateway serve` runs it (uvloop, httptools, JSON logs, gc.freeze), plus a bare
Litestar route in the same server that returns a constant room: the ceiling for a cache hit.

    python -m bench.apps PORT     (env: BENCH_UPSTREAM, BENCH_QPS, BENCH_PROXY, and any GATEWAY_* setting)
"""

from __future__ import annotations

import os
import sys

import msgspec
from litestar import Response, get
from tests.support import SECRETS, directory

from gateway.api import Edge
from gateway.app import create_app
from gateway.cli import _run, _server
from gateway.models import Room
from gateway.settings import settings_from_env

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


def build(port: int) -> Edge:
    settings = settings_from_env(os.environ, host="127.0.0.1", port=port)
    upstream = os.environ["BENCH_UPSTREAM"]
    qps, proxy = int(os.environ.get("BENCH_QPS", "200")), os.environ.get("BENCH_PROXY")
    app = create_app(settings, env=SECRETS, directory=directory(upstream, qps, proxy_url=proxy))
    app.app.register(bare)  # (on the Litestar app behind the edge, as the gateway's own routes)
    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = build(port)
    _run(_server(app, settings_from_env(os.environ, host="127.0.0.1", port=port)).serve())
