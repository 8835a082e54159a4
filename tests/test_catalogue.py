"""The operation catalogue (SPEC §8): every entry served end to end against the emulator over
real HTTP, validated before any upstream call, retried safely, documented, and within its
per-API budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.catalogue.operations import CATALOGUE, DOCUMENTED
from live_engine_emulator import Emulator
from live_engine_emulator.state import _HANDLERS, APPLY_THEN_DROP, DROP, PASS
from tests.support import APP_ID, TOKENS, Gateway, start_gateway

BASE = "/v1/tenants/acme"
ROOM = BASE + "/rooms/room-1"


def calls(emulator: Emulator) -> int:
    return sum(emulator.calls.values())


async def test_create_then_read_then_destroy(upstream_url: str, emulator: Emulator) -> None:
    """201 with Location and the room id; the room reads back; a second create of the same id is
    409 room_exists; destroy is 204 and the room is gone (not served from the cache); a second
    destroy is 404."""
    async with start_gateway(upstream_url, cache_ttl=60.0) as gateway:
        c = gateway.client
        created = await c.post(BASE + "/rooms", json={"room_id": "new-1", "room_name": "New", "category": [1, 2]})
        assert created.status_code == 201, created.text
        assert created.json() == {"room_id": "new-1"}
        assert created.headers["location"] == BASE + "/rooms/new-1"
        room = await c.get(BASE + "/rooms/new-1")
        assert room.json()["room_name"] == "New"
        again = await c.post(BASE + "/rooms", json={"room_id": "new-1"})
        assert (again.status_code, again.json()["code"]) == (409, "room_exists")
        assert (await c.delete(BASE + "/rooms/new-1")).status_code == 204
        gone = await c.get(BASE + "/rooms/new-1")
        assert (gone.status_code, gone.json()["code"]) == (404, "room_not_found")
        twice = await c.delete(BASE + "/rooms/new-1")
        assert (twice.status_code, twice.json()["code"]) == (404, "room_not_found")


async def test_a_retried_create_that_finds_its_room_and_a_retried_destroy_that_finds_it_gone_succeed(
    upstream_url: str, emulator: Emulator
) -> None:
    """The first attempt applies and its reply is lost: the retry meets 100010 (create) or
    100004 (destroy), which after such an attempt means done."""
    async with start_gateway(upstream_url) as gateway:
        emulator.fail_next("create_room", APPLY_THEN_DROP)
        created = await gateway.client.post(BASE + "/rooms", json={"room_id": "retried"})
        assert created.status_code == 201, created.text
        assert emulator.calls["create_room"] == 2
        emulator.fail_next("destroy_room", APPLY_THEN_DROP)
        assert (await gateway.client.delete(BASE + "/rooms/retried")).status_code == 204
        assert emulator.calls["destroy_room"] == 2


async def test_a_retried_seat_take_that_finds_the_member_on_the_seat_succeeds_and_one_that_finds_another_is_400(
    upstream_url: str, emulator: Emulator
) -> None:
    """The first take applies and its reply is lost: the retry is refused (the seat is taken), and
    the seat list shows the member on it, so the take answers 204. A seat another member took is
    still the refusal, marked may_have_applied."""
    emulator.add_members(APP_ID, "room-1", ["alice", "bob"])
    async with start_gateway(upstream_url) as gateway:
        emulator.fail_next("pick_user_on_seat", APPLY_THEN_DROP)
        took = await gateway.client.post(ROOM + "/seats/members", json={"account": "alice", "index": 2})
        assert took.status_code == 204, took.text
        assert (emulator.calls["pick_user_on_seat"], emulator.calls["get_seat_list"]) == (2, 1)
        emulator.fail_next("pick_user_on_seat", DROP)  # (dropped unapplied; the retry meets alice)
        refused = await gateway.client.post(ROOM + "/seats/members", json={"account": "bob", "index": 2})
        assert (refused.status_code, refused.json()["upstream_code"]) == (400, 100002)
        assert refused.json()["may_have_applied"] is True


async def test_a_retried_create_that_finds_someone_elses_room_is_409(upstream_url: str, emulator: Emulator) -> None:
    """100003 after a lost reply: the room is checked, and another owner's room is not ours."""
    emulator.add_room(APP_ID, "taken", Owner_Account="someone-else")
    async with start_gateway(upstream_url) as gateway:
        emulator.fail_next("create_room", 100001)  # a transient failure: the retry meets 100003
        response = await gateway.client.post(BASE + "/rooms", json={"room_id": "taken"})
        assert (response.status_code, response.json()["code"]) == (409, "room_exists")


