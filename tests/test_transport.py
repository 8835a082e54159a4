"""The upstream HTTP/1.1 client against a scripted server over real loopback sockets, on both
event loops the gateway runs on (asyncio's and uvloop's): replies of every framing, keep-alive
reuse, the pool's bound, and every failure as the httpx error ``Upstream`` maps."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NamedTuple

import httpx
import pytest
import trustme
import uvloop

from gateway.transport import MAX_REPLY_BYTES, PooledTransport, Sender, TooLate

Reply = Callable[[bytes], bytes | None]  # request body -> raw reply bytes (None: close at once)
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": 1}\r\n'


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def run(kind: str, main: Callable[[], Awaitable[None]]) -> None:
    if kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


class Server:
    """Reads each request (head and Content-Length body) and answers with ``reply(body)``."""

    def __init__(self, reply: Reply, *, close_after: bool = False, dribble: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.dribble = dribble  # write the reply a byte at a time, each in its own segment
        self.connections = 0
        self.requests: list[bytes] = []
        self.origin = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            self.requests.append(head + body)
            answer = self.reply(body)
            if answer is None:
                return
            for piece in [answer[i : i + 1] for i in range(len(answer))] if self.dribble else [answer]:
                writer.write(piece)
                await writer.drain()
                if self.dribble:
                    await asyncio.sleep(0)
            if self.close_after:
                return


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def listen(handle: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve ``handle`` on a free loopback port (over TLS with ``tls``); on exit close every
    connection and wait for every handler, so nothing outlives the event loop."""
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=tls)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    finally:
        listener.close()
        for writer in writers:
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


@asynccontextmanager
async def serving(reply: Reply, *, close_after: bool = False, dribble: bool = False) -> AsyncIterator[Server]:
    server = Server(reply, close_after=close_after, dribble=dribble)
    async with listen(server.handle) as origin:
        server.origin = origin
        yield server


def test_posts_and_reuses_one_connection(loop_kind: str) -> None:
    """Sequential calls share one keep-alive socket; the request carries Host, the JSON content
    type and the exact Content-Length."""

    async def main() -> None:
        async with serving(lambda body: OK) as server:
            transport = PooledTransport(connections=8)
            for _ in range(3):
                reply = await transport.post(server.origin, "/v4/x?a=1", b'{"RoomId":"r"}')
                assert (reply.status, reply.content) == (200, b'{"ok": 1}\r\n')
            assert server.connections == 1
            assert transport.open_connections == 1
            first = server.requests[0].decode()
            assert first.startswith("POST /v4/x?a=1 HTTP/1.1\r\n")
            assert f"Host: {server.origin.removeprefix('http://')}\r\n" in first
            assert "Content-Type: application/json\r\nAccept: application/json\r\n" in first
            assert "Content-Length: 14\r\n\r\n{" in first
            await transport.aclose()
            assert transport.open_connections == 0

    run(loop_kind, main)


def test_a_call_past_its_moment_writes_nothing(loop_kind: str) -> None:
    """``on_time`` is asked once the socket is ready (after the connect), right before the
    write; when it says no, not a byte is sent, TooLate is raised and the socket kept for reuse."""

    async def main() -> None:
        async with serving(lambda body: OK) as server:
            transport = PooledTransport(connections=8)
            asked_with_open: list[int] = []

            def too_late() -> bool:
                asked_with_open.append(transport.open_connections)
                return False

            with pytest.raises(TooLate):
                await transport.post(server.origin, "/v4/x", b"{}", on_time=too_late)
            assert asked_with_open == [1]  # the connect was done before the question
            await asyncio.sleep(0.05)
            assert server.requests == []
            reply = await transport.post(server.origin, "/v4/x", b"{}", on_time=lambda: True)
            assert reply.status == 200
            assert (server.connections, len(server.requests), transport.open_connections) == (1, 1, 1)
            await transport.aclose()

    run(loop_kind, main)


class Framing(NamedTuple):
    raw: bytes  # the reply on the wire
    content: bytes  # its body as the caller gets it
    closes: bool = False  # the server closes the connection after it (close-delimited bodies)


