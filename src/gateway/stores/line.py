"""The budget's own connection to Redis: bookings written the moment they are asked, pipelined.

Every forwarded call books its slot in Redis (``lua/book.lua``), so a booking's round trip is on
every request's path, and on a busy replica most of it is the event loop, not Redis. redis-py
spends several loop turns and ~120 µs of CPU around each command (a pool checkout under an
asyncio condition, a connection check, its own timeout, the read through a StreamReader and the
task that waits on it). Here a booking is one ``transport.write`` in the caller's own step, and
its reply resolves the caller's future from ``data_received``, the callback that reads it:
bookings in flight together share the socket in order (RESP pipelining), with no checkout. A
booking's answer is handed out right there too (``then``): the task awaiting the future runs
only when the loop gets round to it, 1.6 ms later at p50 and 4 ms at p90 at 64 in flight.

Measured (BENCHMARKS.md, "The budget's own connection"): one booking on an idle replica 265-307
µs through redis-py, 174-184 µs here; at 64 requests in flight the budget's mean wait went from 4.3-5.3
ms to 2.0-2.3 ms. That measurement is why this is ours and not redis-py's; replies are still
parsed by hiredis, the parser redis-py uses. The writes' calls that must keep their order with
each other (room invalidations, Idempotency-Key claims and answers: ``redis.Batch``) ride it too.

A standalone Redis (``redis://``, ``rediss://``, ``unix://``) gets one line, reached with the
same address, credentials, database and TLS settings as the client's pool. A Redis Cluster gets
a line per primary (``Nodes``): a call goes on the line of the node that redis-py's slot map says
holds its keys' slot (a booking's keys share one), with that node's settings; a MOVED or ASK
reply (the slot moved since), or a node that cannot be reached or drops the connection (a
failover since), sends the call through redis-py instead, which follows the redirection or finds
the new primary and refreshes its map (a node too slow to answer does not: that would double
the wait). Any failure (refused, lost, slower than the
timeout, an error reply) is ``StoreUnavailable``, as for every other Redis call; a timeout or a
lost connection fails every booking in flight on it (their replies could no longer be matched)
and the next booking connects again.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from gateway.health import StoreUnavailable

NAME = "gateway-budget"  # the connection's name in CLIENT LIST


def _pack(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _script(script: AsyncScript, keys: list[str], args: list[Any], *, text: bool = False) -> list[Any]:
    """A registered script's call: by its SHA, or by its text (which loads it)."""
    return ["EVAL" if text else "EVALSHA", script.script if text else script.sha, len(keys), *keys, *args]