async def test_the_room_list_pages_and_is_cached(upstream_url: str, emulator: Emulator) -> None:
    """Pages of `limit` rooms by view count with a cursor; the same page asked again within the
    list's TTL, by any number of callers at once, is one call to Tencent."""
    for n in range(4, 8):
        emulator.add_room(APP_ID, f"room-{n}", ViewCount=n)
    async with start_gateway(upstream_url) as gateway:
        first = await gateway.client.get(BASE + "/rooms", params={"limit": 3})
        assert first.status_code == 200
        page = first.json()
        assert [r["room_id"] for r in page["rooms"]] == ["room-7", "room-6", "room-5"]
        assert page["next_cursor"] is not None
        assert first.headers["x-cache"] == "miss"
        rest = (await gateway.client.get(BASE + "/rooms", params={"limit": 3, "cursor": page["next_cursor"]})).json()
        assert len(rest["rooms"]) == 3
        before = emulator.calls["get_room_list"]
        same = await asyncio.gather(*[gateway.client.get(BASE + "/rooms", params={"limit": 3}) for _ in range(20)])
        assert {r.status_code for r in same} == {200}
        assert emulator.calls["get_room_list"] == before


async def test_members_admins_bans_mutes_messages_stats(upstream_url: str, emulator: Emulator) -> None:
    """Each moderation operation as a service would use it, read back through the gateway."""
    emulator.add_members(APP_ID, "room-1", ["alice", "bob", "carol"])
    async with start_gateway(upstream_url) as gateway:
        c = gateway.client
        members = (await c.get(ROOM + "/members")).json()
        assert members == {"members": ["alice", "bob", "carol"], "member_count": 3, "next_cursor": None}
        assert (await c.post(ROOM + "/admins", json={"accounts": ["alice", "bob"]})).status_code == 204
        assert (await c.get(ROOM + "/admins")).json() == {"admins": ["alice", "bob"]}
        assert (await c.delete(ROOM + "/admins", params={"account": "bob"})).status_code == 204
        assert (await c.get(ROOM + "/admins")).json() == {"admins": ["alice"]}
        assert (await c.post(ROOM + "/mutes", json={"accounts": ["carol"], "duration": 60})).status_code == 204
        mutes = (await c.get(ROOM + "/mutes")).json()["mutes"]
        assert [m["account"] for m in mutes] == ["carol"]
        assert mutes[0]["muted_until"] > time.time()
        assert (await c.delete(ROOM + "/mutes", params={"account": "carol"})).status_code == 204
        assert (await c.get(ROOM + "/mutes")).json() == {"mutes": []}
        text = await c.post(ROOM + "/messages", json={"sender": "alice", "text": "hello"})
        custom = await c.post(ROOM + "/messages", json={"sender": "alice", "business_id": "gift", "data": "{}"})
        assert (text.status_code, custom.status_code) == (204, 204)
        assert emulator.calls["send_text_msg"] == emulator.calls["send_custom_msg"] == 1
        stats = (await c.get(ROOM + "/stats")).json()
        assert stats["total_msg_count"] == 2
        assert stats["total_viewers"] == 3
        assert (
            await c.post(ROOM + "/bans", json={"accounts": ["bob"], "duration": 600, "reason": "spam"})
        ).status_code == 204
        bans = (await c.get(ROOM + "/bans")).json()
        assert [b["account"] for b in bans["bans"]] == ["bob"]
        assert bans["next_offset"] is None
        assert (await c.delete(ROOM + "/bans", params={"account": "bob"})).status_code == 204
        assert (await c.get(ROOM + "/bans")).json()["bans"] == []