_GZ, _ZL = gzip.compress(b'{"z": 1}'), zlib.compress(b'{"d": 1}')
# Every way RFC 9112 lets a server frame a reply (§6), one per case; the proxy tests send them
# through tinyproxy and squid too (FRAMINGS is imported there).
FRAMINGS = {
    "content-length": Framing(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}', b'{"a": 1}'),
    "chunked": Framing(
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n',
        b'{"a": 1}',
    ),
    "chunked-extensions-trailers": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Digest\r\n\r\n"
        b'4;name=value\r\n{"a"\r\n4 ;q="x y"\r\n: 1}\r\n0;last\r\nX-Digest: abc\r\nX-More: 1\r\n\r\n',
        b'{"a": 1}',
    ),
    "close-delimited-1.0": Framing(
        b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"eof": 1}', b'{"eof": 1}', True
    ),
    "close-delimited-1.1": Framing(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"eof": 1}', b'{"eof": 1}', True),
    "http-1.0-content-length": Framing(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"{}", True),
    "interim-100": Framing(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"{}"),
    "interim-102-103": Framing(
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"{}",
    ),
    "gzip": Framing(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(_GZ), _GZ), b'{"z": 1}'
    ),
    "deflate": Framing(
        b"HTTP/1.1 200 OK\r\ncontent-encoding: DEFLATE\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(_ZL), _ZL),
        b'{"d": 1}',
    ),
    "odd-header-case-and-spacing": Framing(
        b"HTTP/1.1 200 OK\r\ncontent-LENGTH:   2  \r\nX-Empty:\r\nSERVER:\tx\r\n\r\n{}", b"{}"
    ),
    "obs-fold": Framing(b"HTTP/1.1 200 OK\r\nX-Folded: one,\r\n two\r\nContent-Length: 2\r\n\r\n{}", b"{}"),
    "transfer-coding-gzip-chunked": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(_GZ), _GZ),
        b'{"z": 1}',
    ),
    "transfer-coding-gzip-close-delimited": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n%s" % _GZ, b'{"z": 1}', True
    ),
}


@pytest.mark.parametrize("dribble", [False, True], ids=["whole", "dribbled"])
@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_reply_framings(loop_kind: str, framing: Framing, dribble: bool) -> None:
    """Every framing RFC 9112 allows arrives whole, sent in one piece or a byte at a time, twice
    in a row: a kept-alive socket is reused, a close-delimited one is not."""

    async def main() -> None:
        async with serving(lambda body: framing.raw, close_after=framing.closes, dribble=dribble) as server:
            transport = PooledTransport(connections=2)
            for _ in range(2):
                reply = await transport.post(server.origin, "/", b"{}")
                assert (reply.status, reply.content) == (200, framing.content)
            assert server.connections == (2 if framing.closes else 1)
            await transport.aclose()

    run(loop_kind, main)


def test_a_reply_sent_before_our_body_was_read_is_read(loop_kind: str) -> None:
    """A server that answers from the request head, closes with our body unread (so the kernel
    resets the connection) and frames its reply by that close, as tinyproxy does with wrong
    credentials, is read like any close-delimited reply."""
    raw = b"HTTP/1.0 401 Unauthorized\r\nConnection: close\r\n\r\n<html>no</html>\n"

    async def main() -> None:
        async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
            await asyncio.sleep(0.05)  # our body has arrived by now, unread: the close resets

        async with listen(early) as origin:
            transport = PooledTransport(connections=1)
            reply = await transport.post(origin, "/", b'{"big": "' + b"x" * 4096 + b'"}')
            assert (reply.status, reply.content) == (401, b"<html>no</html>\n")
            assert transport.open_connections == 0
            await transport.aclose()

    run(loop_kind, main)


def test_body_until_the_connection_closes(loop_kind: str) -> None:
    """A reply with neither Content-Length nor chunking ends where the connection does, and that
    socket is not reused."""
    raw = b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"eof": true}'

    async def main() -> None:
        async with serving(lambda body: raw, close_after=True) as server:
            transport = PooledTransport(connections=2)
            for _ in range(2):
                result = await transport.post(server.origin, "/", b"{}")
                assert result.content == b'{"eof": true}'
            assert transport.open_connections == 0
            await transport.aclose()

    run(loop_kind, main)


