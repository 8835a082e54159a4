"""Fixtures: a fresh emulator per test, served over real HTTP; a gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.emulator import Emulator, serve_emulator
from tests.redis_servers import RedisServer, cluster, standalone
from tests.support import Gateway, new_emulator, start_gateway


@pytest.fixture
def emulator() -> Emulator:
    """Tencent, emulated: apps acme (1400000001) and globex (1400000002), rooms room-1..3 each."""
    return new_emulator()


@pytest.fixture
async def upstream_url(emulator: Emulator) -> AsyncIterator[str]:
    async with serve_emulator(emulator) as url:
        yield url


@pytest.fixture
async def gateway(upstream_url: str) -> AsyncIterator[Gateway]:
    """The gateway with test settings, its client authenticated as the read-write caller."""
    async with start_gateway(upstream_url) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server for the session (tests flush it; see `redis_url`)."""
    with standalone() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The standalone server's URL, emptied before the test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[RedisServer]]:
    """A 3-primary Redis Cluster for the session."""
    with cluster(3) as servers:
        yield servers
