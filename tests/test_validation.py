"""Every limit of SPEC §2, at its boundary, checked before any upstream call or budget is spent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from live_engine_emulator import Emulator
from tests.support import Gateway, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"
META = f"{ROOM}/metadata"
E = "é"  # two UTF-8 bytes
HAN = "房"  # three UTF-8 bytes


@pytest.fixture
async def strict(upstream_url: str) -> AsyncIterator[Gateway]:
    """A gateway whose tenant may make 1 call per second and waits for none: any budget an
    invalid request spent would push the next valid request's slot a second away, a 429. (A free
    slot is granted with no wait even when the process stalls between asking and booking, as on a
    loaded CI machine: tests/test_dispatch.py's stepping clock.)"""
    async with start_gateway(upstream_url, qps=1, budget_max_wait=0) as running:
        yield running


async def _refused(gateway: Gateway, emulator: Emulator, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = await gateway.client.request(method, path, **kwargs)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["code"] == "invalid_request"
    assert sum(emulator.calls.values()) == 0, "an invalid request reached Tencent"
    return problem


async def _accepted(gateway: Gateway, method: str, path: str, **kwargs: Any) -> None:
    response = await gateway.client.request(method, path, **kwargs)
    assert response.status_code in (200, 204), response.text


@pytest.mark.parametrize(
    ("room_id", "ok"),
    [
        ("r" * 48, True),
        ("r" * 49, False),
        (HAN * 16, True),  # 48 bytes in 16 characters
        (HAN * 16 + "r", False),  # 49 bytes in 17 characters
        ("a%01b", False),  # a control character, percent-encoded
    ],
)
async def test_room_id_is_1_to_48_bytes(strict: Gateway, emulator: Emulator, room_id: str, *, ok: bool) -> None:
    """room_id: 48 UTF-8 bytes pass (and reach Tencent), 49 fail before any call."""
    path = f"/v1/tenants/acme/rooms/{room_id}"
    if ok:
        emulator.add_room(1400000001, room_id)
        await _accepted(strict, "GET", path)
    else:
        await _refused(strict, emulator, "GET", path)


ROOM_PATCH_CASES = [
    ({"room_name": "n" * 100}, True),
    ({"room_name": "n" * 101}, False),
    ({"room_name": E * 50}, True),
    ({"room_name": E * 50 + "n"}, False),
    ({"cover_url": "u" * 200}, True),
    ({"cover_url": "u" * 201}, False),
    ({"cover_url": HAN * 66 + "uu"}, True),
    ({"cover_url": HAN * 67}, False),
    ({"category": [1, 2, 3]}, True),
    ({"category": [1, 2, 3, 4]}, False),
    ({"category": ["1"]}, False),
    ({}, False),
    ({"unknown_field": 1}, False),
    ({"room_name": "ok", "owner_account": "x"}, False),
    ({"take_seat_mode": "Whatever"}, False),
    ({"take_seat_mode": 1}, False),
    ({"is_message_disabled": "yes"}, False),
    ({"max_member_count": -1}, False),
    ({"max_member_count": 2**40}, False),
    ({"activity_status": 4.0, "category": [1.0, 2]}, True),  # whole numbers: JSON Schema's integers
    ({"activity_status": 4.5}, False),
    ({"activity_status": "4"}, False),  # a string is never a number
    ({"max_member_count": 2.0**40}, False),  # a whole float is held to the integer's range
]


@pytest.mark.parametrize(("patch", "ok"), ROOM_PATCH_CASES)
async def test_room_patch_limits(strict: Gateway, emulator: Emulator, patch: dict[str, Any], *, ok: bool) -> None:
    """PATCH room: a non-empty subset of known fields within Tencent's byte and count limits;
    integers as JSON Schema counts them (``4.0`` is 4, and Tencent gets 4)."""
    if ok:
        await _accepted(strict, "PATCH", ROOM, json=patch)
        response = await strict.client.get(ROOM, headers={"cache-control": "no-cache"})
        assert response.status_code == 200, response.text
        room = response.json()
        for field, value in patch.items():
            assert repr(room[field]) == repr(_ints(value)), field  # (repr: 4, not 4.0)
    else:
        await _refused(strict, emulator, "PATCH", ROOM, json=patch)


def _ints(value: Any) -> Any:
    return [_ints(v) for v in value] if isinstance(value, list) else int(value) if isinstance(value, float) else value


def _values(*sizes: int) -> dict[str, str]:
    return {f"k{i}": "v" * size for i, size in enumerate(sizes)}


METADATA_CASES = [
    ({f"k{i}": "v" for i in range(10)}, True),
    ({f"k{i}": "v" for i in range(11)}, False),
    ({"k" * 50: "v"}, True),
    ({"k" * 51: "v"}, False),
    ({HAN * 16 + "kk": "v"}, True),  # 50 bytes
    ({HAN * 17: "v"}, False),  # 51 bytes in 17 characters
    ({"": "v"}, False),
    ({"k": "v" * 2048}, True),
    ({"k": "v" * 2049}, False),
    ({"k": E * 1024}, True),
    ({"k": E * 1024 + "v"}, False),
    (_values(2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048), True),  # 16384 in total
    (_values(2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048, 1), False),
    ({}, False),
]


@pytest.mark.parametrize(("metadata", "ok"), METADATA_CASES)
async def test_metadata_limits(strict: Gateway, emulator: Emulator, metadata: dict[str, str], *, ok: bool) -> None:
    """PATCH metadata: 1-10 keys of 1-50 bytes, values ≤ 2048 bytes and ≤ 16384 bytes in total."""
    if ok:
        await _accepted(strict, "PATCH", META, json={"metadata": metadata})
    else:
        await _refused(strict, emulator, "PATCH", META, json={"metadata": metadata})


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"k": 1}},
        {"metadata": {"k": None}},
        {"metadata": ["k", "v"]},
        {"meta": {"k": "v"}},
        {"metadata": {"k": "v"}, "extra": True},
    ],
)
async def test_metadata_keys_and_values_are_strings(strict: Gateway, emulator: Emulator, body: Any) -> None:
    """Metadata must be an object of strings; anything else is a 400 naming the problem."""
    await _refused(strict, emulator, "PATCH", META, json=body)


