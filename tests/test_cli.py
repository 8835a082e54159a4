"""The command line as users run it: real processes on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from TLSSigAPIv2 import TLSSigAPIv2

from gateway.app import create_app
from gateway.cli import main, openapi_document
from gateway.settings import Settings
from live_engine_emulator import Emulator
from tests.redis_servers import free_port
from tests.support import APP_ID, SECRETS, TOKENS, config_yaml

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early: {proc.communicate()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@contextlib.contextmanager
def running(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- demo-curl:start -->")[1].split("<!-- demo-curl:end -->")[0]
    return [line for line in block.splitlines() if line.startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_demo_answers_the_readme_curl_lines() -> None:
    """`gateway demo` serves every curl line of the README with the status the README promises."""
    port = free_port()
    lines = readme_curl_lines()
    assert len(lines) >= 6
    with running([*GATEWAY, "demo", "--port", str(port)], port):
        outputs = []
        for line in lines:
            args = shlex.split(line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
            result = subprocess.run([*args, "-sS", "--max-time", "10"], capture_output=True, text=True, check=True)
            outputs.append(result.stdout)
    statuses = [int(re.match(r"HTTP/1.1 (\d+)", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert statuses == [200, 204, 200, 204, 200, 204, 404]
    assert "x-cache: miss" in outputs[0].lower()
    assert '"room_name":"Renamed"' in outputs[2]
    assert '{"metadata":{"topic":"launch"}}' in outputs[4]
    assert '"code":"room_not_found"' in outputs[6]


def test_openapi_document_is_committed_and_current() -> None:
    """openapi/openapi.yaml equals what the app serves (regenerate: gateway openapi > openapi/openapi.yaml)."""
    committed = (ROOT / "openapi" / "openapi.yaml").read_text()
    assert committed == openapi_document(create_app(Settings(), env={}))


def test_openapi_command_prints_the_committed_document() -> None:
    """`gateway openapi` prints exactly the committed file."""
    result = subprocess.run([*GATEWAY, "openapi"], capture_output=True, text=True, check=True)
    assert result.stdout == (ROOT / "openapi" / "openapi.yaml").read_text()


def test_serve_with_a_config_file(tmp_path: Path) -> None:
    """`gateway serve` reads GATEWAY_CONFIG and the secret env, and forwards to the configured Tencent."""
    emu_port, gw_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(f"http://127.0.0.1:{emu_port}"))
    env = {**SECRETS, "GATEWAY_CONFIG": str(config)}
    with (
        running([*GATEWAY, "emulator", "--port", str(emu_port), "--config", str(config)], emu_port, env),
        running([*GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(gw_port)], gw_port, env),
    ):
        auth = {"authorization": f"Bearer {TOKENS['rw']}"}
        response = httpx.get(f"http://127.0.0.1:{gw_port}/v1/tenants/acme/rooms/room-1", headers=auth)
        assert response.status_code == 200
        assert response.json()["room_id"] == "room-1"
        assert httpx.get(f"http://127.0.0.1:{gw_port}/readyz").json() == {"status": "ready", "mode": "embedded"}


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    """A config error stops `gateway serve` with exit status 2 and the field named; nothing listens."""
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml("http://127.0.0.1:1").replace("region: singapore", "region: atlantis"))
    result = subprocess.run(
        [*GATEWAY, "serve", "--port", str(free_port())],
        env={**os.environ, **SECRETS, "GATEWAY_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "tenants.acme.region" in result.stderr
    assert "atlantis" in result.stderr


def test_serve_refuses_a_bad_setting() -> None:
    """A bad GATEWAY_* value stops start-up naming the variable."""
    result = subprocess.run(
        [*GATEWAY, "serve"],
        env={**os.environ, "GATEWAY_DEADLINE": "soon"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "GATEWAY_DEADLINE" in result.stderr


def test_serve_loads_neither_the_emulator_nor_aiohttp() -> None:
    """The service's modules, its app and `gateway serve`'s CLI import no emulator and no aiohttp
    (the image installs neither)."""
    code = (
        "import sys; import gateway.cli; from gateway.app import create_app; from gateway.settings import Settings; "
        "create_app(Settings(), env={}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'live_engine_emulator')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["demo", "emulator"])
def test_demo_and_emulator_say_how_to_install_the_emulator(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the emulator package, `gateway demo` and `gateway emulator` exit 2 naming the install."""
    monkeypatch.setitem(sys.modules, "live_engine_emulator", None)  # (an import of it raises ImportError)
    assert main([command], env={}) == 2
    assert "pip install ./emulator" in capsys.readouterr().err


