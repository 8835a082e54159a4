"""The command line as users run it: real processes on loopback ports."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from TLSSigAPIv2 import TLSSigAPIv2

from gateway.app import create_app
from gateway.cli import openapi_document
from gateway.settings import Settings
from tests.redis_servers import free_port
from tests.support import SECRETS, TOKENS, config_yaml

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
