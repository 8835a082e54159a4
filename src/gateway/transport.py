"""The upstream HTTP/1.1 client: a keep-alive connection pool on asyncio protocols, with
httptools (llhttp, Node.js's parser) reading the replies.

Why not a library's pool: httpx's own (httpcore) collapses as calls in flight grow; aiohttp's
client costs 2.5-3.5x this one's CPU a call and, on Python 3.11, writes a request from a task the
loop runs later, after the send window's "yes" (docs/design.md, "How it is built"; BENCHMARKS.md,
"Upstream transport"). Calls to Tencent are one shape only (a POST with a small JSON body, a JSON
reply), so the client needs little: write the request in one piece, parse the reply with llhttp
(every framing RFC 9112 allows), keep the socket.

A pooled socket is checked for anything to read right before it is written to (a server's FIN on
an idle socket): a dead one is dropped and the call moves to another, asking ``on_time`` again.
Once a request's first byte is written, a failure is the caller's: nothing is sent twice.

``Sender`` is the one seam between ``Upstream`` and the network: ``PooledTransport`` implements it
in production, and the tests' scripted Tencent implements the same ``post`` (the send window
asked right before the write, ``TooLate`` when it says no), so every test of ``Upstream`` runs the
code production runs. (It used to be an httpx transport too, with a second path through
``httpx.Request`` for ``httpx.MockTransport`` that production never took.)

Errors are httpx's: a refused or failed connection is a ``ConnectError``, a connection lost or a
reply llhttp rejects a ``RemoteProtocolError``. Timeouts are the caller's (``asyncio.timeout``):
a call cancelled mid-exchange closes its socket, since its reply may still arrive.

Egress proxies (``Proxy``): an https origin is reached through a ``CONNECT`` tunnel, with TLS to
the origin inside it (the certificate and name checked are the origin's, not the proxy's); an
http origin through absolute-form requests on a connection to the proxy. Tunnels are pooled and
kept alive like direct sockets, and ``on_time`` is still asked after the tunnel and handshake,
right before the request's first byte. A proxy that refuses us (401, 403, 407) is
``ProxyRefused``; one that is down, or cannot reach the origin, ``httpx.ProxyError``. Neither
message carries the proxy's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
import zlib
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol, cast
from urllib.parse import unquote, urlsplit

import httptools
import httpx

MAX_REPLY_BYTES = 8 * 1024 * 1024
_USER_AGENT = b"live-room-gateway"


class TooLate(Exception):
    """The call's moment passed before its first byte was written, so nothing was sent."""


OnTime = Callable[[], bool]  # asked right before a request is written: may it still leave?
_REFUSALS = frozenset({401, 403, 407})  # a proxy's "not you" or "not there": credentials or policy


class Proxy(NamedTuple):
    """An egress HTTP proxy: where it listens, and the ``Proxy-Authorization`` it wants (Basic,
    from the URL's userinfo). It shows itself without the credentials."""

    host: str
    port: int
    authorization: bytes | None = None

    def __repr__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.__repr__()

    @property
    def header(self) -> bytes:
        """Its ``Proxy-Authorization`` header line, or nothing when it wants no credentials."""
        return b"" if self.authorization is None else b"Proxy-Authorization: " + self.authorization + b"\r\n"


