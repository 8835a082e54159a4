"""The edge's direct dispatch of the room routes answers exactly as Litestar's router does: the
same statuses, headers and bodies for successes, refusals and errors, request by request."""

from __future__ import annotations

import json
from typing import Any

import httpx

from live_engine_emulator import serve_emulator
from tests.conftest import SEEN_USERSIGS
from tests.support import TOKENS, new_emulator, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", ROOM, {}),
    ("GET", ROOM, {}),  # now a hit
    ("GET", ROOM, {"headers": {"cache-control": "no-cache"}}),
    ("PATCH", ROOM, {"json": {"room_name": "parity", "activity_status": 2}}),
    ("PATCH", ROOM, {"json": {"activity_status": "2"}}),
    ("PATCH", ROOM, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("PATCH", ROOM, {"content": b"x" * (64 * 1024 + 1)}),
    ("GET", ROOM + "/metadata", {}),
    ("PATCH", ROOM + "/metadata", {"json": {"metadata": {"k1": "v1", "k2": "v2"}}}),
    ("GET", ROOM + "/metadata", {"params": [("key", "k1"), ("key", "k2")]}),
    ("DELETE", ROOM + "/metadata", {"params": [("key", "k2")]}),
    ("DELETE", ROOM + "/metadata", {}),
    ("DELETE", ROOM + "/metadata", {"params": [("key", "never-set")]}),
    ("GET", "/v1/tenants/acme/rooms/missing", {}),
    ("GET", "/v1/tenants/acme/rooms/" + "r" * 49, {}),
    ("GET", "/v1/tenants/nobody/rooms/room-1", {}),
    ("GET", "/v1/tenants/globex/rooms/room-1", {}),
    ("GET", ROOM, {"headers": {"authorization": ""}}),
    ("PATCH", ROOM, {"headers": {"authorization": f"Bearer {TOKENS['ro']}"}, "json": {"room_name": "x"}}),
    ("GET", ROOM, {"headers": {"x-request-id": "parity-1"}}),
    ("POST", ROOM, {"json": {}}),  # not a room route's method: Litestar answers both times
    ("GET", ROOM + "/", {}),
    # the catalogue's routes, from the same table
    ("GET", "/v1/tenants/acme/rooms", {"params": {"limit": 2}}),
    ("GET", "/v1/tenants/acme/rooms", {"params": {"limit": 21}}),
    ("POST", "/v1/tenants/acme/rooms", {"json": {"room_id": "parity-room"}}),
    ("POST", "/v1/tenants/acme/rooms", {"json": {"room_id": "parity-room"}}),  # 409
    ("DELETE", "/v1/tenants/acme/rooms/parity-room", {}),
    ("GET", ROOM + "/stats", {}),
    ("POST", ROOM + "/admins", {"json": {"accounts": ["alice"]}}),
    ("GET", ROOM + "/admins", {"headers": {"authorization": f"Bearer {TOKENS['ro']}"}}),
    ("DELETE", ROOM + "/bans", {}),
    ("GET", ROOM + "/seats", {}),
    ("DELETE", ROOM + "/seats/members", {"params": {"account": "nobody"}}),
    ("PUT", ROOM + "/robots", {"json": {}}),  # 405 with Allow, both times
    ("GET", "/v1/tenants/acme/rooms/metadata", {}),  # a room named like a route's last segment
    ("GET", "/v1/tenants/acme//rooms", {}),
]
VARYING = {"date", "x-request-id", "x-upstream-request-id", "content-length"}


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in VARYING}
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json") and response.content:
        body = json.loads(response.content)
        if isinstance(body, dict):  # what differs between two runs, whoever routes them
            for varying in ("request_id", "upstream_request_id", "create_time"):
                body.pop(varying, None)
            for room in body.get("rooms", []):
                room.pop("create_time", None)
    return response.status_code, headers, body


async def _answers(*, direct: bool) -> list[tuple[int, dict[str, str], Any]]:
    """Each run gets a fresh emulator, so both start from the same Tencent state."""
    emulator = new_emulator()
    async with serve_emulator(emulator) as upstream_url, start_gateway(upstream_url, direct_routes=direct) as gateway:
        answers = [_answer(await gateway.client.request(method, path, **kw)) for method, path, kw in REQUESTS]
    SEEN_USERSIGS.update(sig for sigs in emulator.usersigs.values() for sig in sigs)  # for the secret scan
    return answers


async def test_direct_dispatch_answers_as_litestar_routing_does() -> None:
    """The same requests, in the same order, from the same Tencent state: identical answers."""
    routed = await _answers(direct=False)
    direct = await _answers(direct=True)
    for request, a, b in zip(REQUESTS, routed, direct, strict=True):
        assert a == b, (request[:2], a, b)
    statuses = [status for status, _, _ in direct]
    assert {200, 204, 400, 401, 403, 404, 405, 413} <= set(statuses)
