"""Fixtures: a fresh emulator per test, served over real HTTP; a gateway in front of it (or, for
tests that need no fresh state, one of each per module: ``shared_gateway``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from gateway.logs import JsonFormatter
from live_engine_emulator import Emulator, serve_emulator
from live_engine_emulator.state import Faults
from tests.proxies import PASSWORD as PROXY_PASSWORD
from tests.redis_servers import RedisServer, cluster, standalone
from tests.support import KEY, OTHER_KEY, TOKENS, Gateway, new_emulator, start_gateway

SEEN_USERSIGS: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks() -> Iterator[None]:
    """After the whole suite: no log record any test produced holds a secret key, a bearer token,
    the egress proxy's password or a UserSig that any emulator saw. (Records are kept and
    formatted only at the end, so the timing-sensitive tests do not pay for it.)"""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield
    assert handler in root.handlers, "something removed the suite's log capture (Litestar once did)"
    root.removeHandler(handler)
    root.setLevel(level)
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in records)
    for secret in (KEY, OTHER_KEY, PROXY_PASSWORD, *TOKENS.values(), *SEEN_USERSIGS):
        assert secret not in text, "a secret reached the logs"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """Tencent, emulated: apps acme (1400000001) and globex (1400000002), rooms room-1..3 each."""
    emulator = new_emulator()
    yield emulator
    for sigs in emulator.usersigs.values():
        SEEN_USERSIGS.update(sigs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_gateway() -> AsyncIterator[tuple[Gateway, Emulator]]:
    """One emulator and one gateway in front of it for a whole module, in the module's event
    loop: for tests that need no fresh gateway (refusals, routing), through ``shared_gateway``."""
    emulator = new_emulator()
    async with serve_emulator(emulator) as url, start_gateway(url) as running:
        yield running, emulator


@pytest.fixture
def shared_gateway(module_gateway: tuple[Gateway, Emulator]) -> tuple[Gateway, Emulator]:
    """The module's gateway and emulator, the emulator's counters and faults reset for this test
    (the UserSigs it saw are kept for the suite's secret check first). Tests that use it run in
    the module's loop: ``@pytest.mark.asyncio(loop_scope="module")``."""
    gateway, emulator = module_gateway
    for sigs in emulator.usersigs.values():
        SEEN_USERSIGS.update(sigs)
    emulator.reset_counters()
    emulator.faults = Faults()
    return gateway, emulator


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