def proxy_from_url(url: str) -> Proxy:
    """``http://[user:password@]host[:port]`` (port 80 if absent, as urllib3 reads it); ValueError
    for anything else (the message never holds the password)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError("a proxy URL is http://[user:password@]host[:port] (only http:// proxies)")
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError as exc:
        raise ValueError("the proxy URL's port is not a number from 1 to 65535") from exc
    if not 1 <= port <= 65535:
        raise ValueError("the proxy URL's port is not a number from 1 to 65535")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode())
    return Proxy(parts.hostname, port, authorization)


class ProxyRefused(httpx.ProxyError):
    """The proxy refused the call (407: credentials wanted or wrong; 401/403: credentials or its
    policy): nothing reached the origin, and retrying will not help."""

    def __init__(self, proxy: Proxy, status: int) -> None:
        super().__init__(f"the egress proxy {proxy} answered {status}")
        self.proxy = proxy
        self.status = status


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verification against the system's CAs, or only ``ca_file``'s (a TLS-intercepting proxy's
    bundle: GATEWAY_UPSTREAM_CA_FILE); TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Reply(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes


class Launcher(Protocol):
    """A ``Sender`` that can also write a request with nothing awaited (``PooledTransport``)."""

    def launch(self, origin: str, target: str, body: bytes, *, proxy: Proxy | None = None) -> LaunchedCall | None:
        """The request written now on a ready socket, or None (nothing written)."""
        ...


class LaunchedCall(Protocol):
    async def reply(self) -> Reply: ...

    def abandon(self) -> None: ...


class Sender(Protocol):
    """What ``Upstream`` needs of the network: POST a JSON body, get the reply."""

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        """POST ``body`` to ``target`` (path and query, already encoded) at ``origin``, through
        ``proxy`` if given. ``on_time`` is asked immediately before the request's first byte is
        written; if it says no, nothing is written and ``TooLate`` raised. Failures are httpx's
        ``TransportError``s (``ProxyRefused`` and ``httpx.ProxyError`` for the proxy's)."""
        ...

    async def aclose(self) -> None: ...


class _Origin(NamedTuple):
    host: str
    port: int
    tls: ssl.SSLContext | None
    authority: bytes  # host[:port] as the Host header and a CONNECT name it
    head: bytes  # the request headers every call to this origin shares


def _origin(url: str, tls: ssl.SSLContext) -> _Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) origin: {url!r}")
    context = tls if parts.scheme == "https" else None
    port = parts.port or (443 if context else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 literal
    authority = (host if parts.port is None else f"{host}:{port}").encode("idna")
    head = (
        b"Host: " + authority + b"\r\nUser-Agent: " + _USER_AGENT + b"\r\n"
        b"Content-Type: application/json\r\nAccept: application/json\r\nAccept-Encoding: identity\r\n"
    )
    return _Origin(parts.hostname, port, context, authority, head)


class _TunnelHead(asyncio.Protocol):
    """A connection to the proxy until it answers our CONNECT: its status, once the head is in."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        self._buffer = b""
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" in self._buffer and not self.status.done():
            line = self._buffer.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0].startswith(b"HTTP/1.") and line[1].isdigit():
                self.status.set_result(int(line[1]))
            else:
                self.status.set_exception(httpx.ProxyError(f"the egress proxy {self._proxy} answered no HTTP"))
        elif len(self._buffer) > 16384 and not self.status.done():
            self.status.set_exception(httpx.ProxyError(f"the egress proxy {self._proxy} sent an endless head"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(httpx.ProxyError(f"the egress proxy {self._proxy} closed the tunnel"))


class _Connection(asyncio.Protocol):
    """One socket: one exchange at a time, the reply parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        # RFC 9112 §7.1.1 allows whitespace (BWS) before a chunk extension's ";", and §5.2 has a
        # user agent unfold a header folded onto the next line (obs-fold); llhttp refuses both
        # unless told (it guards servers against request smuggling; we parse replies).
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True, lenient_headers=True)
        self._waiter: asyncio.Future[Reply] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False  # the reply has a Content-Length or Transfer-Encoding
        self._until_eof = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"unreadable reply ({exc})")

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended()
        self._fail("connection closed before the reply was complete")

    def _ended(self) -> None:
        """The connection's end completes a close-delimited reply (RFC 9112 §6.3, rule 8), whether
        it ends with a FIN or a reset: a server that answers before reading our body (tinyproxy's
        401) closes with our bytes unread, so the kernel sends a reset right after its reply."""
        if self._until_eof and self._waiter is not None and not self._waiter.done():
            self.keep_alive = self._until_eof = False
            self._complete()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers, self._body, self._size, self._framed = [], [], 0, False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and _codings(value)[-1:] == [b"chunked"]):
            self._framed = True  # (other transfer codings last: the body runs to the close, RFC 9112 §6.3)

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._until_eof = not self._framed and not 100 <= self._status < 200 and self._status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_REPLY_BYTES:
            self._fail(f"reply over {MAX_REPLY_BYTES} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim reply (100 Continue): the real one follows
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._until_eof = False
        self._complete()

    # exchanges
    def send(self, request: bytes) -> asyncio.Future[Reply]:
        """Write ``request`` now (nothing awaited); its reply, once parsed."""
        if self.closed or self.transport is None:
            raise httpx.RemoteProtocolError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    async def reply(self, sent: asyncio.Future[Reply]) -> Reply:
        try:
            return await sent
        finally:
            self._waiter = None

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._fail("a reply nobody asked for")
            return
        waiter.set_result(Reply(self._status, self._headers, b"".join(self._body)))

    def _fail(self, reason: str) -> None:
        waiter, self.keep_alive = self._waiter, False
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.RemoteProtocolError(reason))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def quiet(self) -> bool:
        """Nothing is waiting to be read on this idle socket (urllib3's ``wait_for_read(sock, 0)``
        on a pooled connection): a server that closed it while idle has sent a FIN (or a reset)
        that the event loop may not have read yet, and a request written there would be lost
        after it left. A readable idle socket is dead either way: its end, or bytes nobody asked for."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        poller = select.poll()  # (every stream transport, TLS ones too, has its socket)
        poller.register(self.transport.get_extra_info("socket").fileno(), select.POLLIN)
        return not poller.poll(0)


class _Pool:
    """At most ``limit`` sockets to one origin (through one proxy, or none); idle ones are reused
    newest first."""

    def __init__(self, origin: _Origin, *, proxy: Proxy | None, limit: int, keepalive: float) -> None:
        self._origin = origin
        self._proxy = proxy
        # An http origin through a proxy: absolute-form requests, each with our credentials.
        self.absolute = proxy is not None and origin.tls is None
        self._target = b"http://" + origin.authority if self.absolute else b""
        self._head = origin.head + (proxy.header if self.absolute and proxy is not None else b"")
        self._limit = limit
        self._keepalive = keepalive
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.open = 0

    def request(self, target: str, body: bytes) -> bytes:
        """The whole POST of ``body`` to ``target`` (path and query), ready to write in one piece."""
        return b"".join(
            (
                b"POST ",
                self._target,
                target.encode("ascii"),
                b" HTTP/1.1\r\n",
                self._head,
                b"Content-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )

    def take(self) -> _Connection | None:
        """An idle live socket, if there is one (no await: the common case costs no coroutine).
        One the server closed while idle is found here, before anything is written to it, and
        dropped for the next (or a new one): the only case where a call moves to another socket."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self._keepalive and conn.quiet():
                return conn
            self._discard(conn)
        return None

    async def acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            conn = self.take()
            if conn is not None:
                return conn
            if self.open < self._limit:
                return await self._connect()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if not waiter.cancelled():  # woken, then cancelled: pass the wake-up on
                    self._wake()
                raise

    async def _connect(self) -> _Connection:
        self.open += 1
        try:
            return await self._open()
        except BaseException:
            self.open -= 1
            self._wake()
            raise

    async def _open(self) -> _Connection:
        """A new socket: to the origin, to the proxy (absolute-form), or a tunnel through it."""
        origin, proxy, loop = self._origin, self._proxy, asyncio.get_running_loop()
        if proxy is None:
            try:
                _, conn = await loop.create_connection(
                    _Connection,
                    origin.host,
                    origin.port,
                    ssl=origin.tls,
                    server_hostname=origin.host if origin.tls else None,
                )
            except OSError as exc:
                raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
            return conn
        factory: Callable[[], asyncio.Protocol] = _Connection if self.absolute else lambda: _TunnelHead(proxy)
        try:
            raw, protocol = await loop.create_connection(factory, proxy.host, proxy.port)
        except OSError as exc:
            raise httpx.ProxyError(f"the egress proxy {proxy} is unreachable ({type(exc).__name__})") from exc
        if self.absolute:
            return cast(_Connection, protocol)
        try:
            return await self._tunnel(raw, cast(_TunnelHead, protocol), proxy)
        except BaseException:
            raw.close()
            raise

    async def _tunnel(self, raw: asyncio.BaseTransport, answer: _TunnelHead, proxy: Proxy) -> _Connection:
        """CONNECT to the origin through ``proxy``, then TLS to the origin's name inside it."""
        origin = self._origin
        head = b"CONNECT " + origin.authority + b" HTTP/1.1\r\nHost: " + origin.authority + b"\r\n"
        cast(asyncio.Transport, raw).write(head + proxy.header + b"\r\n")
        status = await answer.status
        if status in _REFUSALS:
            raise ProxyRefused(proxy, status)
        if not 200 <= status < 300:  # 502, 504: it could not reach the origin
            raise httpx.ProxyError(f"the egress proxy {proxy} could not open a tunnel ({status})")
        assert origin.tls is not None  # only https origins are tunnelled
        conn = _Connection()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                cast(asyncio.WriteTransport, raw), conn, origin.tls, server_hostname=origin.host
            )
        except OSError as exc:  # ssl.SSLError: the origin's certificate or name did not verify
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        if tls is None:
            raise httpx.ConnectError("the tunnel closed during the TLS handshake")
        conn.connection_made(tls)
        return conn

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not conn.closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
            if self._idle[0].closed:  # sweep one dead socket per release, oldest first
                self._discard(self._idle.pop(0))
        else:
            self._discard(conn)
        self._wake()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self.open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self.open -= len(self._idle)
        self._idle.clear()


