"""Tencent's callbacks in (SPEC §9): verified, acknowledged, the cached room invalidated,
duplicates dropped; in one process against the emulator, and across real replicas."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.callbacks import ACK, sign
from live_engine_emulator import Emulator
from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.support import APP_ID, CALLBACK_TOKEN, Gateway, start_gateway

PATH = "/v1/tenants/acme/rooms/room-1"


def signed(command: str, *, app: int = APP_ID, at: float | None = None, token: str = CALLBACK_TOKEN) -> str:
    """The URL Tencent calls, signed as it signs (names in Tencent's mixed case)."""
    request_time = str(int(time.time() if at is None else at))
    return (
        f"/v1/callbacks/tencent?SdkAppid={app}&CallbackCommand={command}&contenttype=json"
        f"&ClientIP=1.2.3.4&OptPlatform=RESTAPI&RequestTime={request_time}&Sign={sign(token, request_time)}"
    )


def update_body(room: str = "room-1", when: int = 1_800_000_000_000) -> dict[str, Any]:
    """A Live.CallbackAfterUpdateRoomInfo body as Tencent's samples write it (a numeric account)."""
    return {
        "CallbackCommand": "Live.CallbackAfterUpdateRoomInfo",
        "Operator_Account": 144115212345,
        "EventTime": when,
        "RoomInfo": {"RoomId": room, "RoomName": "renamed", "Unknown": [1, 2]},
    }


async def cache_status(gateway: Gateway) -> str:
    return (await gateway.client.get(PATH)).headers["x-cache"]


def test_the_signature_is_tencents() -> None:
    """Tencent's documented test vector: token xxxxyyyy, RequestTime 1669872112."""
    assert sign("xxxxyyyy", "1669872112") == "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"


async def test_a_signed_callback_is_acknowledged_and_invalidates_the_room(upstream_url: str) -> None:
    """A signed update answers Tencent's OK at once, and the room cached for a minute is read
    from Tencent again (query names in any case)."""
    async with start_gateway(upstream_url, cache_ttl=60.0) as gateway:
        assert await cache_status(gateway) == "miss"
        assert await cache_status(gateway) == "hit"
        url = signed("Live.CallbackAfterUpdateRoomInfo").replace("SdkAppid", "SDKAPPID").replace("Sign=", "sign=")
        response = await gateway.client.post(url, json=update_body(), headers={"authorization": ""})
        assert response.status_code == 200
        assert response.content == ACK
        assert await cache_status(gateway) == "miss"


@pytest.mark.parametrize(
    ("url", "status", "outcome"),
    [
        (signed("Live.CallbackAfterUpdateRoomInfo", token="not-the-token"), 401, "bad_sign"),
        (signed("Live.CallbackAfterUpdateRoomInfo", at=time.time() - 120), 401, "stale"),
        (signed("Live.CallbackAfterUpdateRoomInfo", at=time.time() + 120), 401, "stale"),
        (signed("Live.CallbackAfterUpdateRoomInfo", app=1400000002), 401, "unknown_app"),  # globex: no token
        (signed("Live.CallbackAfterUpdateRoomInfo", app=1499999999), 401, "unknown_app"),
        (signed("Live.CallbackAfterUpdateRoomInfo").split("&Sign=")[0], 401, "bad_sign"),
        (signed("Live.CallbackAfterUpdateRoomInfo").replace("&RequestTime=", "&RequestTime=x"), 401, "stale"),
    ],
    ids=["bad-sign", "old", "future", "no-token", "unknown-app", "unsigned", "bad-time"],
)
async def test_a_callback_that_is_not_tencents_changes_nothing(
    upstream_url: str, url: str, status: int, outcome: str
) -> None:
    """Refused with a problem document, counted by outcome, and the cached room stays cached."""
    async with start_gateway(upstream_url, cache_ttl=60.0) as gateway:
        await cache_status(gateway)
        response = await gateway.client.post(url, json=update_body(), headers={"authorization": ""})
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unauthenticated"
        assert CALLBACK_TOKEN not in response.text
        assert await cache_status(gateway) == "hit"
        metrics = (await gateway.client.get("/metrics")).text
        assert f'outcome="{outcome}"' in metrics


async def test_a_malformed_callback_is_400(upstream_url: str) -> None:
    """Signed, but not JSON (or a body field of an impossible type): 400, nothing invalidated."""
    async with start_gateway(upstream_url, cache_ttl=60.0) as gateway:
        await cache_status(gateway)
        for body in (b"not json", b'{"RoomId": {"nested": true}}'):
            response = await gateway.client.post(
                signed("Live.CallbackAfterUpdateRoomInfo"), content=body, headers={"authorization": ""}
            )
            assert response.status_code == 400
            assert response.json()["code"] == "invalid_request"
        assert await cache_status(gateway) == "hit"


async def test_a_duplicate_is_acknowledged_and_dropped(upstream_url: str, emulator: Emulator) -> None:
    """The same callback twice (a replayed URL, a retry): both answered OK, the second dropped,
    so it does not invalidate the room the first one's refill cached."""
    async with start_gateway(upstream_url, cache_ttl=60.0) as gateway:
        await cache_status(gateway)
        url, body = signed("Live.CallbackAfterDestroyRoom"), {"RoomId": "room-1", "EventTime": 1_800_000_000_001}
        for _ in range(2):
            response = await gateway.client.post(url, json=body, headers={"authorization": ""})
            assert response.status_code == 200
            if _ == 0:
                assert await cache_status(gateway) == "miss"
        assert await cache_status(gateway) == "hit"
        metrics = (await gateway.client.get("/metrics")).text
    assert 'outcome="duplicate"' in metrics
    assert 'command="Live.CallbackAfterDestroyRoom"' in metrics


async def test_unknown_commands_are_accepted_under_one_label(upstream_url: str) -> None:
    """A command the gateway does not know is acknowledged and counted as "other": the label
    set stays closed whatever a caller writes in the query."""
    async with start_gateway(upstream_url) as gateway:
        response = await gateway.client.post(signed("Live.CallbackAfterSomethingNew"), json={"X": 1})
        assert response.status_code == 200
        metrics = (await gateway.client.get("/metrics")).text
    assert 'command="other"' in metrics
    assert "SomethingNew" not in metrics


@pytest.mark.slow
def test_a_callback_on_one_replica_invalidates_the_room_on_another(tmp_path: Path) -> None:
    """Two replicas on one Redis, the room cached for a minute: a signed update received by
    replica B makes replica A read the room from Tencent again; the same callback sent to A
    afterwards is dropped as a duplicate (fleet-wide)."""
    with standalone() as redis, fleet(tmp_path, redis.url, replicas=2, cache_ttl=60.0) as running:
        a, b = running.urls
        auth = {"authorization": "Bearer token-rw"}
        assert httpx.get(a + PATH, headers=auth).headers["x-cache"] in {"hit", "miss"}
        assert httpx.get(a + PATH, headers=auth).headers["x-cache"] == "hit"
        url, body = signed("Live.CallbackAfterUpdateRoomInfo"), json.dumps(update_body(when=1_800_000_000_002))
        assert httpx.post(b + url, content=body).status_code == 200
        assert httpx.get(a + PATH, headers=auth).headers["x-cache"] == "miss"
        assert httpx.post(a + url, content=body).status_code == 200
        assert httpx.get(a + PATH, headers=auth).headers["x-cache"] == "hit", "the duplicate invalidated nothing"
        assert running.counter("gateway_callbacks_total") == 2
