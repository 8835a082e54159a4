"""Clients generated from the committed OpenAPI document work: a Python client made with
openapi-python-client drives every operation against the gateway and the emulator, and the
committed TypeScript types are what openapi-typescript makes of the document today."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.callbacks import sign
from live_engine_emulator import Emulator
from tests.support import APP_ID, CALLBACK_TOKEN, TOKENS, start_gateway

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "openapi" / "openapi.yaml"
BIN = Path(sys.executable).parent
TS_TYPES = ROOT / "clients" / "typescript" / "live-room-gateway.d.ts"
OPENAPI_TYPESCRIPT = "openapi-typescript@7.13.0"  # pinned: the committed types are its output
NOT_FOR_CLIENTS = {"streamEvents": "a Server-Sent Events stream: EventSource, not a request/response client"}


@pytest.fixture(scope="module")
def lrg() -> Iterator[ModuleType]:
    """The client package generated from openapi/openapi.yaml, imported."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"lrg-client-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # (its ruff post-hooks)
    generate = [str(BIN / "openapi-python-client"), "generate", "--path", str(OPENAPI), "--meta", "none"]
    result = subprocess.run(
        [*generate, "--output-path", str(out / "lrg_client")], check=False, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # every operation and schema generated
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("lrg_client")
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == "lrg_client" or n.startswith("lrg_client.")]:
            del sys.modules[name]
        shutil.rmtree(out, ignore_errors=True)


def _api(lrg: ModuleType, tag: str, name: str) -> Any:
    return importlib.import_module(f"lrg_client.api.{tag}.{name}")


async def test_a_generated_python_client_drives_every_operation(
    lrg: ModuleType, upstream_url: str, emulator: Emulator
) -> None:
    """Every operation of the document (but the events stream, which is not for request/response clients)
    called through the generated client: the status it documents, and a parsed reply of the
    documented model, not a Problem. Writes answer 204 with no body, which the client accepts."""
    models = importlib.import_module("lrg_client.models")
    emulator.add_members(APP_ID, "room-1", ["alice", "bob"])
    called: set[str] = set()
    async with start_gateway(upstream_url) as gateway:
        client = lrg.AuthenticatedClient(base_url=gateway.url, token=TOKENS["rw"], raise_on_unexpected_status=True)
        async with client:

            async def call(tag: str, name: str, status: int, *args: Any, **kwargs: Any) -> Any:
                response = await _api(lrg, tag, name).asyncio_detailed(*args, client=client, **kwargs)
                assert response.status_code == status, (name, response.status_code, response.content)
                assert not isinstance(response.parsed, models.Problem), (name, response.parsed)
                called.add("".join(w.capitalize() if i else w for i, w in enumerate(name.split("_"))))
                return response.parsed

            t, r = "acme", "room-1"
            assert (await call("rooms", "get_room", 200, t, r)).room_id == r
            await call("rooms", "update_room", 204, t, r, body=models.RoomPatch(room_name="Generated"))
            await call(
                "metadata",
                "set_room_metadata",
                204,
                t,
                r,
                body=models.MetadataPatch.from_dict({"metadata": {"k": "v"}}),
            )
            assert (await call("metadata", "get_room_metadata", 200, t, r, key=["k"])).metadata["k"] == "v"
            await call("metadata", "delete_room_metadata", 204, t, r, key=["k"])
            assert (
                await call("rooms", "create_room", 201, t, body=models.CreateRoom(room_id="gen-1"))
            ).room_id == "gen-1"
            assert any(x.room_id == "gen-1" for x in (await call("rooms", "list_rooms", 200, t, limit=20)).rooms)
            await call("rooms", "destroy_room", 204, t, "gen-1")
            assert (await call("stats", "get_room_stats", 200, t, r)).total_viewers == 2
            emulator.apps[APP_ID].people[r].gift_counts["alice"] = {"TotalCoins": 5}
            assert (await call("gifts", "get_gift_count", 200, t, r, account="alice")).total_coins == 5
            assert (await call("members", "list_members", 200, t, r)).member_count == 2
            await call("admins", "add_admins", 204, t, r, body=models.AdminAccounts(accounts=["alice"]))
            assert (await call("admins", "list_admins", 200, t, r)).admins == ["alice"]
            await call("admins", "remove_admins", 204, t, r, account=["alice"])
            await call("bans", "ban_members", 204, t, r, body=models.Ban(accounts=["bob"], duration=60))
            assert [b.account for b in (await call("bans", "list_bans", 200, t, r)).bans] == ["bob"]
            await call("bans", "unban_members", 204, t, r, account=["bob"])
            await call("mutes", "mute_members", 204, t, r, body=models.Mute(accounts=["bob"], duration=60))
            assert [m.account for m in (await call("mutes", "list_mutes", 200, t, r)).mutes] == ["bob"]
            await call("mutes", "unmute_members", 204, t, r, account=["bob"])
            message = models.Message(sender="alice", text="hi")
            await call("messages", "send_message", 204, t, r, body=message, idempotency_key="gen-msg-1")
            again = await _api(lrg, "messages", "send_message").asyncio_detailed(
                t, r, client=client, body=message, idempotency_key="gen-msg-1"
            )
            assert again.headers["idempotent-replayed"] == "true"  # the generated client carries the key
            assert len(emulator.apps[APP_ID].people[r].messages) == 1
            assert len((await call("seats", "list_seats", 200, t, r)).seats) == 8
            await call("seats", "take_seat", 204, t, r, body=models.SeatTake(account="alice", index=1))
            await call("seats", "move_seat", 204, t, r, body=models.SeatMove(account="alice", index=3))
            await call("seats", "leave_seat", 204, t, r, account="alice")
            await call("seats", "lock_seat", 204, t, r, body=models.SeatLock(index=2, forbid_taken=True))
            await call("robots", "add_robots", 204, t, r, body=models.RobotAccounts(accounts=["bot"]))
            assert (await call("robots", "list_robots", 200, t, r)).robots == ["bot"]
            await call("robots", "remove_robots", 204, t, r, account=["bot"])
            now = str(int(time.time()))
            event = models.CallbackBody.from_dict({"RoomId": r, "EventTime": 1, "Extra": {"kept": True}})
            signature = {"sdk_appid": str(APP_ID), "request_time": now, "sign": sign(CALLBACK_TOKEN, now)}
            ack = await call(
                "callbacks",
                "tencent_callback",
                200,
                body=event,
                callback_command="Live.CallbackAfterSetMetadata",
                **signature,
            )
            assert ack.action_status == "OK"
            await call("operations", "livez", 200)
            await call("operations", "readyz", 200)
            await call("operations", "metrics", 200)
    document = yaml.safe_load(OPENAPI.read_text())
    every = {op["operationId"] for item in document["paths"].values() for op in item.values() if "operationId" in op}
    assert every - set(NOT_FOR_CLIENTS) == called


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs node (npx) to run openapi-typescript")
def test_the_committed_typescript_types_are_current(tmp_path: Path) -> None:
    """clients/typescript/live-room-gateway.d.ts is openapi-typescript's output for the committed
    document (regenerate: npx openapi-typescript@7.13.0 openapi/openapi.yaml -o <that file>)."""
    fresh = tmp_path / "types.d.ts"
    result = subprocess.run(
        ["npx", "--yes", OPENAPI_TYPESCRIPT, str(OPENAPI), "-o", str(fresh)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert TS_TYPES.read_text() == fresh.read_text()
