"""The fleet tests' load generator (``tests.openloop``) counts every request it offered: answered,
refused at connect, or left unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests import openloop
from tests.redis_servers import free_port


@pytest.fixture
async def half_deaf() -> AsyncIterator[str]:
    """A server that answers every other request (204 with keep-alive) and never the others."""
    seen = 0
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"PATCH /rooms/1 HTTP/1.1\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                assert await reader.readexactly(length) == b'{"a":1}'
                seen += 1
                if seen % 2:
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:
                    await asyncio.Event().wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/rooms/1"
    for task in handlers:
        task.cancel()
    server.close()
    await asyncio.gather(*handlers, return_exceptions=True)


@pytest.mark.slow  # its bound is on wall-clock pacing
async def test_every_offered_request_is_counted_and_paced(half_deaf: str) -> None:
    """Requests leave at the offered rate, and those never answered come back as status 0 once
    the drain ends: none is dropped from the count."""
    target = openloop.target(half_deaf, method="PATCH", headers={"x-a": "1"}, body={"a": 1})
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await openloop.offer([target], rate=100, seconds=0.5, drain=0.5)
    took = loop.time() - began
    statuses = [status for status, _ in results]
    assert len(results) == 50
    assert statuses.count(204) == 25
    assert statuses.count(0) == 25  # unanswered when the drain ended
    assert 0.49 + 0.5 <= took < 2.0  # offered over half a second, then the drain for the silent half


async def test_a_refused_connection_is_status_zero() -> None:
    """A request whose connection is refused is counted, as status 0."""
    results = await openloop.offer([openloop.target(f"http://127.0.0.1:{free_port()}/x")], rate=50, seconds=0.2)
    assert [status for status, _ in results] == [0] * 10


async def test_a_socket_idle_past_the_servers_keep_alive_is_not_used_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept-alive socket idle longer than ``IDLE_FOR`` (under the server's keep-alive timeout)
    is closed, not written to: the next request goes on a new connection, never on one the server
    may be closing at that moment."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        target = openloop.target(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
        assert [s for s, _ in await openloop.offer([target], rate=20, seconds=0.2, drain=1)] == [204] * 4
        assert len(handlers) == 1  # (kept alive: 50 ms idle at most)
        monkeypatch.setattr(openloop, "IDLE_FOR", 0.01)
        assert [s for s, _ in await openloop.offer([target], rate=20, seconds=0.2, drain=1)] == [204] * 4
        assert len(handlers) == 1 + 4
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
