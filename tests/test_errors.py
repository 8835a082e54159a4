"""Tencent's ErrorCodes and transport failures, as callers see them (SPEC §2 "Errors")."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.signing import Signature, Signer
from gateway.upstream import ERROR_CODES
from live_engine_emulator import Emulator
from live_engine_emulator.state import APPLY_THEN_DROP, DROP, HTTP_502
from live_engine_emulator.usersig import mint
from tests.support import APP_ID, KEY, Call, Gateway, ScriptedTencent, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"
NO_CACHE = {"cache-control": "no-cache"}
ATTEMPTS = 4  # Settings.retry_attempts default

# ErrorCode -> (HTTP status, problem code, how many times it must be injected to surface)
EXPECTED: dict[int, tuple[int, str, int]] = {
    100002: (400, "invalid_request", 1),
    100004: (404, "room_not_found", 1),
    100006: (403, "forbidden", 1),
    100503: (404, "metadata_keys_not_found", 1),
    100500: (422, "metadata_limit_exceeded", 1),
    100501: (422, "metadata_limit_exceeded", 1),
    100502: (422, "metadata_limit_exceeded", 1),
    100504: (422, "metadata_limit_exceeded", 1),
    **dict.fromkeys((60007, 60011, 60018, 60019, 100012), (429, "rate_limited", ATTEMPTS)),
    **dict.fromkeys((70001, 70002, 70003, 70005, 70052, 60004, 60005), (503, "upstream_misconfigured", 2)),
    70050: (503, "upstream_misconfigured", 1),
    **dict.fromkeys(
        (60006, 60010, 60016, 60017, 60020, 60021, 70009, 70013, 70014, 70016, 70020, 70051, 70114, 70403, 100007),
        (503, "upstream_misconfigured", 1),
    ),
    **dict.fromkeys((100001, 60008, 60013, 60014, 70169, 70500), (502, "upstream_unavailable", ATTEMPTS)),
    100005: (502, "upstream_rejected", 1),  # an unmapped code
    60002: (502, "upstream_rejected", 1),
}


def readme_error_table() -> dict[int, tuple[int, str]]:
    """The README's "Every Tencent ErrorCode the gateway maps" table: code -> (status, problem
    code); the codes of its "anything else" row (examples of unmapped codes) under key -code."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    table = text.split("Every Tencent ErrorCode the gateway maps", 1)[1].split("\n\n", 2)[1]
    rows: dict[int, tuple[int, str]] = {}
    for line in table.splitlines()[2:]:  # past the header and its rule
        cells = [c.strip() for c in line.strip("|").split("|")]
        codes = re.findall(r"\b\d{5,6}\b", cells[0])
        status, code = re.search(r"(\d{3}) `([a-z_]+)`", cells[-1]).groups()  # type: ignore[union-attr]
        sign = -1 if cells[0].startswith("anything else") else 1
        rows.update(dict.fromkeys((sign * int(c) for c in codes), (int(status), code)))
    return rows


def test_every_mapped_code_is_tested() -> None:
    """This file's table covers every code the gateway maps, and every code it names is tested."""
    assert set(ERROR_CODES) <= set(EXPECTED)


def test_the_readme_error_table_is_the_mapping() -> None:
    """The README's ErrorCode table names exactly the codes ``ERROR_CODES`` maps, each with the
    status and problem code that the mapped error carries (so the table cannot drift silently)."""
    documented = readme_error_table()
    assert len(documented) > 30, "the README table was not found"
    unmapped = {-code: outcome for code, outcome in documented.items() if code < 0}
    assert {code for code in documented if code > 0} == set(ERROR_CODES)
    for code, error in ERROR_CODES.items():
        assert documented[code] == (error.status, error.code), code
        assert EXPECTED[code][:2] == documented[code], code
    assert unmapped, "the table's row for unmapped codes was not found"
    for code, outcome in unmapped.items():
        assert code not in ERROR_CODES
        assert outcome == EXPECTED[code][:2] == (502, "upstream_rejected")


@pytest.mark.parametrize("code", sorted(EXPECTED))
async def test_error_code_mapping(gateway: Gateway, emulator: Emulator, code: int) -> None:
    """Each Tencent code becomes its documented status and problem code, with Tencent's ids."""
    status, problem_code, times = EXPECTED[code]
    emulator.fail_next("get_room_info", *[code] * times)
    response = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == problem_code
    assert problem["status"] == status
    assert problem["upstream_code"] == code
    assert problem["upstream_request_id"].startswith("Id-emu")
    assert response.headers["x-upstream-request-id"] == problem["upstream_request_id"]
    assert emulator.calls["get_room_info"] == times
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1