async def test_a_members_gift_totals(upstream_url: str, emulator: Emulator) -> None:
    """get_gift_count's totals for the account asked (From_Account) in snake_case; without an
    account the request is a 400 that calls nothing."""
    emulator.add_members(APP_ID, "room-1", ["alice"])
    emulator.apps[APP_ID].people["room-1"].gift_counts["alice"] = {"Sequence": 7, "TotalCount": 3, "TotalCoins": 90}
    async with start_gateway(upstream_url) as gateway:
        totals = (await gateway.client.get(ROOM + "/gifts", params={"account": "alice"})).json()
        assert totals == {"sequence": 7, "total_count": 3, "total_coins": 90, "gift_sender_count": 0}
        before = calls(emulator)
        missing = await gateway.client.get(ROOM + "/gifts")
        assert (missing.status_code, missing.json()["code"]) == (400, "invalid_request")
        assert calls(emulator) == before


async def test_long_account_lists_are_split_into_budgeted_calls(upstream_url: str, emulator: Emulator) -> None:
    """45 accounts to ban are 3 calls of at most 20 (each its own budget slot); the ban list
    pages 20 at a time with next_offset."""
    accounts = [f"user-{n:02d}" for n in range(45)]
    async with start_gateway(upstream_url) as gateway:
        response = await gateway.client.post(ROOM + "/bans", json={"accounts": accounts, "duration": 60})
        assert response.status_code == 204, response.text
        assert emulator.calls["ban_member"] == 3
        page = (await gateway.client.get(ROOM + "/bans", params={"limit": 20})).json()
        assert len(page["bans"]) == 20
        assert page["next_offset"] == 20
        metrics = (await gateway.client.get("/metrics")).text
    assert 'gateway_budget_grants_total{api="ban_member",tenant="acme"} 3.0' in metrics


async def test_a_split_write_that_fails_part_way_says_what_was_applied(upstream_url: str, emulator: Emulator) -> None:
    """The second of three calls is refused: the caller learns that the first was applied."""
    accounts = [f"user-{n:02d}" for n in range(45)]
    async with start_gateway(upstream_url) as gateway:
        emulator.fail_next("ban_member", PASS, 100002)
        response = await gateway.client.post(ROOM + "/bans", json={"accounts": accounts, "duration": 60})
        assert response.status_code == 400
        assert "the first 1 of 3 Tencent calls were applied" in response.json()["detail"]


async def test_the_admin_limit(upstream_url: str, emulator: Emulator) -> None:
    """More than 5 admins in one request is refused before any call; a room that would exceed
    5 is Tencent's 100020, 422 admin_limit_exceeded."""
    async with start_gateway(upstream_url) as gateway:
        before = calls(emulator)
        six = await gateway.client.post(ROOM + "/admins", json={"accounts": [f"a{n}" for n in range(6)]})
        assert (six.status_code, six.json()["code"]) == (400, "invalid_request")
        assert calls(emulator) == before
        assert (await gateway.client.post(ROOM + "/admins", json={"accounts": ["a", "b", "c"]})).status_code == 204
        over = await gateway.client.post(ROOM + "/admins", json={"accounts": ["d", "e", "f"]})
        assert (over.status_code, over.json()["code"], over.json()["upstream_code"]) == (
            422,
            "admin_limit_exceeded",
            100020,
        )


