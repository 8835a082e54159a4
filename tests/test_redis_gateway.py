"""The gateway on the Redis deployments people run: standalone, ACL user, TLS, cluster, or none reachable."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import trustme

from live_engine_emulator import Emulator
from tests.redis_servers import RedisServer, redis_server_binary
from tests.support import Gateway, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"


@contextlib.asynccontextmanager
async def gateway_on(upstream_url: str, redis_url: str, **settings: object) -> AsyncIterator[Gateway]:
    async with start_gateway(upstream_url, redis_url=redis_url, **settings) as gateway:
        yield gateway


async def _works_shared(gateway: Gateway, emulator: Emulator) -> None:
    assert (await gateway.client.get(ROOM)).headers["x-cache"] == "miss"
    assert (await gateway.client.get(ROOM)).headers["x-cache"] == "hit"
    assert (await gateway.client.get("/readyz")).json() == {"status": "ready", "mode": "shared"}
    assert emulator.calls["get_room_info"] == 1
    metrics = (await gateway.client.get("/metrics")).text  # (the booking's own connection spoke it too)
    assert "gateway_redis_errors_total 0.0" in metrics, [m for m in metrics.splitlines() if "redis_errors" in m]


async def test_standalone_with_key_prefix(upstream_url: str, emulator: Emulator, redis_url: str) -> None:
    """On a standalone Redis every key the gateway writes carries the configured prefix."""
    async with gateway_on(upstream_url, redis_url, redis_prefix="team-a:") as gateway:
        await _works_shared(gateway, emulator)
    keys = redis.Redis.from_url(redis_url).keys("*")
    assert keys
    assert all(k.startswith(b"team-a:") for k in keys), keys


async def test_cluster(upstream_url: str, emulator: Emulator, redis_cluster: list[RedisServer]) -> None:
    """On a 3-node Redis Cluster (redis+cluster://) the scripts run, each touching one slot."""
    url = f"redis+cluster://127.0.0.1:{redis_cluster[1].port}"
    async with gateway_on(upstream_url, url, redis_prefix="c1:") as gateway:
        await _works_shared(gateway, emulator)
        assert (await gateway.client.patch(ROOM, json={"room_name": "x"})).status_code == 204
        assert (await gateway.client.get(ROOM)).json()["room_name"] == "x"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--requirepass", "default-pw", "--user", "gateway", "on", ">gw-pw", "~*", "+@all"])
    server.start(
        ready=lambda: redis.Redis(host="127.0.0.1", port=server.port, password="default-pw", socket_timeout=0.5)
    )
    yield server
    server.close()


async def test_acl_user(upstream_url: str, emulator: Emulator, acl_server: RedisServer) -> None:
    """An ACL user and password in the URL work."""
    url = f"redis://gateway:gw-pw@127.0.0.1:{acl_server.port}"
    async with gateway_on(upstream_url, url) as gateway:
        await _works_shared(gateway, emulator)


async def test_wrong_password_degrades_instead_of_failing(
    upstream_url: str, emulator: Emulator, acl_server: RedisServer
) -> None:
    """A Redis that refuses us leaves the gateway serving from in-process state, and /readyz says so."""
    url = f"redis://gateway:wrong@127.0.0.1:{acl_server.port}"
    async with gateway_on(upstream_url, url) as gateway:
        assert (await gateway.client.get(ROOM)).status_code == 200
        assert (await gateway.client.get("/readyz")).json() == {"status": "ready", "mode": "degraded"}


async def test_no_redis_at_start_up(upstream_url: str) -> None:
    """With Redis unreachable from the start the gateway still starts, serves, and reports degraded mode."""
    async with gateway_on(upstream_url, "redis://127.0.0.1:1") as gateway:
        assert (await gateway.client.get(ROOM)).status_code == 200
        assert (await gateway.client.patch(ROOM, json={"room_name": "y"})).status_code == 204
        assert (await gateway.client.get(ROOM)).json()["room_name"] == "y"
        assert (await gateway.client.get("/readyz")).json() == {"status": "ready", "mode": "degraded"}


def _supports_tls() -> bool:
    try:
        out = subprocess.run(
            [redis_server_binary(), "--port", "0", "--tls-port", "1"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Bad directive" not in out.stdout + out.stderr


@pytest.mark.skipif(not _supports_tls(), reason="this redis-server was built without TLS")
async def test_tls(upstream_url: str, emulator: Emulator, tmp_path: Path) -> None:
    """rediss:// with the CA in the URL: the gateway speaks TLS to Redis."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = RedisServer(
        extra=[
            "--tls-cert-file",
            str(tmp_path / "cert.pem"),
            "--tls-key-file",
            str(tmp_path / "key.pem"),
            "--tls-ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--tls-auth-clients",
            "no",
        ]
    )
    tls_port = server.port
    server.extra += ["--tls-port", str(tls_port)]
    server.port = 0  # plain port off; readiness is checked over TLS below
    try:
        server.start_tls(tls_port, tmp_path / "ca.pem")
        url = f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={tmp_path / 'ca.pem'}"
        async with gateway_on(upstream_url, url) as gateway:
            await _works_shared(gateway, emulator)
    finally:
        server.close()