async def test_transient_failure_is_retried_then_succeeds(gateway: Gateway, emulator: Emulator) -> None:
    """100001, an HTTP 502 and a dropped connection are each retried; the caller sees a 200."""
    emulator.fail_next("get_room_info", 100001, HTTP_502, DROP)
    response = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert response.status_code == 200
    assert emulator.calls["get_room_info"] == 4


async def test_100001_retried_then_surfaced_as_502(gateway: Gateway, emulator: Emulator) -> None:
    """100001 on every attempt: retried up to the attempt limit, then 502 upstream_unavailable."""
    emulator.fail_next("get_room_info", *[100001] * 10)
    response = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
    assert emulator.calls["get_room_info"] == ATTEMPTS


@pytest.mark.parametrize("fault", [HTTP_502, DROP])
async def test_transport_failures_surface_as_502(gateway: Gateway, emulator: Emulator, fault: int) -> None:
    """HTTP 502s or dropped connections on every attempt end in 502 upstream_unavailable."""
    emulator.fail_next("get_room_info", *[fault] * ATTEMPTS)
    response = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
    assert "upstream_code" not in response.json()


async def test_expired_usersig_is_refreshed_and_retried_once(gateway: Gateway, emulator: Emulator) -> None:
    """A cached UserSig Tencent calls expired (70001) is dropped, a new one signed, the call retried."""
    now = int(time.time())
    expired = mint(APP_ID, KEY, "administrator", issued=now - 7200, expire=3600)
    # The cache believes it is valid for three more days (past the refresh margin): only Tencent knows better.
    tenant = gateway.app.state.gateway.directory.tenants["acme"]
    await gateway.app.state.gateway.service._signer._store.put(
        Signer.key(tenant), Signature(value=expired, expires_at=now + 3 * 86400), ttl=86400
    )
    response = await gateway.client.get(ROOM)
    assert response.status_code == 200
    assert emulator.codes[70001] == 1
    assert emulator.codes[0] == 1
    assert emulator.calls["get_room_info"] == 2
    fresh = emulator.usersigs[APP_ID]
    assert expired not in fresh
    assert len(fresh) == 1


async def test_usersig_is_reused_across_calls(gateway: Gateway, emulator: Emulator) -> None:
    """One UserSig serves many calls: it is not re-signed per request."""
    for _ in range(5):
        assert (await gateway.client.get(ROOM, headers=NO_CACHE)).status_code == 200
    assert len(emulator.usersigs[APP_ID]) == 1


async def test_rate_limit_code_is_retried_after_a_pause(gateway: Gateway, emulator: Emulator) -> None:
    """60007 once: the schedule pauses, the call is retried, the caller gets a 200."""
    emulator.fail_next("get_room_info", 60007)
    response = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert response.status_code == 200
    assert emulator.calls["get_room_info"] == 2


async def test_lockout_pauses_the_tenant(gateway: Gateway, emulator: Emulator) -> None:
    """After 70050 no call for that tenant reaches Tencent during the cool-down; Retry-After says how long."""
    emulator.fail_next("get_room_info", 70050)
    assert (await gateway.client.get(ROOM, headers=NO_CACHE)).status_code == 503
    again = await gateway.client.patch(ROOM, json={"room_name": "x"})
    assert again.status_code == 503
    assert again.json()["code"] == "upstream_misconfigured"
    assert 55 <= int(again.headers["retry-after"]) <= 60
    assert sum(emulator.calls.values()) == 1
    other = await gateway.client.get("/v1/tenants/globex/rooms/room-1", headers={"authorization": "Bearer token-other"})
    assert other.status_code == 200, "another tenant is not paused"


async def test_rejected_credentials_pause_calls_briefly(upstream_url: str, emulator: Emulator) -> None:
    """A wrong key (70009) pauses the tenant for misconfig_cooldown, bounding calls to Tencent."""
    async with start_gateway(upstream_url, misconfig_cooldown=5.0) as gateway:
        emulator.apps[APP_ID].key = "rotated-at-tencent"
        statuses = [(await gateway.client.get(ROOM, headers=NO_CACHE)).status_code for _ in range(10)]
    assert statuses == [503] * 10
    assert emulator.calls["get_room_info"] == 1
    assert emulator.codes[70009] == 1


async def test_a_usersig_rejected_twice_pauses_and_says_for_how_long(upstream_url: str, emulator: Emulator) -> None:
    """A fresh UserSig rejected again (70001 twice): 503 whose Retry-After is the pause, and the
    calls that follow within it are refused without reaching Tencent."""
    async with start_gateway(upstream_url, misconfig_cooldown=5.0) as gateway:
        emulator.fail_next("get_room_info", 70001, 70001)
        first = await gateway.client.get(ROOM, headers=NO_CACHE)
        then = await gateway.client.get(ROOM, headers=NO_CACHE)
    assert first.status_code == 503
    assert first.headers["retry-after"] == "5"
    assert then.status_code == 503
    assert emulator.calls["get_room_info"] == 2