def test_failures_are_httpx_errors_and_close_the_socket(loop_kind: str) -> None:
    """A refused connection is a ConnectError; a connection dropped mid-exchange or a reply llhttp
    rejects is a RemoteProtocolError; neither socket stays in the pool."""

    async def main() -> None:
        transport = PooledTransport(connections=2)
        async with serving(lambda body: OK) as server:
            origin = server.origin
        with pytest.raises(httpx.ConnectError):
            await transport.post(origin, "/", b"{}")
        async with serving(lambda body: None) as server:
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.post(server.origin, "/", b"{}")
        short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"
        async with serving(lambda body: short, close_after=True) as server:
            with pytest.raises(httpx.RemoteProtocolError):  # two bytes of five, then the close
                await transport.post(server.origin, "/", b"{}")
        async with serving(lambda body: b"NOT HTTP AT ALL\r\n\r\n") as server:
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.post(server.origin, "/", b"{}")
        assert transport.open_connections == 0
        await transport.aclose()

    run(loop_kind, main)


def test_a_cancelled_call_closes_its_socket(loop_kind: str) -> None:
    """A call cut off by its deadline closes the socket (the late reply must not reach the next
    call) and the pool opens a fresh one."""

    async def main() -> None:
        slow = True

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal slow
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                if slow:
                    slow = False
                    await asyncio.sleep(0.2)
                writer.write(OK)

        async with listen(handle) as origin:
            transport = PooledTransport(connections=2)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await transport.post(origin, "/", b"{}")
            assert transport.open_connections == 0
            reply = await transport.post(origin, "/", b"{}")
            assert reply.content == b'{"ok": 1}\r\n'
            await transport.aclose()

    run(loop_kind, main)


def test_the_pool_never_opens_more_than_its_limit(loop_kind: str) -> None:
    """50 concurrent calls through a pool of 4 use at most 4 sockets and all succeed."""

    async def main() -> None:
        async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal peak, live
            live += 1
            peak = max(peak, live)
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(2)
                    await asyncio.sleep(0.005)
                    writer.write(OK)
            finally:
                live -= 1

        peak = live = 0
        async with listen(slow_ok) as origin:
            transport = PooledTransport(connections=4)
            replies = await asyncio.gather(*(transport.post(origin, "/", b"{}") for _ in range(50)))
            assert all(r.status == 200 for r in replies)
            assert peak <= 4
            assert transport.open_connections <= 4
            await transport.aclose()

    run(loop_kind, main)


def test_an_idle_socket_the_server_closed_is_not_reused(loop_kind: str) -> None:
    """When the server closes a kept-alive socket between calls, the next call opens a new one
    instead of failing on the dead one."""

    async def main() -> None:
        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(OK)
            await writer.drain()
            writer.close()  # keep-alive advertised, then closed anyway

        async with listen(once) as origin:
            transport = PooledTransport(connections=2)
            await transport.post(origin, "/", b"{}")
            await asyncio.sleep(0.05)
            reply = await transport.post(origin, "/", b"{}")
            assert reply.status == 200
            await transport.aclose()

    run(loop_kind, main)


def test_an_idle_socket_closed_unnoticed_is_found_before_the_write(loop_kind: str) -> None:
    """A kept-alive socket the server closed while the event loop was busy (its FIN not yet read
    by the loop) is found dead before anything is written to it: the call goes out once, on a
    new socket, and the send window is asked again for that one."""
    requests: list[bytes] = []
    close_now = threading.Event()

    def serve(listener: socket.socket) -> None:  # a thread: it closes while the loop is blocked
        listener.settimeout(5)
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                requests.append(conn.recv(65536))
                conn.sendall(OK)
                close_now.wait(5)

    async def main() -> None:
        transport = PooledTransport(connections=2)
        await transport.post(origin, "/", b"{}")
        close_now.set()
        time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop on purpose: the FIN arrives unread
        assert [conn.closed for conn in transport._pool(origin)._idle] == [False]
        asked: list[int] = []
        reply = await transport.post(origin, "/", b"{}", on_time=lambda: not asked.append(1))
        assert (reply.status, len(asked), len(requests)) == (200, 1, 2)
        await transport.aclose()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        origin = f"http://127.0.0.1:{listener.getsockname()[1]}"
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        try:
            run(loop_kind, main)
        finally:
            close_now.set()
            thread.join(5)