class PooledTransport:
    """Keep-alive pools of at most ``connections`` sockets per origin (and proxy). HTTPS origins
    are verified with ``tls`` (default: the system's CAs, TLS 1.2 at least; see ``tls_context``)."""

    def __init__(self, *, connections: int, keepalive: float = 15.0, tls: ssl.SSLContext | None = None) -> None:
        self._connections = connections
        self._keepalive = keepalive
        self._tls = tls or tls_context()
        self._pools: dict[tuple[str, Proxy | None], _Pool] = {}

    @property
    def open_connections(self) -> int:
        """Sockets the pools hold now (idle or busy); tests use it to find leaks."""
        return sum(pool.open for pool in self._pools.values())

    def _pool(self, origin: str, proxy: Proxy | None = None) -> _Pool:
        pool = self._pools.get((origin, proxy))
        if pool is None:
            pool = self._pools[(origin, proxy)] = _Pool(
                _origin(origin, self._tls), proxy=proxy, limit=self._connections, keepalive=self._keepalive
            )
        return pool

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        """POST ``body`` (JSON) to ``target`` (path and query, already encoded) at ``origin``,
        through ``proxy`` if given.

        ``on_time`` is asked once a socket is ready, immediately before the request is written
        (nothing awaits in between); if it says no, nothing is written and ``TooLate`` raised."""
        pool = self._pool(origin, proxy)
        request = pool.request(target, body)
        conn = pool.take() or await pool.acquire()
        if on_time is not None and not on_time():
            pool.release(conn, reuse=True)
            raise TooLate
        return await Launched(pool, conn, conn.send(request), proxy).reply()

    def launch(self, origin: str, target: str, body: bytes, *, proxy: Proxy | None = None) -> Launched | None:
        """Write the POST now on an idle socket, with nothing awaited, from whatever code runs
        (a budget grant's callback: ``budget.slots.Launch``); None, nothing written, when no idle
        socket is ready (the caller then ``post``s it, which may connect)."""
        pool = self._pool(origin, proxy)
        conn = pool.take()
        return None if conn is None else Launched(pool, conn, conn.send(pool.request(target, body)), proxy)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class Launched:
    """A request written on a pooled socket, its reply still to come (``PooledTransport.launch``)."""

    __slots__ = ("_conn", "_pool", "_proxy", "_sent")

    def __init__(self, pool: _Pool, conn: _Connection, sent: asyncio.Future[Reply], proxy: Proxy | None) -> None:
        self._pool, self._conn, self._sent, self._proxy = pool, conn, sent, proxy

    async def reply(self) -> Reply:
        """The reply (as ``post`` returns it); the socket goes back to the pool, or is closed
        when the exchange did not end cleanly (a timeout's cancellation included)."""
        pool, conn, proxy = self._pool, self._conn, self._proxy
        reuse = refused = False
        try:
            reply = await conn.reply(self._sent)
            refused = pool.absolute and reply.status in _REFUSALS  # (Tencent answers its errors with HTTP 200)
            reuse = conn.keep_alive and not refused  # (squid keeps a socket it refused us on: we do not)
        finally:
            pool.release(conn, reuse=reuse)
        if refused and proxy is not None:
            raise ProxyRefused(proxy, reply.status)
        return _decoded(reply)

    def abandon(self) -> None:
        """Nobody will read the reply (its caller went away): the socket is closed."""
        self._sent.cancel()
        self._pool.release(self._conn, reuse=False)


