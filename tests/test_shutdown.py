"""Graceful shutdown: SIGTERM turns readiness off, lets in-flight requests finish, exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.fleet import GATEWAY, stop, wait_http
from tests.redis_servers import free_port
from tests.support import SECRETS, TOKENS, config_yaml


async def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    """Ten slow writes (1.5 s at Tencent) in flight at SIGTERM all complete with 204; no new
    connection is accepted after it; the process exits 0 without cancelling anything."""
    emu_port, gw_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(f"http://127.0.0.1:{emu_port}"))
    env = {**os.environ, **SECRETS, "GATEWAY_CONFIG": str(config), "GATEWAY_DRAIN_SECONDS": "10"}
    emulator = subprocess.Popen(  # noqa: ASYNC220 - starting a process is quick; the test waits on HTTP
        [*GATEWAY, "emulator", "--port", str(emu_port), "--config", str(config), "--latency-ms", "1500"], env=env
    )
    gateway = subprocess.Popen(  # noqa: ASYNC220
        [*GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(gw_port)], env=env, stderr=subprocess.PIPE
    )
    try:
        wait_http(f"http://127.0.0.1:{emu_port}/_emulator/stats", emulator)
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{base}/readyz", gateway)
        auth = {"authorization": f"Bearer {TOKENS['rw']}"}
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
            writes = [
                asyncio.create_task(
                    client.patch(f"/v1/tenants/acme/rooms/room-{n % 3 + 1}", json={"activity_status": n})
                )
                for n in range(10)
            ]
            await asyncio.sleep(0.5)  # all ten are now waiting on Tencent
            gateway.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            try:
                async with httpx.AsyncClient(timeout=2) as fresh:
                    late = (await fresh.get(f"{base}/readyz")).status_code
            except httpx.ConnectError:
                late = None  # the listener is closed: the pod is out of rotation
            statuses = [(await w).status_code for w in writes]
        code = await asyncio.to_thread(gateway.wait, 20)
        _, stderr = gateway.communicate()
    finally:
        if gateway.poll() is None:
            stop(gateway)
        stop(emulator)
    assert statuses == [204] * 10
    assert late in (None, 503)
    assert code == 0
    assert b"Cancel" not in stderr, stderr.decode()[-2000:]