def test_a_request_lost_after_its_write_is_not_sent_again(loop_kind: str) -> None:
    """A connection that dies after the request was written fails the call (RemoteProtocolError):
    the request may have reached the server, so the transport never sends it a second time."""
    answers = iter([OK, None])

    async def main() -> None:
        async with serving(lambda body: next(answers)) as server:
            transport = PooledTransport(connections=2)
            await transport.post(server.origin, "/", b"{}")
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.post(server.origin, "/", b"{}", on_time=lambda: True)
            assert (server.connections, len(server.requests)) == (1, 2)
            assert transport.open_connections == 0
            await transport.aclose()

    run(loop_kind, main)


def test_a_socket_that_died_idle_behind_others_is_swept(loop_kind: str) -> None:
    """Of two idle sockets, the older one closed by the server is dropped when the newer one is
    released (one sweep per release), so the pool does not count dead sockets as open."""

    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def slow_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                await asyncio.sleep(0.01)
                writer.write(OK)

        async with listen(slow_ok) as origin:
            transport = PooledTransport(connections=2)
            await asyncio.gather(*(transport.post(origin, "/", b"{}") for _ in range(2)))
            idle = transport._pool(origin)._idle
            assert len(idle) == 2
            assert idle[0].transport is not None
            older = idle[0].transport.get_extra_info("sockname")
            next(w for w in writers if w.get_extra_info("peername") == older).close()
            await asyncio.sleep(0.05)
            assert idle[0].closed
            await transport.post(origin, "/", b"{}")
            assert (len(idle), transport.open_connections) == (1, 1)
            await transport.aclose()

    run(loop_kind, main)


def test_a_closed_connection_writes_nothing() -> None:
    """An exchange on a connection already closed fails at once (a write there would wait for a
    reply that cannot come), and a URL that is not http(s) is refused before any socket."""

    async def main() -> None:
        async with serving(lambda body: OK) as server:
            transport = PooledTransport(connections=1)
            pool = transport._pool(server.origin)
            conn = await pool.acquire()
            conn.close()
            with pytest.raises(httpx.RemoteProtocolError, match="connection closed"):
                conn.send(b"POST / HTTP/1.1\r\n\r\n")
            pool.release(conn, reuse=False)
            with pytest.raises(ValueError, match="not an http"):
                await transport.post("ftp://127.0.0.1", "/", b"{}")
            await transport.aclose()
        assert server.requests == []

    asyncio.run(main())


def test_it_is_the_upstream_seam() -> None:
    """The production transport implements the ``Sender`` seam that ``Upstream`` calls (and the
    tests' scripted Tencent implements too): ``post`` and ``aclose``, nothing httpx-shaped."""
    sender: Sender = PooledTransport(connections=1)  # mypy checks the protocol here
    assert callable(sender.post)
    assert callable(sender.aclose)


def _gzip_reply(payload: bytes, encoding: bytes = b"gzip", *, cut: int = 0) -> bytes:
    """A framed reply with ``payload`` compressed, less the last ``cut`` bytes of the stream."""
    body = gzip.compress(payload) if encoding == b"gzip" else zlib.compress(payload)
    body = body[: len(body) - cut]
    return b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (encoding, len(body), body)


def test_deflate_bodies_are_decoded(loop_kind: str) -> None:
    """A zlib-wrapped deflate body (RFC 9110's "deflate") arrives decoded."""

    async def main() -> None:
        async with serving(lambda body: _gzip_reply(b'{"d": 1}', b"deflate")) as server:
            transport = PooledTransport(connections=1)
            assert (await transport.post(server.origin, "/", b"{}")).content == b'{"d": 1}'
            await transport.aclose()

    run(loop_kind, main)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_gzip_reply(b"0" * (MAX_REPLY_BYTES + 1)), "inflates past"),
        (_gzip_reply(b'{"a": 1}', cut=6), "truncated gzip"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", "unsupported coding br"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}", "bad gzip body"),
    ],
    ids=["gzip-bomb", "truncated", "unknown-encoding", "not-gzip"],
)
def test_bodies_that_cannot_be_decoded_are_protocol_errors(loop_kind: str, raw: bytes, reason: str) -> None:
    """A gzip body that inflates past MAX_REPLY_BYTES (here 8 KiB on the wire), a truncated one, an
    encoding we never asked for and a body that is not gzip at all are each a RemoteProtocolError."""

    async def main() -> None:
        async with serving(lambda body: raw) as server:
            transport = PooledTransport(connections=1)
            with pytest.raises(httpx.RemoteProtocolError, match=reason):
                await transport.post(server.origin, "/", b"{}")
            await transport.aclose()

    assert len(raw) < 16 * 1024
    run(loop_kind, main)


