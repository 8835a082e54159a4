"""Overload (overload.py, admission.py): the event loop's lag measured, new API work shed past a
bound, readiness false when it lasts, and recovery; the bound on requests in flight, refused by the
server before the app runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway import admission
from gateway.overload import ACCEPT_QUEUE, HOLD, Overload
from live_engine_emulator import Emulator
from tests.fleet import behind_slow_tencent
from tests.support import TOKENS, Gateway, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"


def raw_get(path: str = ROOM, *, no_cache: bool = False) -> bytes:
    """A whole GET request as the read-write caller sends it, to write on a socket of one's own."""
    fresh = "Cache-Control: no-cache\r\n" if no_cache else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['rw']}\r\n{fresh}\r\n".encode()


def test_shedding_starts_past_the_bound_and_stops_under_half_of_it() -> None:
    """Two samples in a row past ``shed_at`` start shedding (one is a stall that has passed);
    it goes on until a sample is under half of the bound."""
    overload = Overload(shed_at=0.2, unready_after=1.0)
    overload.sample(0.15, now=0.0)
    overload.sample(0.9, now=0.9)
    overload.sample(0.0, now=0.95)
    assert not overload.shedding
    overload.sample(0.25, now=1.0)
    assert not overload.shedding
    overload.sample(0.25, now=1.3)
    assert overload.shedding
    overload.sample(0.15, now=1.1)
    assert overload.shedding
    overload.sample(0.05, now=1.2)
    assert not overload.shedding


def test_readiness_turns_false_only_when_shedding_lasts() -> None:
    """Shedding for ``unready_after`` seconds in a row makes the replica unready; recovery undoes it."""
    overload = Overload(shed_at=0.2, unready_after=1.0, over=1)
    overload.sample(0.5, now=10.0)
    assert overload.ready(10.5)
    assert not overload.ready(11.0)
    overload.sample(0.0, now=11.5)
    assert overload.ready(11.5)


def test_a_zero_bound_never_sheds() -> None:
    """GATEWAY_OVERLOAD_LAG=0 switches shedding off; the lag is still measured."""
    overload = Overload(shed_at=0.0, unready_after=1.0)
    overload.sample(5.0, now=0.0)
    assert overload.lag == 5.0
    assert not overload.shedding


def test_the_in_flight_bound_refuses_api_work_only() -> None:
    """At ``max_in_flight`` API requests in flight a new one is refused (``in_flight``; ``lag``
    while shedding), each refusal counted by its reason; health, metrics and Tencent's callbacks
    are never refused, and a bound of 0 refuses nothing."""
    overload = Overload(shed_at=0.2, unready_after=1.0, max_in_flight=2, over=1)
    room = "/v1/tenants/acme/rooms/room-1"
    overload.in_flight = 1
    assert overload.refusal(room) is None
    overload.in_flight = 2
    assert overload.refusal(room) == "in_flight"
    assert [overload.refusal(p) for p in ("/readyz", "/livez", "/metrics", "/v1/callbacks/tencent")] == [None] * 4
    overload.sample(0.5, now=0.0)
    assert overload.refusal("/v1/tenants/acme/events") == "lag"
    assert overload.shed == {"lag": 1, "in_flight": 1, "accept_queue": 0}
    unbounded = Overload(shed_at=0.0, unready_after=1.0, max_in_flight=0)
    unbounded.in_flight = 10**6
    assert unbounded.refusal(room) is None