@pytest.mark.parametrize(
    ("keys", "ok"),
    [
        ([], False),
        (["a"], True),
        ([f"k{i}" for i in range(10)], True),
        ([f"k{i}" for i in range(11)], False),
        (["k" * 51], False),
        ([""], False),
    ],
)
async def test_delete_metadata_needs_1_to_10_keys(
    strict: Gateway, emulator: Emulator, keys: list[str], *, ok: bool
) -> None:
    """DELETE metadata needs at least one and at most ten valid keys."""
    emulator.apps[1400000001].metadata["room-1"] = {"a": "1", "k0": "0"}
    params = [("key", k) for k in keys]
    if ok:
        await _accepted(strict, "DELETE", META, params=params)
    else:
        await _refused(strict, emulator, "DELETE", META, params=params)


async def test_get_metadata_key_limits(strict: Gateway, emulator: Emulator) -> None:
    """GET metadata accepts up to ten keys, each 1-50 bytes."""
    await _refused(strict, emulator, "GET", META, params=[("key", f"k{i}") for i in range(11)])
    await _refused(strict, emulator, "GET", META, params=[("key", "k" * 51)])


@pytest.mark.parametrize(
    "raw",
    [b"{", b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000, b'{"room_name": "\xc3"}', b"null", b"", b"[]"],
)
async def test_malformed_bodies_are_400(strict: Gateway, emulator: Emulator, raw: bytes) -> None:
    """Broken JSON, invalid UTF-8, very deep nesting and non-objects are clear 400s."""
    headers = {"content-type": "application/json"}
    await _refused(strict, emulator, "PATCH", ROOM, content=raw, headers=headers)


async def test_body_over_64_kib_is_413(strict: Gateway, emulator: Emulator) -> None:
    """A body over 64 KiB is refused with 413 payload_too_large before anything else."""
    body = json.dumps({"metadata": {"k": "v" * (64 * 1024)}}).encode()
    response = await strict.client.patch(META, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert sum(emulator.calls.values()) == 0


async def test_encoded_slash_in_room_id_is_refused(strict: Gateway, emulator: Emulator) -> None:
    """`a%2Fmetadata` must not become room a's metadata: encoded slashes are refused."""
    await _refused(strict, emulator, "GET", "/v1/tenants/acme/rooms/room-1%2Fmetadata")
    await _refused(strict, emulator, "GET", "/v1/tenants/acme/rooms/..%2F..%2Fx")


@pytest.mark.parametrize("room_id", ["a/b", "a\\b"])
async def test_a_room_no_path_could_address_is_not_created(strict: Gateway, emulator: Emulator, room_id: str) -> None:
    """create_room with a room id holding "/" or "\\" is a 400 before any call: once created, no
    request could read, change or destroy it through the gateway (its paths refuse both)."""
    await _refused(strict, emulator, "POST", "/v1/tenants/acme/rooms", json={"room_id": room_id})


async def test_percent_encoded_room_ids_are_decoded(strict: Gateway, emulator: Emulator) -> None:
    """Other percent-encoded characters decode into the room id Tencent sees."""
    emulator.add_room(1400000001, "a b")
    response = await strict.client.get("/v1/tenants/acme/rooms/a%20b")
    assert response.status_code == 200
    assert response.json()["room_id"] == "a b"


async def test_invalid_requests_spend_no_budget(strict: Gateway, emulator: Emulator) -> None:
    """After a burst of invalid requests, the first valid one still gets the budget's one slot."""
    for _ in range(5):
        await _refused(strict, emulator, "PATCH", ROOM, json={"room_name": "n" * 101})
        await _refused(strict, emulator, "GET", "/v1/tenants/acme/rooms/" + "r" * 49)
    await _accepted(strict, "GET", ROOM)
    assert sum(emulator.calls.values()) == 1


@pytest.mark.parametrize("value", ["²", "٣", "+5", " 5", "5.0", "21"])
async def test_integer_parameters_are_ascii_digits(strict: Gateway, emulator: Emulator, value: str) -> None:
    """``limit`` and ``offset`` are decimal integers in ASCII digits within their range: a
    superscript or Arabic-Indic digit is a 400 like any other non-integer (``str.isdigit`` takes
    both; ``int("²")`` raised, a 500, found by schemathesis)."""
    await _refused(strict, emulator, "GET", "/v1/tenants/acme/rooms", params={"limit": value})
    await _refused(strict, emulator, "GET", f"{ROOM}/bans", params={"offset": value if value != "21" else "-1"})


async def test_lists_are_counted_as_sent(strict: Gateway, emulator: Emulator) -> None:
    """A list's "at most N" counts the values as sent, as the OpenAPI document's maxItems does:
    six copies of one admin are over the five a request may name; five are one admin to Tencent."""
    await _refused(strict, emulator, "POST", f"{ROOM}/admins", json={"accounts": ["alice"] * 6})
    await _refused(strict, emulator, "DELETE", f"{ROOM}/admins", params=[("account", "alice")] * 6)
    await _refused(strict, emulator, "GET", META, params=[("key", "k")] * 11)
    await _accepted(strict, "POST", f"{ROOM}/admins", json={"accounts": ["alice"] * 5})
    assert emulator.apps[1400000001].people["room-1"].admins == ["alice"]