def test_a_reply_over_the_size_cap_is_refused_and_its_socket_closed(loop_kind: str) -> None:
    """A body longer than MAX_REPLY_BYTES is refused as it arrives (not buffered whole), and the
    socket that carried it is not kept."""
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_REPLY_BYTES + 1) + b"x" * (MAX_REPLY_BYTES + 1)

    async def main() -> None:
        async with serving(lambda body: huge) as server:
            transport = PooledTransport(connections=1)
            with pytest.raises(httpx.RemoteProtocolError, match="reply over"):
                await transport.post(server.origin, "/", b"{}")
            assert transport.open_connections == 0
            await transport.aclose()

    run(loop_kind, main)


def test_an_idle_socket_past_the_keepalive_is_not_reused(loop_kind: str) -> None:
    """A socket idle for longer than ``keepalive`` is closed, not reused: the next call opens a
    new one (servers drop idle sockets; reusing one they dropped would fail the call)."""

    async def main() -> None:
        async with serving(lambda body: OK) as server:
            transport = PooledTransport(connections=2, keepalive=0.05)
            await transport.post(server.origin, "/", b"{}")
            await transport.post(server.origin, "/", b"{}")
            assert server.connections == 1
            await asyncio.sleep(0.1)
            await transport.post(server.origin, "/", b"{}")
            assert server.connections == 2
            assert transport.open_connections == 1
            await transport.aclose()

    run(loop_kind, main)


def test_a_call_cancelled_while_queued_for_a_socket_leaves_the_pool_whole(loop_kind: str) -> None:
    """With every socket busy, a queued call that is cancelled leaves its place; a call that was
    woken (a socket came free) and cancelled before it ran passes the wake-up on, so the call
    behind it still gets the socket instead of waiting forever."""

    async def main() -> None:
        async with serving(lambda body: OK) as server:
            transport = PooledTransport(connections=1)
            pool = transport._pool(server.origin)
            busy = await pool.acquire()  # the pool's one socket, in use
            queued = asyncio.create_task(pool.acquire())
            woken = asyncio.create_task(pool.acquire())
            last = asyncio.create_task(pool.acquire())
            await asyncio.sleep(0.01)
            queued.cancel()  # cancelled while waiting: it leaves the queue
            with pytest.raises(asyncio.CancelledError):
                await queued
            pool.release(busy, reuse=True)  # wakes `woken` ...
            woken.cancel()  # ... which is cancelled before it runs: the wake-up must reach `last`
            with pytest.raises(asyncio.CancelledError):
                await woken
            async with asyncio.timeout(2):
                conn = await last
            assert conn is busy
            pool.release(conn, reuse=True)
            assert transport.open_connections == 1
            await transport.aclose()

    run(loop_kind, main)


def test_https_verifies_the_server_and_speaks_tls(loop_kind: str) -> None:
    """An https origin: TLS with the server's certificate checked against the CA and the host
    name (a certificate for another name fails as a ConnectError); replies arrive as over http."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def main() -> None:
        server = Server(lambda body: OK)
        async with listen(server.handle, server_tls) as origin:
            port = origin.rsplit(":", 1)[1]
            transport = PooledTransport(connections=2, tls=client_tls)
            reply = await transport.post(f"https://localhost:{port}", "/v4/tls", b"{}")
            assert (reply.status, reply.content) == (200, b'{"ok": 1}\r\n')
            assert f"Host: localhost:{port}\r\n".encode() in server.requests[0]
            with pytest.raises(httpx.ConnectError):  # the certificate names localhost, not 127.0.0.1
                await transport.post(origin, "/v4/tls", b"{}")
            await transport.aclose()

    run(loop_kind, main)