def test_a_deep_accept_queue_turns_api_work_away_until_it_drains() -> None:
    """A sample with more than ``accept_queue`` connections waiting to be accepted starts turning
    API work away (``accept_queue``: new connections' requests and kept-alive ones alike; health
    and callbacks never); it goes on until the queue is down to a quarter of the bound. The replica
    counts as overloaded meanwhile and for HOLD seconds after the queue was last deep (a replica
    that drains its queue in bursts is overloaded throughout), so that it turns unready after
    ``unready_after``; a bound of 0 refuses nothing."""
    overload = Overload(shed_at=0.25, unready_after=1.0, accept_queue=128)
    room = "/v1/tenants/acme/rooms/room-1"
    overload.pending = 128
    overload.sample(0.0, now=10.0)
    assert not overload.turning_away
    assert overload.refusal(room) is None
    overload.pending = 129
    overload.sample(0.0, now=10.05)
    assert (overload.turning_away, overload.overloaded) == (True, True)
    assert overload.refusal(room) == "accept_queue"
    assert overload.refusal("/readyz") is None
    overload.pending = 33
    overload.sample(0.0, now=10.1)
    assert overload.turning_away
    overload.pending = 32
    overload.sample(0.0, now=10.15)
    assert not overload.turning_away
    assert overload.refusal(room) is None
    assert overload.overloaded  # (held: the queue was deep 0.1 s ago)
    overload.pending = 500
    overload.sample(0.0, now=10.9)
    overload.pending = 0
    overload.sample(0.0, now=11.0)
    assert not overload.ready(11.05)  # overloaded since 10.05
    overload.sample(0.0, now=11.5)
    assert not overload.ready(11.5)  # (held: the queue was deep at 10.9)
    overload.sample(0.0, now=10.9 + HOLD)
    assert (overload.overloaded, overload.ready(10.9 + HOLD)) == (False, True)
    assert overload.shed == {"lag": 0, "in_flight": 0, "accept_queue": 1}
    never = Overload(shed_at=0.25, unready_after=1.0, accept_queue=0)
    never.pending = 10**4
    never.sample(0.0, now=1.0)
    assert (never.turning_away, never.overloaded, never.refusal(room)) == (False, False, None)


