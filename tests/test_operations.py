"""The five room operations end to end: gateway over HTTP, emulator over HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from live_engine_emulator import Emulator
from tests.support import APP_ID, Gateway, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"


async def test_get_room_returns_the_room_in_snake_case(gateway: Gateway, emulator: Emulator) -> None:
    """GET room answers 200 with Tencent's fields renamed to snake_case and normalised types."""
    emulator.add_room(APP_ID, "room-1", RoomName="Main stage", Owner_Account="144115233775727695", Category=[1, 2])
    response = await gateway.client.get(ROOM)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    room = response.json()
    assert room["room_id"] == "room-1"
    assert room["room_name"] == "Main stage"
    assert room["owner_account"] == "144115233775727695"  # Tencent sends a JSON number
    assert room["take_seat_mode"] == "FreeToTake"  # Tencent sends 1
    assert room["category"] == [1, 2]
    assert room["is_message_disabled"] is False
    assert set(room) == {
        "room_id",
        "room_name",
        "room_type",
        "owner_account",
        "create_time",
        "is_seat_enabled",
        "take_seat_mode",
        "max_seat_count",
        "max_member_count",
        "is_message_disabled",
        "cover_url",
        "category",
        "activity_status",
        "view_count",
        "is_public_visible",
    }


async def test_fields_tencent_omits_stay_omitted_and_unknown_ones_are_ignored(
    gateway: Gateway, emulator: Emulator
) -> None:
    """A field missing upstream is missing in our answer; an unknown upstream field is no error."""
    room = emulator.apps[APP_ID].rooms["room-2"]
    del room["CoverURL"], room["ViewCount"]
    room["SomethingNew"] = {"nested": True}
    room["IsMessageDisabled"] = "true"  # documented as String on one of Tencent's pages
    body = (await gateway.client.get("/v1/tenants/acme/rooms/room-2")).json()
    assert "cover_url" not in body
    assert "view_count" not in body
    assert body["is_message_disabled"] is True


async def test_apply_to_take_seat_mode_is_normalised(gateway: Gateway, emulator: Emulator) -> None:
    """get_room_info's TakeSeatMode 2 becomes "ApplyToTake"."""
    emulator.apps[APP_ID].rooms["room-1"]["TakeSeatMode"] = "ApplyToTake"  # the emulator sends it as 2
    assert (await gateway.client.get(ROOM)).json()["take_seat_mode"] == "ApplyToTake"


async def test_patch_room_updates_it_and_answers_204(gateway: Gateway, emulator: Emulator) -> None:
    """PATCH room sends update_room_info with Tencent's names and answers 204."""
    patch = {
        "room_name": "Renamed",
        "max_member_count": 500,
        "is_message_disabled": True,
        "cover_url": "https://x/y.png",
        "category": [4, 5],
        "activity_status": 2,
        "is_public_visible": False,
        "take_seat_mode": "ApplyToTake",
    }
    response = await gateway.client.patch(ROOM, json=patch)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["x-upstream-request-id"].startswith("Id-emu")
    stored = emulator.apps[APP_ID].rooms["room-1"]
    assert stored["RoomName"] == "Renamed"
    assert stored["MaxMemberCount"] == 500
    assert stored["IsMessageDisabled"] is True
    assert stored["CoverURL"] == "https://x/y.png"
    assert stored["Category"] == [4, 5]
    assert stored["ActivityStatus"] == 2
    assert stored["IsPublicVisible"] is False
    assert stored["TakeSeatMode"] == "ApplyToTake"


async def test_metadata_round_trip(gateway: Gateway, emulator: Emulator) -> None:
    """PATCH metadata upserts, GET reads all or some keys, DELETE removes the given keys."""
    meta = f"{ROOM}/metadata"
    assert (await gateway.client.patch(meta, json={"metadata": {"a": "1", "b": "2", "c": "3"}})).status_code == 204
    assert (await gateway.client.patch(meta, json={"metadata": {"a": "one"}})).status_code == 204
    assert (await gateway.client.get(meta)).json() == {"metadata": {"a": "one", "b": "2", "c": "3"}}
    assert (await gateway.client.get(meta, params=[("key", "b"), ("key", "zz")])).json() == {"metadata": {"b": "2"}}
    response = await gateway.client.delete(meta, params=[("key", "a"), ("key", "zz")])
    assert response.status_code == 204
    assert emulator.apps[APP_ID].metadata["room-1"] == {"b": "2", "c": "3"}


async def test_get_metadata_of_a_room_without_any(gateway: Gateway) -> None:
    """A room with no metadata answers an empty object, not an error."""
    assert (await gateway.client.get(f"{ROOM}/metadata")).json() == {"metadata": {}}


async def test_request_id_is_echoed_or_generated(gateway: Gateway) -> None:
    """X-Request-Id comes back as sent, or freshly generated when absent or malformed."""
    echoed = await gateway.client.get(ROOM, headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = await gateway.client.get(ROOM)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    hostile = await gateway.client.get(ROOM, headers={"x-request-id": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    assert generated.headers["x-request-id"] != hostile.headers["x-request-id"]


async def test_generated_request_ids_are_unique_across_replicas(gateway: Gateway, upstream_url: str) -> None:
    """Each app draws its own random half of the id, so two replicas never hand out the same one."""
    async with start_gateway(upstream_url) as other:
        ids = {(await gw.client.get(ROOM)).headers["x-request-id"] for gw in (gateway, other) for _ in range(3)}
    assert len(ids) == 6


async def test_errors_carry_the_request_id(gateway: Gateway) -> None:
    """A problem document names the request id it answers."""
    response = await gateway.client.get("/v1/tenants/acme/rooms/missing", headers={"x-request-id": "rid-9"})
    assert response.status_code == 404
    assert response.json()["request_id"] == "rid-9"


async def test_upstream_calls_carry_a_fresh_32_bit_random(gateway: Gateway, emulator: Emulator) -> None:
    """Every call sends its own `random` in 0..2^32-1 (the emulator rejects anything else)."""
    for n in range(20):
        await gateway.client.get(ROOM, headers={"cache-control": "no-cache", "x-request-id": f"r{n}"})
    assert len(emulator.randoms) == 20
    assert len(set(emulator.randoms)) == 20
    assert all(0 <= r <= 2**32 - 1 for r in emulator.randoms)


async def test_health_endpoints_need_no_token(gateway: Gateway) -> None:
    """/livez and /readyz answer without a token; /readyz once config is loaded."""
    bare = {"authorization": ""}
    assert (await gateway.client.get("/livez", headers=bare)).json() == {"status": "ok"}
    assert (await gateway.client.get("/readyz", headers=bare)).json() == {"status": "ready", "mode": "embedded"}


async def test_openapi_is_served(gateway: Gateway) -> None:
    """The app serves its OpenAPI document, which names no secret: the committed one, tidied
    for generated clients (it is built and tidied on the first request for it)."""
    response = await gateway.client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert "/v1/tenants/{tenant}/rooms/{room_id}" in response.json()["paths"]
    committed = yaml.safe_load((Path(__file__).parent.parent / "openapi" / "openapi.yaml").read_text())
    assert response.json() == committed