def _noscript(reply: Any) -> bool:
    """Redis does not have the script (a restart or SCRIPT FLUSH since it was loaded)."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


Then = Callable[[Any], None]  # told of a command's reply as soon as it is read (``Line.call``)


def _unless_error(then: Then) -> Then:
    """``then``, not told of an error reply (NOSCRIPT, MOVED, ...: the caller's own to handle)."""

    def told(reply: Any) -> None:
        if not isinstance(reply, hiredis.ReplyError):
            then(reply)

    return told


class Late(StoreUnavailable):
    """No answer within the timeout."""


def unawaited(done: asyncio.Future[Any]) -> None:
    """A reply nobody waits for: its failure is not an unretrieved exception."""
    if not done.cancelled():
        done.exception()


class _Protocol(asyncio.Protocol):
    """Replies matched to the commands in the order they were written."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], Then | None]] = collections.deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not asyncio's class)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.fail("an unexpected reply")
                return
            future, then = self.waiting.popleft()
            if future.done():  # (its caller went away: the reply is dropped, the order kept)
                continue
            try:
                if then is not None:
                    then(reply)
            except Exception as exc:  # (a bug in ``then``: its caller hears of it, the stream goes on)
                future.set_exception(exc)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail("the connection was lost")

    def fail(self, why: str) -> None:
        """Every command in flight fails, and the connection is dropped."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable(f"Redis (the budget's connection): {why}"))

    def send(self, command: bytes, then: Then | None = None) -> asyncio.Future[Any]:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((future, then))
        self.transport.write(command)
        return future


class Line:
    """One pipelined connection to a standalone Redis (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        tls: ssl.SSLContext | None = None,
        timeout: float,
        scripts: tuple[str | bytes, ...] = (),
    ) -> None:
        """``scripts``: loaded on every new connection before anything else is written, so that
        a call nobody waits for (``later``) does not meet NOSCRIPT and run after later ones."""
        self._host, self._port, self._path = host, port, path
        self._tls = tls
        self._timeout = timeout
        self._hello: list[bytes] = []
        if password is not None:
            self._hello.append(_pack(["AUTH", username, password] if username else ["AUTH", password]))
        if db:
            self._hello.append(_pack(["SELECT", db]))
        self._hello.append(_pack(["CLIENT", "SETNAME", NAME]))
        self._hello += [_pack(["SCRIPT", "LOAD", script]) for script in scripts]
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @classmethod
    def of(cls, client: Any, *, timeout: float, scripts: tuple[str | bytes, ...] = ()) -> Line | None:
        """A line to the Redis ``client`` reaches, or None where it cannot be one of ours: a
        cluster, or a pool with settings this line does not speak (a credential provider)."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = client.connection_pool
        return cls.like(pool.connection_class, pool.connection_kwargs, timeout=timeout, scripts=scripts)

    @classmethod
    def like(
        cls,
        connection_class: type,
        connection_kwargs: dict[str, Any],
        *,
        timeout: float,
        scripts: tuple[str | bytes, ...],
    ) -> Line | None:
        """A line with the settings of redis-py's connections of ``connection_class`` made with
        ``connection_kwargs``, or None where it cannot be one of ours (a credential provider)."""
        options = dict(connection_kwargs)
        if options.get("credential_provider") is not None:
            return None
        tls = None
        if issubclass(connection_class, aioredis.SSLConnection):
            context = connection_class(**options).ssl_context  # (redis-py's own, from the URL)
            tls = context.get()
        return cls(
            host=options.get("host", "127.0.0.1"),
            port=int(options.get("port", 6379)),
            path=options.get("path"),
            username=options.get("username"),
            password=options.get("password"),
            db=int(options.get("db") or 0),
            tls=tls,
            timeout=timeout,
            scripts=scripts,
        )

    async def evalsha(self, script: AsyncScript, keys: list[str], args: list[Any], then: Then | None = None) -> Any:
        """Run a registered script: by its SHA, or by its text if Redis does not have it (a
        restart or SCRIPT FLUSH since it was loaded), which loads it again. ``then``: called with
        its reply (not an error reply) the moment it is read (``call``)."""
        useful = None if then is None else _unless_error(then)
        reply = await self.call(_script(script, keys, args), useful)
        if _noscript(reply):
            reply = await self.call(_script(script, keys, args, text=True), useful)
        if isinstance(reply, hiredis.ReplyError):  # (MOVED and ASK too: ``Redis.on_line`` on a cluster)
            raise StoreUnavailable(f"Redis (the budget's connection): {str(reply)[:200]}")
        return reply

    def later(self, script: AsyncScript, keys: list[str], args: list[Any]) -> asyncio.Future[Any] | None:
        """Write a script's call now, when connected, and nobody waits for its reply: the future
        of its reply, or None (not connected: the caller sends it some other way). The calls
        written after it are run after it. A reply of NOSCRIPT (the scripts are loaded on every
        new connection, so only after a SCRIPT FLUSH) sends it again by its text, behind them."""
        protocol = self._connected()
        if protocol is None:
            return None
        future = protocol.send(_pack(_script(script, keys, args)))

        def again(done: asyncio.Future[Any]) -> None:
            lost = not done.cancelled() and done.exception() is None and _noscript(done.result())
            if lost and (now := self._connected()) is not None:
                now.send(_pack(_script(script, keys, args, text=True))).add_done_callback(unawaited)

        future.add_done_callback(again)
        return future

    def _connected(self) -> _Protocol | None:
        """The connection, if it is open now."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            return None
        return protocol

    async def call(self, command: list[Any], then: Then | None = None) -> Any:
        """Write one command now, on the caller's own step, and wait for its reply (an error
        reply is returned, not raised). ``then`` is called with the reply in the callback that
        reads it, before the caller's task is resumed: under load the loop gets round to that
        task milliseconds later (p50 1.6 ms, p90 4 ms at 64 in flight, BENCHMARKS.md), most of
        a slot's send window."""
        protocol = self._connected() or await self._connect()
        future = protocol.send(_pack(command), then)
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return future.result()  # (read, and ``then`` told, just before the timeout fired)
            protocol.fail(f"no answer within {self._timeout:g} s")
            raise Late(f"Redis (the budget's connection): no answer within {self._timeout:g} s") from None

    async def _connect(self) -> _Protocol:
        """Connect once for every caller that needs it now (the first bookings come together)."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(self._connecting)
        except StoreUnavailable:
            raise
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis (the budget's connection): cannot connect ({type(exc).__name__})") from exc

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            if self._path is not None:
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                host = self._host if self._tls is not None else None
                _, protocol = await loop.create_connection(
                    _Protocol, self._host, self._port, ssl=self._tls, server_hostname=host
                )
            try:  # AUTH, SELECT, the name, the scripts: in one round trip
                replies = await asyncio.gather(*(protocol.send(hello) for hello in self._hello))
            except BaseException:  # too slow, or closed meanwhile: no socket is left open
                protocol.fail("not set up")
                raise
        refused = next((reply for reply in replies if isinstance(reply, hiredis.ReplyError)), None)
        if refused is not None:  # (the first error: an AUTH refused makes the rest NOAUTH)
            protocol.fail("refused")
            why = str(refused).split(" ")[0]  # the error's code alone: never the credentials
            raise StoreUnavailable(f"Redis (the budget's connection): {why} refused")
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class Nodes:
    """A line per Redis Cluster primary, made as a call first needs it (see the module docstring)."""

    def __init__(self, client: RedisCluster, *, timeout: float, scripts: tuple[str | bytes, ...] = ()) -> None:
        self._client = client
        self._timeout = timeout
        self._scripts = scripts
        self._lines: dict[str, Line | None] = {}  # by node name (host:port)

    def line(self, key: str) -> Line | None:
        """The line to the primary that holds ``key``'s slot, or None: the slot map is not loaded
        yet, or the node's settings are not ours to speak (the caller goes through redis-py)."""
        try:
            node = self._client.get_node_from_key(key)
        except (RedisError, RedisClusterException):  # (no slot map yet: it loads lazily while Redis is down)
            return None
        if node is None:
            return None
        if node.name not in self._lines:
            self._lines[node.name] = Line.like(
                node.connection_class, node.connection_kwargs, timeout=self._timeout, scripts=self._scripts
            )
        return self._lines[node.name]

    async def aclose(self) -> None:
        for line in self._lines.values():
            if line is not None:
                await line.aclose()
        self._lines.clear()
