"""Which transport should the gateway's upstream httpx client use? Measured side by side.

Each client sends get_room_info calls to the emulator (a separate process) at 1, 32 and 64
requests in flight; rounds are interleaved and the median of the rounds is printed, with each
client's ratio to raw aiohttp (the ceiling for a Python client here).

    python bench/upstream_transport.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from TLSSigAPIv2 import TLSSigAPIv2
from yarl import URL

from bench._harness import GATEWAY, free_port, median, process
from gateway.transport import OnTime, PooledTransport, Proxy, Reply, TooLate


class AiohttpTransport(httpx.AsyncBaseTransport):
    """The gateway's transport until 2026-11-22 (an httpx transport over aiohttp's pool), kept
    here as a point of comparison."""

    def __init__(self, *, connections: int) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in ("host", "content-length")]
        async with self._session.request(
            request.method, str(request.url), data=request.content, headers=headers, allow_redirects=False
        ) as response:
            content = await response.read()
            raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
            return httpx.Response(status_code=response.status, headers=raw, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


KEY = "bench-secret-key"
APP = 1400000001


def _url(port: int) -> str:
    sig = TLSSigAPIv2(APP, KEY).gen_sig("administrator", 86400)
    return (
        f"http://127.0.0.1:{port}/v4/live_engine_http_srv/get_room_info?sdkappid={APP}"
        f"&identifier=administrator&usersig={sig}&random=1&contenttype=json"
    )


BODY = b'{"RoomId":"room-1"}'
HEADERS = {"content-type": "application/json"}


Rate = tuple[float, float]  # (calls a second, this process's CPU µs a call: the emulator's excluded)


async def _drive(call: Callable[[], Awaitable[None]], inflight: int, seconds: float) -> Rate:
    done = 0
    end = time.perf_counter() + seconds
    cpu = time.process_time()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - start), (time.process_time() - cpu) * 1e6 / max(done, 1)


def _send_window_trace(on: str = "connection") -> aiohttp.TraceConfig:
    """The budget's "ask the send window once a connection is ready, right before the write" on
    aiohttp's client: its connection signals fire after a pooled or new connection is acquired,
    before ``ClientRequest.send``; a "no" raises there, so nothing is written. (On Python < 3.12
    ``send`` writes the body from a task the loop runs later, not in the same step: see README.)
    A "no" there drops the socket from the connector's books without closing or pooling it (aiohttp
    3.14, ``_release_acquired``): it stays open, unused. ``on="headers"`` asks on
    ``on_request_headers_sent`` instead (in ``send``, before the headers are buffered): a "no"
    there closes the socket (the session closes the connection on any error in ``send``)."""

    async def ask(session: aiohttp.ClientSession, context: object, params: object) -> None:
        on_time = getattr(context, "trace_request_ctx", None)
        if on_time is not None and not on_time():
            raise TooLate

    trace = aiohttp.TraceConfig()
    if on == "headers":
        trace.on_request_headers_sent.append(ask)
    else:
        trace.on_connection_reuseconn.append(ask)
        trace.on_connection_create_end.append(ask)
    return trace


class AiohttpSender:
    """The gateway's ``Sender`` (``gateway.transport``) on aiohttp's client, for bench.forwarding
    (``BENCH_SENDER=aiohttp`` in bench.apps): one ``ClientSession`` per origin, keep-alive, at
    most ``connections`` sockets, the send window asked by ``_send_window_trace(check)``, or not
    asked at all with ``check=None`` (a reference: aiohttp's cost without the check). Direct origins
    only; no ``launch`` (aiohttp cannot write with nothing awaited), so every call is ``post``ed."""

    def __init__(self, *, connections: int, check: str | None = "connection") -> None:
        self._connections, self._check = connections, check
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        assert proxy is None, "bench sender: direct origins only"
        session = self._sessions.get(origin)
        if session is None:
            session = self._sessions[origin] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None),  # (the caller's asyncio.timeout, as for the transport)
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=[] if self._check is None else [_send_window_trace(self._check)],
            )
        try:
            async with session.post(
                URL(origin + target, encoded=True),
                data=body,
                headers=HEADERS,
                trace_request_ctx=on_time,
                allow_redirects=False,
            ) as response:
                return Reply(response.status, list(response.raw_headers), await response.read())
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def _httpx(client: httpx.AsyncClient, url: str, inflight: int, seconds: float) -> Rate:
    async def call() -> None:
        response = await client.post(url, content=BODY, headers=HEADERS)
        assert response.status_code == 200

    return await _drive(call, inflight, seconds)


async def measure(port: int, inflight: int, seconds: float) -> dict[str, Rate]:
    url = _url(port)
    results: dict[str, Rate] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def raw() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()

        results["aiohttp (raw)"] = await _drive(raw, inflight, seconds)
    traced = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), trace_configs=[_send_window_trace()])
    async with traced:

        async def windowed() -> None:
            send_by = time.monotonic() + 60  # the budget's question, asked before the write
            async with traced.post(
                url, data=BODY, headers=HEADERS, trace_request_ctx=lambda: time.monotonic() <= send_by
            ) as response:
                await response.read()

        results["aiohttp + send-window trace"] = await _drive(windowed, inflight, seconds)
    clients = {
        "httpx default pool": httpx.AsyncClient(),
        "httpx pool 256": httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)),
        "httpx.AsyncClient + AiohttpTransport": httpx.AsyncClient(transport=AiohttpTransport(connections=256)),
    }
    for name, client in clients.items():
        async with client:
            results[name] = await _httpx(client, url, inflight, seconds)
    transport = AiohttpTransport(connections=256)

    async def direct() -> None:
        response = await transport.handle_async_request(httpx.Request("POST", url, content=BODY, headers=HEADERS))
        assert response.status_code == 200

    results["httpx.Request -> AiohttpTransport (until 11-22)"] = await _drive(direct, inflight, seconds)
    await transport.aclose()
    pooled = PooledTransport(connections=256)
    origin, target = url.split("/v4/", 1)

    async def post() -> None:
        send_by = time.monotonic() + 60  # as in aiohttp's row
        reply = await pooled.post(origin, "/v4/" + target, BODY, lambda: time.monotonic() <= send_by)
        assert reply.status == 200

    results["PooledTransport.post (the gateway)"] = await _drive(post, inflight, seconds)
    await pooled.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    cmd = [*GATEWAY, "emulator", "--port", str(port), "--no-rate-limit", "--rooms", "1"]
    with process(cmd, port=port, env={"EMULATOR_SECRET_KEY": KEY}):
        for inflight in (1, 32, 64):
            rounds = [asyncio.run(measure(port, inflight, args.seconds)) for _ in range(args.rounds)]
            base = median([r["aiohttp (raw)"][0] for r in rounds])
            print(f"\n{inflight} in flight (median of {args.rounds} rounds of {args.seconds:g} s)")
            for name in rounds[0]:
                value, cpu = median([r[name][0] for r in rounds]), median([r[name][1] for r in rounds])
                print(f"  {name:50s} {value:8.0f} req/s   {value / base:5.2f} x raw aiohttp   {cpu:6.0f} µs CPU/call")


if __name__ == "__main__":
    main()