def test_emulator_alone_speaks_tencents_protocol() -> None:
    """`gateway emulator` answers a correctly signed call and rejects a badly signed one."""
    port = free_port()
    with running([*GATEWAY, "emulator", "--port", str(port)], port, {"EMULATOR_SECRET_KEY": "k" * 32}):
        base = f"http://127.0.0.1:{port}/v4/live_engine_http_srv/get_room_info"
        for key, code in (("k" * 32, 0), ("wrong", 70009)):
            sig = TLSSigAPIv2(1400000001, key).gen_sig("administrator", 3600)
            params = {
                "sdkappid": "1400000001",
                "identifier": "administrator",
                "usersig": sig,
                "random": "7",
                "contenttype": "json",
            }
            reply = httpx.post(base, params=params, json={"RoomId": "room-1"}).json()
            assert reply["ErrorCode"] == code
        stats = httpx.get(f"http://127.0.0.1:{port}/_emulator/stats").json()
        assert stats["calls"] == {"get_room_info": 2}


async def gateway_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``gateway …`` as a process without blocking this event loop (the emulator runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY, *args, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_callbacks_register_and_show(tmp_path: Path, emulator: Emulator, upstream_url: str) -> None:
    """`gateway callbacks register` sets the tenant's callback token at Tencent, then its URL
    (set_callback the first time, update_callback after), through the gateway's signing;
    `show` reads it back (get_callback) and never prints the token."""
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(upstream_url))
    env = {**SECRETS, "GATEWAY_CONFIG": str(config), "GATEWAY_LOG_LEVEL": "warning"}
    url = "https://gateway.example.com/v1/callbacks/tencent"
    code, out, err = await gateway_cli("callbacks", "register", "--tenant", "acme", "--url", url, env=env)
    assert code == 0, err
    assert "set for tenant acme" in out
    app = emulator.apps[APP_ID]
    assert app.callback_url == url
    assert "Live.CallbackAfterDestroyRoom" in app.callback_commands
    assert (app.callback_token, app.callback_token_enabled) == (SECRETS["ACME_CALLBACK_TOKEN"], True)
    code, out, err = await gateway_cli(
        "callbacks",
        "register",
        "--tenant",
        "acme",
        "--url",
        url + "?v=2",
        "--command",
        "Live.CallbackAfterDestroyRoom",
        env=env,
    )
    assert code == 0, err
    assert "updated" in out
    assert (app.callback_url, app.callback_commands) == (url + "?v=2", ["Live.CallbackAfterDestroyRoom"])
    code, out, err = await gateway_cli("callbacks", "show", "--tenant", "acme", env=env)
    assert code == 0, err
    assert json.loads(out) == {"tenant": "acme", "url": url + "?v=2", "commands": ["Live.CallbackAfterDestroyRoom"]}
    assert SECRETS["ACME_CALLBACK_TOKEN"] not in out + err
    assert emulator.calls["set_callback"] == emulator.calls["update_callback"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "--tenant", "globex", "--url", "https://x/cb"], "has no callback_token"),
        (["register", "--tenant", "nobody", "--url", "https://x/cb"], "no tenant 'nobody'"),
        (["register", "--tenant", "acme", "--url", "ftp://x/cb"], "--url must be an http(s) URL"),
    ],
    ids=["no-token", "no-tenant", "bad-url"],
)
async def test_callbacks_register_refuses_what_cannot_work(
    tmp_path: Path, emulator: Emulator, upstream_url: str, args: list[str], message: str
) -> None:
    """A tenant without a callback token, an unknown tenant and a URL that is not http(s) stop the
    command with a message, before anything is set at Tencent."""
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(upstream_url))
    env = {**SECRETS, "GATEWAY_CONFIG": str(config), "GATEWAY_LOG_LEVEL": "warning"}
    code, _, err = await gateway_cli("callbacks", *args, env=env)
    assert code in (1, 2)
    assert message in err
    assert emulator.calls["set_callback_token"] == 0 or "no callback_token" not in message
    assert not emulator.apps[APP_ID].callback_url


def test_the_demo_shows_an_event_arriving() -> None:
    """In `gateway demo` the emulated Tencent calls the gateway back: a PATCH makes an
    Live.CallbackAfterUpdateRoomInfo event arrive on the demo's events stream."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer demo-token"}
    with running([*GATEWAY, "demo", "--port", str(port)], port):
        received: list[str] = []

        def listen() -> None:
            with httpx.stream("GET", f"{base}/v1/tenants/demo/events", headers=auth, timeout=10) as response:
                for line in response.iter_lines():
                    if line == ": connected":
                        received.append("connected")
                    if line.startswith("data: "):
                        received.append(line)
                        return

        listener = threading.Thread(target=listen)
        listener.start()
        end = time.monotonic() + 10
        while "connected" not in received and time.monotonic() < end:
            time.sleep(0.02)
        response = httpx.patch(f"{base}/v1/tenants/demo/rooms/demo-room-2", headers=auth, json={"room_name": "Hello"})
        assert response.status_code == 204
        listener.join(10)
    event = json.loads(received[-1].removeprefix("data: "))
    assert event["command"] == "Live.CallbackAfterUpdateRoomInfo"
    assert event["room_id"] == "demo-room-2"
    assert event["payload"]["RoomInfo"]["RoomName"] == "Hello"
