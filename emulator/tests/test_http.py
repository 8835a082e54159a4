"""The emulator over real HTTP, as other teams' tests reach it: Tencent's wire format on one side,
the ``/_emulator/*`` control API (rooms, faults, counters) on the other."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from live_engine_emulator import Emulator, serve_emulator
from live_engine_emulator.usersig import mint

APP, KEY, ADMIN = 1400000001, "k" * 32, "administrator"


@pytest.fixture
async def base() -> AsyncIterator[str]:
    """A fresh emulator with one app, served on a free loopback port."""
    emulator = Emulator(seed=1)
    emulator.add_app(APP, KEY, {ADMIN})
    async with serve_emulator(emulator) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client."""
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, base: str, api: str, body: Any, key: str = KEY) -> dict[str, Any]:
    """POST one Tencent command, signed with ``key``; its JSON reply."""
    sig = mint(APP, key, ADMIN, issued=int(time.time()) - 5, expire=3600)
    query = {"sdkappid": str(APP), "identifier": ADMIN, "usersig": sig, "random": "42", "contenttype": "json"}
    async with http.post(f"{base}/v4/live_engine_http_srv/{api}", params=query, json=body) as reply:
        assert reply.status == 200
        data: dict[str, Any] = await reply.json()
        return data


async def test_a_signed_call_is_answered_in_tencents_envelope(base: str, http: aiohttp.ClientSession) -> None:
    """A room created over HTTP is read back in Tencent's envelope; a wrong key is 70009."""
    created = await call(http, base, "create_room", {"RoomInfo": {"RoomId": "r1", "RoomType": "Live"}})
    assert (created["ActionStatus"], created["ErrorCode"]) == ("OK", 0)
    info = await call(http, base, "get_room_info", {"RoomId": "r1"})
    assert info["Response"]["RoomInfo"]["RoomId"] == "r1"
    assert (await call(http, base, "get_room_info", {"RoomId": "r1"}, key="wrong"))["ErrorCode"] == 70009


async def test_the_control_api_seeds_scripts_faults_and_counts(base: str, http: aiohttp.ClientSession) -> None:
    """Rooms and members seeded over /_emulator, a scripted ErrorCode and HTTP 502, then the counters."""
    async with http.post(f"{base}/_emulator/rooms", json={"sdkappid": APP, "RoomId": "seeded"}) as reply:
        assert (await reply.json())["RoomId"] == "seeded"
    members = {"sdkappid": APP, "RoomId": "seeded", "accounts": ["u1", "u2"]}
    async with http.post(f"{base}/_emulator/members", json=members) as reply:
        assert reply.status == 200
    script = {"api": "get_member_list", "codes": [100001, "http_502"]}
    async with http.post(f"{base}/_emulator/fail_next", json=script) as reply:
        assert reply.status == 200
    assert (await call(http, base, "get_member_list", {"RoomId": "seeded", "Next": ""}))["ErrorCode"] == 100001
    with pytest.raises(AssertionError):  # the 502 has no envelope
        await call(http, base, "get_member_list", {"RoomId": "seeded", "Next": ""})
    listed = await call(http, base, "get_member_list", {"RoomId": "seeded", "Next": ""})
    assert listed["Response"]["MemberCount"] == 2
    async with http.get(f"{base}/_emulator/stats") as reply:
        stats = await reply.json()
    assert stats["calls"] == {"get_member_list": 3}
    assert stats["codes"] == {"100001": 1, "0": 1}
    async with http.post(f"{base}/_emulator/reset") as reply, http.get(f"{base}/_emulator/stats") as after:
        assert (await after.json())["calls"] == {}


async def test_a_dropped_connection_has_no_status_line(base: str, http: aiohttp.ClientSession) -> None:
    """With ``drop_rate`` 1 every call's connection closes before any reply."""
    async with http.post(f"{base}/_emulator/faults", json={"drop_rate": 1.0}) as reply:
        assert reply.status == 200
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, base, "get_room_list", {"Next": "", "Count": 20})
