"""Bearer tokens, tenants and scopes: only allowed calls pass, and refusals never reach Tencent."""

from __future__ import annotations

import pytest

from live_engine_emulator import Emulator
from tests.support import TOKENS, Gateway

ACME = "/v1/tenants/acme/rooms/room-1"
GLOBEX = "/v1/tenants/globex/rooms/room-1"


def bearer(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[who]}"}


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer nope"},
        {"authorization": f"Basic {TOKENS['rw']}"},
        {"authorization": f"Bearer {TOKENS['rw']}x"},
    ],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_missing_or_unknown_token_is_401(
    shared_gateway: tuple[Gateway, Emulator], headers: dict[str, str]
) -> None:
    """No token, a wrong token or another scheme: 401 unauthenticated, nothing sent upstream."""
    gateway, emulator = shared_gateway
    response = await gateway.client.get(ACME, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert sum(emulator.calls.values()) == 0


# (caller, method, path, expected status)
MATRIX = [
    ("rw", "GET", ACME, 200),
    ("rw", "PATCH", ACME, 204),
    ("rw", "GET", GLOBEX, 403),
    ("rw", "PATCH", GLOBEX, 403),
    ("ro", "GET", ACME, 200),
    ("ro", "PATCH", ACME, 403),
    ("ro", "DELETE", ACME + "/metadata?key=a", 403),
    ("ro", "PATCH", ACME + "/metadata", 403),
    ("wo", "GET", ACME, 403),
    ("wo", "GET", ACME + "/metadata", 403),
    ("wo", "PATCH", ACME, 204),
    ("other", "GET", ACME, 403),
    ("other", "GET", GLOBEX, 200),
    ("star", "GET", ACME, 200),
    ("star", "GET", GLOBEX, 200),
    ("star", "PATCH", GLOBEX, 403),
    ("star", "GET", "/v1/tenants/nobody/rooms/room-1", 404),
    ("rw", "GET", "/v1/tenants/nobody/rooms/room-1", 403),
]


@pytest.mark.parametrize(("who", "method", "path", "status"), MATRIX)
@pytest.mark.asyncio(loop_scope="module")
async def test_access_matrix(
    shared_gateway: tuple[Gateway, Emulator], who: str, method: str, path: str, status: int
) -> None:
    """Callers × tenants × scopes × methods: only the cells the config allows succeed."""
    gateway, emulator = shared_gateway
    body = {"room_name": "x"} if method == "PATCH" and not path.endswith("metadata") else {"metadata": {"a": "1"}}
    kwargs = {"json": body} if method == "PATCH" else {}
    response = await gateway.client.request(method, path, headers=bearer(who), **kwargs)
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.json()["code"] == {403: "forbidden", 404: "tenant_not_found"}[status]
        assert sum(emulator.calls.values()) == 0


async def test_a_cached_room_is_not_served_to_another_tenant(gateway: Gateway, emulator: Emulator) -> None:
    """acme's cached room-1 is never the answer to globex's room-1, nor readable by a globex token."""
    acme = await gateway.client.get(ACME, headers=bearer("rw"))
    assert acme.json()["room_name"] == "room-1"
    globex = await gateway.client.get(GLOBEX, headers=bearer("other"))
    assert globex.headers["x-cache"] == "miss"
    assert globex.json()["room_name"] == "globex room"
    denied = await gateway.client.get(ACME, headers=bearer("other"))
    assert denied.status_code == 403