async def test_a_turned_away_connection_that_sends_nothing_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection turned away (``TurnedAway``) whose client sends no request line within
    TURNED_AWAY_FOR is closed: it holds nothing of the replica's for longer."""
    monkeypatch.setattr(admission, "TURNED_AWAY_FOR", 0.05)
    overload = Overload(shed_at=0.25, unready_after=1.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: admission.TurnedAway(asyncio.Protocol, overload, {}), "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing written
        writer.close()
    assert overload.shed["accept_queue"] == 0


def test_the_accept_queue_is_read_from_the_listening_socket() -> None:
    """``pending`` is how many connections the kernel holds for the listeners, not accepted:
    read from a real listening socket's TCP_INFO."""
    overload = Overload(shed_at=0.25, unready_after=1.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        overload.listeners = [listener]
        assert overload.accept_queue() == 0
        clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        try:
            assert overload.accept_queue() == 5
            listener.accept()[0].close()
            assert overload.accept_queue() == 4
        finally:
            for client in clients:
                client.close()


def test_event_streams_do_not_count_in_flight() -> None:
    """An admitted API request counts in flight; an open event stream (hours long, bounded by
    GATEWAY_EVENTS_MAX_SUBSCRIBERS) does not, though a room named ``events`` does; nor do health
    or callbacks."""
    assert Overload.counted("/v1/tenants/acme/rooms/room-1/metadata")
    assert Overload.counted("/v1/tenants/acme/rooms/events")
    assert not Overload.counted("/v1/tenants/acme/events")
    assert not Overload.counted("/readyz")
    assert not Overload.counted("/v1/callbacks/tencent")


async def test_the_monitor_sees_a_blocked_loop() -> None:
    """A loop kept busy for 200 ms shows as lag of about that much."""
    overload = Overload(shed_at=0.1, unready_after=1.0, every=0.01, over=1)
    task = asyncio.create_task(overload.run())
    await asyncio.sleep(0.03)
    time.sleep(0.2)  # noqa: ASYNC251 - the loop busy with work: nothing else runs meanwhile
    await asyncio.sleep(0.001)  # the monitor's overdue timer runs first
    assert overload.shedding
    assert overload.lag > 0.15
    for _ in range(100):  # prompt samples end it (within a second even on a busy machine)
        if not overload.shedding:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert not overload.shedding


@contextlib.asynccontextmanager
async def shedding_by_hand(upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    """A gateway that sheds past 0.25 s of lag (unready after 0.2 s of it), whose lag samples
    are the test's (``Overload.sample``): its monitor never runs."""

    async def by_hand(self: Overload) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Overload, "run", by_hand)
    async with start_gateway(upstream_url, overload_lag=0.25, overload_unready_after=0.2) as gw:
        yield gw


async def test_an_overloaded_replica_sheds_api_work_but_not_health_or_callbacks(
    upstream_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While shedding: API requests get 503 overloaded with Retry-After, on a connection kept
    alive while the replica is ready and closed once it is not, and nothing reaches Tencent;
    /livez, /metrics and Tencent's callbacks still answer; /readyz turns 503 once it lasts; when
    the lag falls, requests are served again and the replica is ready. (The samples are the
    test's: the monitor itself is ``test_the_monitor_sees_a_blocked_loop``'s.)"""

    async with shedding_by_hand(upstream_url, monkeypatch) as gw:
        overload: Overload = gw.app.state.gateway.overload
        loop = asyncio.get_running_loop()
        overload.sample(1.0, loop.time())
        overload.sample(1.0, loop.time())
        shed = await gw.client.get(ROOM, headers={"cache-control": "no-cache"})
        assert shed.status_code == 503
        assert shed.json()["code"] == "overloaded"
        assert shed.headers["retry-after"] == "1"
        assert "connection" not in shed.headers  # (kept alive: a refusal closed costs an accept)
        assert (await gw.client.get("/livez")).status_code == 200
        callback = await gw.client.post("/v1/callbacks/tencent?SdkAppid=1&CallbackCommand=x&Sign=x&RequestTime=1")
        assert callback.status_code != 503
        assert emulator.calls["get_room_info"] == 0
        assert (await gw.client.get("/readyz")).status_code == 200  # not for long yet
        await asyncio.sleep(0.25)
        ready = await gw.client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (503, "overloaded")
        unready = await gw.client.get(ROOM, headers={"cache-control": "no-cache"})
        assert unready.headers["connection"] == "close"  # the Service sends its next one elsewhere
        overload.sample(0.0, loop.time())
        assert (await gw.client.get(ROOM)).status_code == 200
        assert (await gw.client.get("/readyz")).status_code == 200
        metrics = (await gw.client.get("/metrics")).text
        assert 'gateway_overload_shed_total{reason="lag"} 2.0' in metrics
        assert "gateway_event_loop_lag_seconds" in metrics


async def test_a_replica_at_its_bound_refuses_before_the_app_and_admits_again(
    upstream_url: str, emulator: Emulator
) -> None:
    """At GATEWAY_MAX_IN_FLIGHT API requests in flight, the server answers the next one 503
    problem+json ``overloaded`` with Retry-After and no request id (the app never ran: nothing
    reaches Tencent, no access line), keeping the connection alive; /readyz, /metrics and Tencent's
    callbacks are still served. Once the count falls, requests are admitted, and each leaves the
    count when it finishes."""
    async with start_gateway(upstream_url, max_in_flight=3) as gw:
        overload: Overload = gw.app.state.gateway.overload
        overload.in_flight = 3  # (three requests held, as far as admission can tell)
        refused = await gw.client.get(ROOM, headers={"cache-control": "no-cache"})
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        assert "connection" not in refused.headers
        assert "x-request-id" not in refused.headers
        problem = refused.json()
        assert (problem["code"], problem["status"]) == ("overloaded", 503)
        assert "GATEWAY_MAX_IN_FLIGHT" in problem["detail"]
        assert emulator.calls["get_room_info"] == 0
        assert (await gw.client.get("/readyz")).status_code == 200  # (the bound is met in bursts)
        callback = await gw.client.post("/v1/callbacks/tencent?SdkAppid=1&CallbackCommand=x&Sign=x&RequestTime=1")
        assert callback.status_code == 401
        metrics = (await gw.client.get("/metrics")).text
        assert 'gateway_overload_shed_total{reason="in_flight"} 1.0' in metrics
        assert "gateway_requests_in_flight 3.0" in metrics
        overload.in_flight = 2
        assert (await gw.client.get(ROOM)).status_code == 200
        assert overload.in_flight == 2


async def test_a_refusal_keeps_its_connection_while_ready_and_closes_it_once_unready(
    upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one socket: a refused request leaves the connection open, so the client's next request
    (here pipelined behind it) is read and answered on it, refused again or served once the lag
    falls; once shedding has lasted ``overload_unready_after``, a refusal says ``Connection:
    close`` and the server closes the socket. A client asking to close is closed."""

    async with shedding_by_hand(upstream_url, monkeypatch) as gw:
        overload: Overload = gw.app.state.gateway.overload
        loop = asyncio.get_running_loop()
        await gw.client.get(ROOM)  # (the room cached)
        host, port = gw.url.removeprefix("http://").split(":")
        request = raw_get()
        reader, writer = await asyncio.open_connection(host, int(port))
        overload.sample(1.0, loop.time())
        overload.sample(1.0, loop.time())
        writer.write(request * 2)
        for _ in range(2):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 503")
            await reader.readuntil(b"}")
        overload.sample(0.0, loop.time())
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b"}")
        overload.sample(1.0, loop.time())
        overload.sample(1.0, loop.time())
        await asyncio.sleep(0.25)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert b"connection: close" in head
        await reader.readuntil(b"}")
        assert await reader.read() == b""  # closed by the server
        writer.close()
        overload.sample(0.0, loop.time())
        overload.sample(1.0, loop.time())
        overload.sample(1.0, loop.time())  # (shedding again, ready: only the client's close closes)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert b"connection: close" in await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"}")
        assert await reader.read() == b""
        writer.close()


async def test_a_real_replica_refuses_past_its_bound_at_once_and_keeps_the_admitted_bounded(tmp_path: Path) -> None:
    """`gateway serve` with GATEWAY_MAX_IN_FLIGHT=8, Tencent taking 2 s, offered 32 requests at
    once: 8 are admitted and answered 200 in about Tencent's time; the other 24 are answered 503
    ``overloaded`` before any of those (none waits for a place), the shed counter says so, and
    once the 8 are done the replica admits again."""
    latency = 2.0
    with behind_slow_tencent(tmp_path, latency_ms=int(latency * 1000), drain_seconds=1, max_in_flight=8) as (base, _):
        auth = {"authorization": f"Bearer {TOKENS['rw']}"}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30, limits=limits) as client:
            loop = asyncio.get_running_loop()

            async def timed(n: int) -> tuple[int, float, bytes]:
                start = loop.time()
                reply = await client.get(
                    f"/v1/tenants/acme/rooms/room-{n % 3 + 1}", headers={"cache-control": "no-cache"}
                )
                return reply.status_code, loop.time() - start, reply.content

            answers = await asyncio.gather(*(timed(n) for n in range(32)))
            admitted = [took for status, took, _ in answers if status == 200]
            refused = [(took, body) for status, took, body in answers if status == 503]
            assert (len(admitted), len(refused)) == (8, 24)
            assert max(took for took, _ in refused) < min(admitted)  # refused at once, not after a wait
            assert {json.loads(body)["code"] for _, body in refused} == {"overloaded"}
            assert max(admitted) < 2 * latency  # the admitted did not queue behind the refused
            metrics = (await client.get("/metrics")).text
            assert 'gateway_overload_shed_total{reason="in_flight"} 24.0' in metrics
            assert "gateway_requests_in_flight 0.0" in metrics
            assert (await client.get("/v1/tenants/acme/rooms/room-1")).status_code == 200


async def test_a_real_replica_turns_new_connections_away_while_its_accept_queue_is_deep(tmp_path: Path) -> None:
    """`gateway serve`, paused (as a CPU limit throttles it: SIGSTOP, then SIGCONT) while 150
    connections arrive, each sending a request: once it runs, its monitor reads the listener's
    queue (past 128) before the connections are accepted, so their API requests are answered 503
    problem+json ``overloaded`` (reason ``accept_queue``, ``Connection: close``: no app ran for
    them), while a health check on one of them is served; the replica says it is
    overloaded (its log line names the queue's length) and serves again once the queue is drained.
    (The pause is timed against the monitor's 50 ms; on a busy machine a try can miss, so up to five.)"""
    log = (tmp_path / "gateway.log").open("wb")
    with log, behind_slow_tencent(tmp_path, latency_ms=0, drain_seconds=1, stderr=log.fileno()) as (base, gateway):
        host, port = base.removeprefix("http://").split(":")

        async def answers() -> list[tuple[bytes, bytes]]:
            """Each connection's answer (head, body): ACCEPT_QUEUE + 22 opened, and a request sent
            on each (/livez on the first), while the replica is stopped."""
            os.kill(gateway.pid, signal.SIGSTOP)
            try:
                opened = [await asyncio.open_connection(host, int(port)) for _ in range(ACCEPT_QUEUE + 22)]
                for n, (_, writer) in enumerate(opened):
                    writer.write(raw_get("/livez" if n == 0 else ROOM, no_cache=True))
                await asyncio.sleep(0.06)  # (the monitor's next sample is due when it runs again)
            finally:
                os.kill(gateway.pid, signal.SIGCONT)
            got = []
            for reader, writer in opened:
                head_read = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(head_read.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                got.append((head_read, await reader.readexactly(length)))
                writer.close()
            return got

        for _ in range(5):
            got = await answers()
            turned = [(h, body) for h, body in got if h.startswith(b"HTTP/1.1 503")]
            if turned:
                break
            await asyncio.sleep(1.0)
        assert turned, "no request was turned away in five tries"
        assert got[0][0].startswith(b"HTTP/1.1 200")  # (health is never refused)
        for h, body in turned:
            assert b"connection: close" in h
            assert b"retry-after: 1" in h
            problem = json.loads(body)
            assert (problem["code"], problem["status"]) == ("overloaded", 503)
            assert "accept" in problem["detail"]
        assert all(h.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")) for h, _ in got)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            metrics = (await client.get("/metrics")).text
            assert f'gateway_overload_shed_total{{reason="accept_queue"}} {float(len(turned))}' in metrics
            auth = {"authorization": f"Bearer {TOKENS['rw']}"}
            for _ in range(100):  # (until the monitor's next sample finds the queue drained)
                if (served := await client.get(ROOM, headers=auth)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert served.status_code == 200
    lines = (tmp_path / "gateway.log").read_text().splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(entry.get("msg") == "overloaded" and entry["accept_queue"] > ACCEPT_QUEUE for entry in logged)


async def test_a_request_whose_client_left_before_it_started_is_not_run(tmp_path: Path) -> None:
    """`gateway serve`, paused while a client sends a request (one that would reach Tencent) and
    closes its connection without waiting: once it runs again (its loop late by the pause) it
    reads the request, sees the client gone, and does not run it (nothing reaches Tencent;
    ``gateway_requests_abandoned_total`` counts it); a client that waits is served as usual."""
    with behind_slow_tencent(tmp_path, latency_ms=0, drain_seconds=1) as (base, gateway):
        host, port = base.removeprefix("http://").split(":")
        request = raw_get(no_cache=True)
        os.kill(gateway.pid, signal.SIGSTOP)
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.2)  # (the loop lags by the pause: past LAGGING, it looks)
        finally:
            os.kill(gateway.pid, signal.SIGCONT)

        def calls(metrics: str) -> list[str]:
            return [line for line in metrics.splitlines() if line.startswith("gateway_upstream_calls_total{")]

        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(100):
                metrics = (await client.get("/metrics")).text
                if "gateway_requests_abandoned_total 1.0" in metrics:
                    break
                await asyncio.sleep(0.05)
            assert "gateway_requests_abandoned_total 1.0" in metrics
            assert not calls(metrics)  # (nothing reached Tencent)
            auth = {"authorization": f"Bearer {TOKENS['rw']}"}
            assert (await client.get(ROOM, headers=auth)).status_code == 200
            assert calls((await client.get("/metrics")).text)
