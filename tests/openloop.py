"""An open-loop HTTP/1.1 load generator that costs its machine little (``support.drive``).

Open loop: request ``i`` is offered at ``start + i / rate`` whatever the answers take (callers of
a rate-limited service do not wait for each other), round-robin over the targets. Each request
is written in one piece on a keep-alive socket (a new one when none is idle) and its reply read
by httptools; there is no coroutine per request. It spends 150-200 µs of CPU a request (kernel
time included), a third of what an aiohttp client spent: on two cores, the load generator's CPU
is taken from the replicas under test, which must be on a core at their budget slots
(BENCHMARKS.md, "Budget exactness").

    await offer(targets, rate=600, seconds=20) -> [(status, seconds taken), ...]  (0: no answer)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

IDLE_FOR = 4.0  # seconds a socket may stay idle and be used again: under uvicorn's keep-alive timeout (5 s),
# as a client's pool keeps its idle timeout under the server's, so a request is never written to a
# socket the server is closing (a lost request, status 0, seen once in CI after a pause in load)


class Target(NamedTuple):
    host: str
    port: int
    request: bytes  # the whole request, ready to write


def target(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: object = None) -> Target:
    """A target from a URL; ``body`` is sent as JSON."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"an http URL with a port, not {url!r}")
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    lines = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
    lines.append(f"Host: {parts.hostname}:{parts.port}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload)}")
    return Target(parts.hostname, parts.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


class _Conn(asyncio.Protocol):
    """One socket: one request at a time; reports each reply through ``done``."""

    def __init__(self, idle: list[_Conn], done: Callable[[int, float], None], give_up: float | None = None) -> None:
        self._idle = idle
        self._done = done
        self._give_up_after = give_up  # a client with a timeout: no answer within it closes the socket
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._began: float | None = None  # loop time the request in flight was sent
        self.idle_since = 0.0  # loop time its last reply was read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, began: float) -> None:
        assert self._transport is not None
        self._began = began
        self._transport.write(request)
        if self._give_up_after is not None:
            asyncio.get_running_loop().call_at(began + self._give_up_after, self._give_up, began)

    def _give_up(self, began: float) -> None:
        """The request sent at ``began`` is still unanswered: no answer, and the socket closed."""
        if self._began == began:
            self._finish(0)
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(0)
            self.close()

    def on_message_complete(self) -> None:
        self._finish(self._parser.get_status_code())
        if self._parser.should_keep_alive():
            self.idle_since = asyncio.get_running_loop().time()
            self._idle.append(self)
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(0)
        with contextlib.suppress(ValueError):
            self._idle.remove(self)

    def _finish(self, status: int) -> None:
        if self._began is not None:
            began, self._began = self._began, None
            self._done(status, asyncio.get_running_loop().time() - began)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def offer(
    targets: list[Target],
    *,
    rate: float,
    seconds: float,
    drain: float = 30.0,
    arrivals: list[float] | None = None,
    give_up: float | None = None,
) -> list[tuple[int, float]]:
    """Offer ``rate`` requests a second for ``seconds``, then wait up to ``drain`` seconds for
    the replies still out. Returns (status, seconds taken) per request, in reply order;
    ``arrivals`` gets each reply's moment, in seconds from the first offer, in the same order.
    ``give_up``: each client gives up on a request unanswered (or unconnected) after that long,
    closing its socket (status 0), as a caller with a timeout does."""
    loop = asyncio.get_running_loop()
    results: list[tuple[int, float]] = []
    total = int(rate * seconds)
    finished = loop.create_future()
    idle: dict[Target, list[_Conn]] = {t: [] for t in targets}
    conns: list[_Conn] = []

    def done(status: int, took: float) -> None:
        if finished.done():  # (a reply after the drain: already counted as none)
            return
        results.append((status, took))
        if arrivals is not None:
            arrivals.append(loop.time() - start)
        if len(results) == total:
            finished.set_result(None)

    async def connect(t: Target, began: float) -> None:
        try:
            async with asyncio.timeout_at(None if give_up is None else began + give_up):
                _, conn = await loop.create_connection(lambda: _Conn(idle[t], done, give_up), t.host, t.port)
        except (OSError, TimeoutError):
            done(0, loop.time() - began)
            return
        conns.append(conn)
        conn.send(t.request, began)

    pending: set[asyncio.Task[None]] = set()
    start = loop.time()
    for i in range(total):
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        t, now = targets[i % len(targets)], loop.time()
        if idle[t] and now - idle[t][-1].idle_since > IDLE_FOR:  # (the newest is stale: so are all)
            for conn in idle[t]:
                conn.close()
            idle[t].clear()
        if idle[t]:
            idle[t].pop().send(t.request, now)
        else:
            task = loop.create_task(connect(t, now))
            pending.add(task)
            task.add_done_callback(pending.discard)
    if total:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(finished), drain)
    unanswered = total - len(results)  # still out after the drain: no answer
    if not finished.done():
        finished.set_result(None)
    for task in pending:
        task.cancel()
    for conn in conns:
        conn.close()
    if arrivals is not None:
        arrivals += [loop.time() - start] * unanswered
    return results + [(0, drain)] * unanswered
