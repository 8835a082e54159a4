"""``live-engine-emulator`` as other teams start it: a process on a port with the apps it is given."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from live_engine_emulator.cli import DEFAULT_SDKAPPID, parse_app
from live_engine_emulator.usersig import mint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        data: dict[str, object] = json.loads(reply.read())
        return data


def test_app_specs_are_read_with_the_default_admin() -> None:
    """``--app SDKAPPID:KEY[:ADMIN]`` gives the admin ``administrator`` unless it names one."""
    assert parse_app("1400000002:secret") == (1400000002, "secret", "administrator")
    assert parse_app("1400000002:secret:ops") == (1400000002, "secret", "ops")


def test_the_command_serves_the_apps_and_rooms_it_is_given() -> None:
    """The console script's process prints where it listens and answers a call signed for its app."""
    port, key = free_port(), "s" * 32
    args = ["--port", str(port), "--app", f"{DEFAULT_SDKAPPID}:{key}", "--rooms", "2"]
    command = [sys.executable, "-m", "live_engine_emulator", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"Live Engine emulator on http://127.0.0.1:{port}"), line
        sig = mint(DEFAULT_SDKAPPID, key, "administrator", issued=int(time.time()), expire=60)
        query = f"sdkappid={DEFAULT_SDKAPPID}&identifier=administrator&usersig={sig}&random=1&contenttype=json"
        base = f"http://127.0.0.1:{port}/v4/live_engine_http_srv/get_room_info?{query}"
        try:
            assert post(base, {"RoomId": "room-2"})["ErrorCode"] == 0
        finally:
            proc.terminate()