async def test_timeout_is_504_within_the_deadline(upstream_url: str, emulator: Emulator) -> None:
    """Tencent slower than the upstream timeout: 504 upstream_timeout, within the total deadline."""
    emulator.faults.latency = 4.0
    async with start_gateway(upstream_url, upstream_timeout=3.05, deadline=3.3) as gateway:
        started = time.monotonic()
        response = await gateway.client.get(ROOM, headers=NO_CACHE)
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"
    assert elapsed < 3.3 + 0.5


async def test_retried_delete_that_finds_no_keys_counts_as_done(gateway: Gateway, emulator: Emulator) -> None:
    """A delete applied but whose reply was lost is retried; the retry's 100503 means it is done."""
    emulator.apps[APP_ID].metadata["room-1"] = {"a": "1"}
    emulator.fail_next("del_room_metadata", APPLY_THEN_DROP)
    response = await gateway.client.delete(f"{ROOM}/metadata", params={"key": "a"})
    assert response.status_code == 204
    assert emulator.apps[APP_ID].metadata["room-1"] == {}
    assert emulator.codes[100503] == 1


async def test_delete_of_absent_keys_is_404(gateway: Gateway) -> None:
    """Without an uncertain earlier attempt, 100503 is the caller's 404."""
    response = await gateway.client.delete(f"{ROOM}/metadata", params={"key": "nope"})
    assert response.status_code == 404
    assert response.json()["code"] == "metadata_keys_not_found"


async def test_write_applied_then_reply_lost_is_retried_and_succeeds(gateway: Gateway, emulator: Emulator) -> None:
    """update_room_info is idempotent: a lost reply is retried and the caller gets its 204."""
    emulator.fail_next("update_room_info", APPLY_THEN_DROP)
    response = await gateway.client.patch(ROOM, json={"room_name": "After"})
    assert response.status_code == 204
    assert emulator.apps[APP_ID].rooms["room-1"]["RoomName"] == "After"
    assert emulator.calls["update_room_info"] == 2


# ---------------------------------------------------------------------- rare replies, via a scripted Tencent


class Scripted(ScriptedTencent):
    """Tencent answering each call with the next scripted (status, body)."""

    def __init__(self) -> None:
        super().__init__(self._next)
        self.replies: list[tuple[int, bytes]] = []

    def _next(self, call: Call) -> tuple[int, bytes]:
        return self.replies.pop(0) if self.replies else (200, b"{}")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, Gateway]]:
    """A gateway whose Tencent answers from a script, through the production Sender seam."""
    upstream = Scripted()
    async with start_gateway("http://tencent.invalid", transport_factory=lambda: upstream) as gw:
        yield upstream, gw


OK_ROOM = (
    b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","RequestId":"r1","Response":{"RoomInfo":{"RoomId":"room-1"}}}'
)


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        ((200, b"<html>oops</html>"), 502, "upstream_unavailable"),
        ((500, b"{}"), 502, "upstream_unavailable"),
        ((200, b'{"ActionStatus":"OK","ErrorCode":0,"RequestId":"r"}'), 502, "upstream_unavailable"),
        ((200, b'{"ActionStatus":"FAIL","ErrorInfo":"odd","RequestId":"r"}'), 502, "upstream_rejected"),
        ((200, b'{"ErrorCode":0,"Response":{"RoomInfo":{"RoomId":5}}}'), 502, "upstream_unavailable"),
    ],
)
async def test_malformed_upstream_replies(
    scripted: tuple[Scripted, Gateway], reply: tuple[int, bytes], status: int, code: str
) -> None:
    """Replies that are not what Tencent documents never become a 500 or a wrong 200."""
    upstream, gateway = scripted
    upstream.replies = [reply] * ATTEMPTS
    response = await gateway.client.get(ROOM)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


async def test_request_is_tencents_wire_format(scripted: tuple[Scripted, Gateway]) -> None:
    """POST to the region's path with sdkappid, identifier, usersig, random, contenttype=json."""
    upstream, gateway = scripted
    upstream.replies = [(200, OK_ROOM)]
    assert (await gateway.client.get(ROOM)).status_code == 200
    (call,) = upstream.calls
    assert call.origin == "http://tencent.invalid"
    assert call.path == "/v4/live_engine_http_srv/get_room_info"
    assert set(call.params) == {"sdkappid", "identifier", "usersig", "random", "contenttype"}
    assert call.params["sdkappid"] == str(APP_ID)
    assert call.params["identifier"] == "administrator"
    assert 0 <= int(call.params["random"]) < 2**32
    assert call.params["contenttype"] == "json"
    assert call.body == b'{"RoomId":"room-1"}'