def _codings(value: bytes) -> list[bytes]:
    """A Content-Encoding or Transfer-Encoding list, in the order they were applied."""
    return [c for c in (part.strip().lower() for part in value.split(b",")) if c and c != b"identity"]


_WBITS = {b"gzip": 47, b"x-gzip": 47, b"deflate": 15}  # (47: a gzip or zlib header, read either way)


def _decoded(reply: Reply) -> Reply:
    """The reply with its body's codings undone, last applied first: transfer codings other than
    chunked (llhttp undid that), then content codings (servers may compress regardless); gzip
    and deflate, to at most ``MAX_REPLY_BYTES``: a few kilobytes of gzip inflate to gigabytes."""
    codings = [c for k, v in reply.headers if k.lower() == b"content-encoding" for c in _codings(v)]
    codings += [c for k, v in reply.headers if k.lower() == b"transfer-encoding" for c in _codings(v)]
    codings = [c for c in codings if c != b"chunked"]
    if not codings:
        return reply
    content = reply.content
    for coding in reversed(codings):
        content = _inflated(content, coding)
    return reply._replace(content=content)


def _inflated(content: bytes, coding: bytes) -> bytes:
    name = coding.decode("latin-1")
    if coding not in _WBITS:
        raise httpx.RemoteProtocolError(f"unsupported coding {name}")
    inflate = zlib.decompressobj(_WBITS[coding])
    try:
        out = inflate.decompress(content, MAX_REPLY_BYTES)
    except zlib.error as exc:
        raise httpx.RemoteProtocolError(f"bad {name} body") from exc
    if inflate.unconsumed_tail:
        raise httpx.RemoteProtocolError(f"{name} body inflates past {MAX_REPLY_BYTES} bytes")
    if not inflate.eof:
        raise httpx.RemoteProtocolError(f"truncated {name} body")
    return out