async def test_seats_and_robots(upstream_url: str, emulator: Emulator) -> None:
    """Seats (room_engine_http_mic) read, taken, moved (a taken seat cancels the move, or swaps),
    left and locked; robots added, listed and removed, at most 3 a request."""
    emulator.add_members(APP_ID, "room-1", ["alice"])
    async with start_gateway(upstream_url) as gateway:
        c = gateway.client
        seats = (await c.get(ROOM + "/seats")).json()["seats"]
        assert seats[0] == {
            "index": 0,
            "is_taken_disabled": False,
            "is_video_disabled": False,
            "is_audio_disabled": False,
        }
        assert (await c.post(ROOM + "/seats/members", json={"account": "alice", "index": 2})).status_code == 204
        assert (await c.get(ROOM + "/seats")).json()["seats"][2]["account"] == "alice"
        emulator.add_members(APP_ID, "room-1", ["bob"])
        assert (await c.post(ROOM + "/seats/members", json={"account": "bob", "index": 4})).status_code == 204
        taken = await c.post(ROOM + "/seats/moves", json={"account": "alice", "index": 4})
        assert (taken.status_code, taken.json()["upstream_code"]) == (400, 100002)  # if_taken: cancel
        swap = {"account": "alice", "index": 4, "if_taken": "swap"}
        assert (await c.post(ROOM + "/seats/moves", json=swap)).status_code == 204
        seats = (await c.get(ROOM + "/seats")).json()["seats"]
        assert (seats[2].get("account"), seats[4].get("account")) == ("bob", "alice")
        assert (await c.delete(ROOM + "/seats/members", params={"account": "alice"})).status_code == 204
        assert (await c.patch(ROOM + "/seats", json={"index": 3, "forbid_taken": True})).status_code == 204
        assert (await c.get(ROOM + "/seats")).json()["seats"][3]["is_taken_disabled"] is True
        assert (await c.post(ROOM + "/robots", json={"accounts": ["bot-1", "bot-2"]})).status_code == 204
        assert (await c.get(ROOM + "/robots")).json() == {"robots": ["bot-1", "bot-2"]}
        assert (await c.delete(ROOM + "/robots", params={"account": "bot-1"})).status_code == 204
        assert (await c.get(ROOM + "/robots")).json() == {"robots": ["bot-2"]}
        four = await c.post(ROOM + "/robots", json={"accounts": ["r1", "r2", "r3", "r4"]})
        assert four.status_code == 400


def _request(op_path: str, room: str) -> str:
    return BASE + op_path.replace("{room_id}", room)


_BODIES: dict[str, Any] = {
    "updateRoom": {"room_name": "x"},
    "setRoomMetadata": {"metadata": {"k": "v"}},
    "createRoom": {"room_id": "x"},
    "addAdmins": {"accounts": ["a"]},
    "banMembers": {"accounts": ["a"], "duration": 60},
    "muteMembers": {"accounts": ["a"], "duration": 60},
    "sendMessage": {"sender": "a", "text": "hi"},
    "lockSeat": {"index": 0},
    "takeSeat": {"account": "a", "index": 0},
    "moveSeat": {"account": "a", "index": 1},
    "addRobots": {"accounts": ["a"]},
}
_QUERIES: dict[str, dict[str, str]] = {
    "deleteRoomMetadata": {"key": "k"},
    "removeAdmins": {"account": "a"},
    "unbanMembers": {"account": "a"},
    "unmuteMembers": {"account": "a"},
    "leaveSeat": {"account": "a"},
    "removeRobots": {"account": "a"},
    "getGiftCount": {"account": "a"},
}
ROOM_OPS = [op for op in CATALOGUE if "{room_id}" in op.path]


@pytest.mark.parametrize("op", ROOM_OPS, ids=[op.id for op in ROOM_OPS])
@pytest.mark.asyncio(loop_scope="module")
async def test_every_room_operation_checks_the_room_id_before_calling_tencent(
    shared_gateway: tuple[Gateway, Emulator], op: Any
) -> None:
    """A room id over 48 bytes is a 400 with nothing sent to Tencent; an unknown room is 404."""
    gateway, emulator = shared_gateway
    body, params = _BODIES.get(op.id), _QUERIES.get(op.id, {})
    before = calls(emulator)
    long = await gateway.client.request(op.method, _request(op.path, "r" * 49), json=body, params=params)
    assert (long.status_code, long.json()["code"]) == (400, "invalid_request")
    assert calls(emulator) == before
    missing = await gateway.client.request(op.method, _request(op.path, "no-such-room"), json=body, params=params)
    assert (missing.status_code, missing.json()["code"]) == (404, "room_not_found"), missing.text


@pytest.mark.parametrize(
    ("method", "path", "body", "params"),
    [
        ("POST", "/rooms", {"room_id": "x", "room_name": "n" * 101}, {}),
        ("POST", "/rooms", {"room_id": "x", "category": [1, 2, 3, 4]}, {}),
        ("POST", "/rooms", {"room_id": "x", "unknown": 1}, {}),
        ("GET", "/rooms", None, {"limit": "21"}),
        ("GET", "/rooms", None, {"limit": "x"}),
        ("POST", "/rooms/room-1/bans", {"accounts": ["a"], "duration": 0}, {}),
        ("POST", "/rooms/room-1/bans", {"accounts": [], "duration": 60}, {}),
        ("POST", "/rooms/room-1/bans", {"accounts": ["a" * 33], "duration": 60}, {}),
        ("DELETE", "/rooms/room-1/bans", None, {}),
        ("GET", "/rooms/room-1/bans", None, {"limit": "101"}),
        ("POST", "/rooms/room-1/messages", {"sender": "a"}, {}),
        ("POST", "/rooms/room-1/messages", {"sender": "a", "text": "t", "data": "d"}, {}),
        ("POST", "/rooms/room-1/messages", {"sender": "a", "text": "x" * 12289}, {}),
        ("POST", "/rooms/room-1/mutes", {"accounts": ["a"], "duration": "60"}, {}),
    ],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_invalid_requests_spend_nothing(
    shared_gateway: tuple[Gateway, Emulator], method: str, path: str, body: Any, params: dict[str, str]
) -> None:
    """Tencent's documented sizes and counts, checked before any budget or call: 400."""
    gateway, emulator = shared_gateway
    before = calls(emulator)
    response = await gateway.client.request(method, BASE + path, json=body, params=params)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request"), response.text
    assert calls(emulator) == before


async def test_scopes(upstream_url: str) -> None:
    """Reads need read, writes need write."""
    async with start_gateway(upstream_url) as gateway:
        viewer = {"authorization": f"Bearer {TOKENS['ro']}"}
        writer = {"authorization": f"Bearer {TOKENS['wo']}"}
        assert (await gateway.client.post(BASE + "/rooms", json={"room_id": "v"}, headers=viewer)).status_code == 403
        assert (await gateway.client.get(BASE + "/rooms", headers=writer)).status_code == 403
        assert (await gateway.client.get(BASE + "/rooms", headers=viewer)).status_code == 200


async def test_the_room_list_budget_holds_under_three_times_its_rate(upstream_url: str, emulator: Emulator) -> None:
    """30 distinct pages a second for 3 s against get_room_list's 10/s: Tencent never sees more
    than 10 in a sliding second, and callers get 200 or 429, never a 5xx."""
    async with start_gateway(upstream_url, budget_max_wait=0.5) as gateway:

        async def one(n: int) -> int:
            await asyncio.sleep(n / 30)
            response = await gateway.client.get(BASE + "/rooms", params={"limit": 1 + n % 20, "cursor": str(n)})
            return response.status_code

        statuses = await asyncio.gather(*[one(n) for n in range(90)])
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 25
    assert emulator.busiest_second(f"{APP_ID}:get_room_list") <= 10


def test_every_entry_is_documented_and_served_by_the_emulator() -> None:
    """A catalogue entry without its OpenAPI operation, its emulator command or a known API
    name (for api_qps) fails here."""
    from gateway.api import openapi_document
    from gateway.app import create_app
    from gateway.settings import Settings

    document = openapi_document(create_app(Settings(), env={})).to_schema()
    documented = {
        (method.upper(), path, operation["operationId"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for op in CATALOGUE:
        assert (op.method, "/v1/tenants/{tenant}" + op.path, op.id) in documented, op.id
        for api in op.apis:
            assert api in _HANDLERS, api
            assert api in DOCUMENTED, api


def test_an_entry_is_checked_when_it_is_declared() -> None:
    """No reply means 204 and nothing to shape, said once; fixed values and the split name fields of
    Tencent's request; Tencent's names come from ours (PascalCase, IM's X_Account, exceptions named)."""
    from gateway.catalogue import Operation, Split, tencent

    entry: dict[str, Any] = {"id": "x", "method": "DELETE", "path": "/rooms/{room_id}", "scope": "write"}
    entry |= {"summary": "s", "api": "destroy_room"}
    assert Operation(**entry).status == 204
    for wrong in ({"status": 201}, {"split": Split("accounts", 20)}, {"fixed": {"op_type": "add"}}):
        with pytest.raises(ValueError, match="x: "):
            Operation(**entry, **wrong)
    rename = tencent(accounts="MemberList_Account")
    names = [rename(n) for n in ("room_id", "owner_account", "accounts")]
    assert names == ["RoomId", "Owner_Account", "MemberList_Account"]


def test_a_tenants_per_api_budgets() -> None:
    """Tencent's documented limits are the defaults (10/s for get_room_list, 100/s for robots
    and stats); qps lowers every API and raises the common ones; api_qps sets single APIs."""
    from gateway.tenants import Secret, Tenant

    def tenant(qps: int, **api_qps: int) -> Callable[[str, int], int]:
        t = Tenant(
            name="t", sdkappid=1, identifier="a", secret_key=Secret("k"), base_url="http://x", qps=qps, api_qps=api_qps
        )
        return t.limit

    limit = tenant(200)
    assert (limit("get_room_info", 200), limit("get_room_list", 10), limit("get_robot", 100)) == (200, 10, 100)
    limit = tenant(50)
    assert (limit("get_room_info", 200), limit("get_room_list", 10), limit("get_robot", 100)) == (50, 10, 50)
    limit = tenant(400, get_room_list=20)
    assert (limit("get_room_info", 200), limit("get_room_list", 10), limit("get_robot", 100)) == (400, 20, 100)


def test_the_emulator_serves_each_command_on_its_service_only() -> None:
    """Seats are room_engine_http_mic's, callback settings live_config's: the emulator refuses a
    command on another service (as Tencent would not find it), so a gateway that sent one to the
    wrong place fails the tests above."""
    emulator = Emulator()
    reply = emulator.handle("get_seat_list", {}, {"RoomId": "r"}, service="live_engine_http_srv")
    assert reply["ErrorCode"] == 60009


_MAPPED = [
    (100006, 403, "forbidden"),
    (100002, 400, "invalid_request"),
    (70020, 503, "upstream_misconfigured"),
]


@pytest.mark.parametrize("op", CATALOGUE, ids=[op.id for op in CATALOGUE])
async def test_every_operation_maps_tencents_errors_and_retries_transient_ones(
    upstream_url: str, emulator: Emulator, op: Any
) -> None:
    """For every entry: Tencent's 100006, 100002 and a credentials error reach the caller as the
    errors table says (with the upstream code); a transient 100001 is retried to success where the
    operation is repeatable, and answered at once with may_have_applied where it is not (its
    "too frequent" 60007 is still retried: Tencent did not apply it)."""
    emulator.add_members(APP_ID, "room-1", ["a"])
    api = op.api
    async with start_gateway(upstream_url, misconfig_cooldown=0.0) as gateway:
        body, params = _BODIES.get(op.id), _QUERIES.get(op.id, {})
        path = _request(op.path, "room-1")
        if op.id == "createRoom":
            body = {"room_id": "fresh"}
        for code, status, name in _MAPPED:
            emulator.fail_next(api, code)
            response = await gateway.client.request(op.method, path, json=body, params=params)
            assert (response.status_code, response.json()["code"]) == (status, name), (code, response.text)
            assert response.json()["upstream_code"] == code
        emulator.fail_next(api, 100001)
        response = await gateway.client.request(op.method, path, json=body, params=params)
        if not op.repeatable:
            assert response.status_code == 502, response.text
            assert response.json()["may_have_applied"] is True
            emulator.fail_next(api, 60007)
            response = await gateway.client.request(op.method, path, json=body, params=params)
        assert response.status_code < 300, response.text


async def test_options_and_405_name_every_method_a_path_serves(upstream_url: str) -> None:
    """OPTIONS on each catalogue path answers 204 with every method served there in ``Allow``,
    and a method it does not serve is 405 with the same methods (RFC 9110)."""
    paths: dict[str, set[str]] = {}
    for op in CATALOGUE:
        paths.setdefault(_request(op.path, "room-1"), set()).add(op.method)
    async with start_gateway(upstream_url) as gateway:
        for path, methods in paths.items():
            options = await gateway.client.options(path)
            assert options.status_code == 204, path
            assert set(options.headers["allow"].split(", ")) == {*methods, "OPTIONS"}, path
            assert options.headers["x-request-id"]
            refused = await gateway.client.put(path)
            assert refused.status_code == 405, path
            assert set(refused.headers["allow"].split(", ")) == {*methods, "OPTIONS"}, path
