"""Room events for services (SPEC §9): accepted callbacks published to the tenant's event stream,
served as Server-Sent Events, resumable with Last-Event-ID; in one process (embedded mode)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.budget import Share
from gateway.catalogue.operations import DOCUMENTED
from gateway.cli import default_commands
from live_engine_emulator import Emulator
from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.sse import subscribe
from tests.support import CALLBACK_TOKEN, TOKENS, Gateway, start_gateway
from tests.test_callbacks import signed, update_body

EVENTS = "/v1/tenants/acme/events"
LISTENER = {"authorization": f"Bearer {TOKENS['ev']}"}


async def callback(gateway: Gateway, command: str, body: dict[str, Any], *, url: str | None = None) -> None:
    response = await gateway.client.post(
        url or signed(command), content=json.dumps(body), headers={"authorization": ""}
    )
    assert response.status_code == 200, response.text


def destroyed(room: str, when: int) -> dict[str, Any]:
    return {"RoomId": room, "EventTime": when, "EventType": "DestroyByUser", "Operator_Account": 144115212345}


async def test_an_accepted_callback_reaches_a_subscriber(upstream_url: str) -> None:
    """The event carries an id, the command, the room, the event time and Tencent's body as the
    payload (a numeric account and unknown fields left as Tencent sent them)."""
    async with start_gateway(upstream_url) as gateway, subscribe(gateway.client, EVENTS, LISTENER) as stream:
        body = update_body(when=1_800_000_000_100)
        await callback(gateway, "Live.CallbackAfterUpdateRoomInfo", body)
        frame = await stream.event()
        assert frame.id is not None
        assert frame.event is None
        assert frame.json() == {
            "command": "Live.CallbackAfterUpdateRoomInfo",
            "room_id": "room-1",
            "event_time": 1_800_000_000_100,
            "payload": body,
        }


async def test_refused_and_duplicate_callbacks_publish_nothing(upstream_url: str) -> None:
    """A bad Sign, a stale RequestTime, an unknown SDKAppID and a duplicate: the subscriber's
    next event is the one good callback sent after them."""
    async with start_gateway(upstream_url) as gateway, subscribe(gateway.client, EVENTS, LISTENER) as stream:
        command = "Live.CallbackAfterDestroyRoom"
        body = destroyed("room-2", 1_800_000_000_200)
        for url in (
            signed(command, token="not-the-token"),
            signed(command, at=1_000_000_000),
            signed(command, app=1499999999),
        ):
            response = await gateway.client.post(url, content=json.dumps(body), headers={"authorization": ""})
            assert response.status_code == 401
        await callback(gateway, command, body)
        await callback(gateway, command, body)  # the duplicate
        await callback(gateway, command, destroyed("room-3", 1_800_000_000_201))
        assert (await stream.event()).json()["room_id"] == "room-2"
        assert (await stream.event()).json()["room_id"] == "room-3"


async def test_a_subscriber_resumes_with_last_event_id_and_loses_nothing(upstream_url: str) -> None:
    """Events published while a subscriber was away are read after it reconnects with
    Last-Event-ID (or ?last_event_id=), then the live ones follow."""
    async with start_gateway(upstream_url) as gateway:
        async with subscribe(gateway.client, EVENTS, LISTENER) as stream:
            await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-1", 1))
            first = await stream.event()
        for n in (2, 3):  # while nobody listens
            await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed(f"room-{n}", n))
        assert first.id is not None
        async with subscribe(gateway.client, EVENTS, {**LISTENER, "last-event-id": first.id}) as stream:
            assert [(await stream.event()).json()["room_id"] for _ in range(2)] == ["room-2", "room-3"]
            await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-9", 9))
            assert (await stream.event()).json()["room_id"] == "room-9"
        # the query parameter does the same, for clients that cannot set headers
        async with subscribe(gateway.client, EVENTS, LISTENER, last_event_id=first.id) as stream:
            assert (await stream.event()).json()["room_id"] == "room-2"


async def test_the_command_filter_and_the_heartbeat_that_moves_the_position(upstream_url: str) -> None:
    """Only the commands asked for; an idle stream gets a keep-alive comment, with an id: once
    filtered-out events have moved the position (a client resuming does not read them again)."""
    async with (
        start_gateway(upstream_url, events_heartbeat=0.2) as gateway,
        subscribe(gateway.client, EVENTS, LISTENER, command="Live.CallbackAfterDestroyRoom") as stream,
    ):
        await callback(gateway, "Live.CallbackAfterUpdateRoomInfo", update_body(when=5))
        await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-1", 6))
        await callback(gateway, "Live.CallbackAfterUpdateRoomInfo", update_body(when=7))
        wanted = await stream.event()
        assert wanted.json()["command"] == "Live.CallbackAfterDestroyRoom"
        beat = await stream.next(2.0)
        assert "keep-alive" in beat.comments
        assert beat.data is None
        assert beat.id is not None
        assert beat.id > (wanted.id or "")
        beat = await stream.next(2.0)
        assert "keep-alive" in beat.comments
        assert beat.id is None


async def test_a_subscriber_behind_what_is_kept_is_told(upstream_url: str) -> None:
    """With 2 events kept, resuming from the first of 5: an `event: lost` notice naming the
    range, then the 2 kept events."""
    async with start_gateway(upstream_url, events_keep=2) as gateway:
        async with subscribe(gateway.client, EVENTS, LISTENER) as stream:
            ids = []
            for n in range(5):
                await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-1", 100 + n))
                ids.append((await stream.event()).id)
        async with subscribe(gateway.client, EVENTS, {**LISTENER, "last-event-id": ids[0]}) as stream:
            notice = await stream.event()
            assert notice.event == "lost"
            assert notice.json()["code"] == "events_lost"
            assert notice.json()["after"] == ids[0]
            assert notice.json()["through"] == ids[2] == notice.id
            assert [(await stream.event()).id for _ in range(2)] == ids[3:]
        metrics = (await gateway.client.get("/metrics")).text
    assert 'gateway_events_lost_notices_total{tenant="acme"} 1.0' in metrics


async def test_a_position_from_before_the_process_is_lost(upstream_url: str) -> None:
    """In embedded mode events live in the process: a restarted gateway cannot vouch for what
    came before it, and says so."""
    async with (
        start_gateway(upstream_url) as gateway,
        subscribe(gateway.client, EVENTS, {**LISTENER, "last-event-id": "1000-0"}) as stream,
    ):
        notice = await stream.event()
        assert notice.event == "lost"
        assert notice.json()["after"] == "1000-0"


@pytest.mark.parametrize(
    ("headers", "params", "status", "code"),
    [
        ({}, {}, 401, "unauthenticated"),
        ({"authorization": f"Bearer {TOKENS['rw']}"}, {}, 403, "forbidden"),  # read and write, not events
        (LISTENER | {"last-event-id": "yesterday"}, {}, 400, "invalid_request"),
        (LISTENER, {"command": "x" * 129}, 400, "invalid_request"),
        (LISTENER, {"command": ""}, 400, "invalid_request"),
        (LISTENER, {"last_event_id": "٣-0"}, 400, "invalid_request"),
        (LISTENER | {"last-event-id": "1000-0"}, {"last_event_id": "yesterday"}, 400, "invalid_request"),
    ],
    ids=[
        "no-token",
        "no-events-scope",
        "bad-last-event-id",
        "long-command",
        "empty-command",
        "non-ascii-digits",
        "bad-query-beside-a-good-header",
    ],
)
async def test_refused_subscriptions(
    upstream_url: str, headers: dict[str, str], params: dict[str, str], status: int, code: str
) -> None:
    """No token, a caller without the events scope, a malformed Last-Event-ID (header or query,
    even where the header would win; ids are ASCII digits) and a command filter outside 1-128
    characters are refused with problem documents before any stream opens, as the OpenAPI
    document says."""
    async with start_gateway(upstream_url) as gateway:
        response = await gateway.client.get(EVENTS, headers={"authorization": "", **headers}, params=params)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code


async def test_subscribers_are_bounded_and_counted(upstream_url: str) -> None:
    """Past GATEWAY_EVENTS_MAX_SUBSCRIBERS a new stream gets 503 too_many_subscribers with
    Retry-After; the open streams are a gauge that drops back when a client leaves."""
    async with start_gateway(upstream_url, events_max_subscribers=1) as gateway:
        async with subscribe(gateway.client, EVENTS, LISTENER):
            response = await gateway.client.get(EVENTS, headers=LISTENER)
            assert response.status_code == 503
            assert response.json()["code"] == "too_many_subscribers"
            assert response.headers["retry-after"] == "5"
            metrics = (await gateway.client.get("/metrics")).text
            assert 'gateway_events_subscribers{tenant="acme"} 1.0' in metrics
        for _ in range(100):  # the stream's end is seen by the server a moment later
            metrics = (await gateway.client.get("/metrics")).text
            if 'gateway_events_subscribers{tenant="acme"} 0.0' in metrics:
                break
            await asyncio.sleep(0.02)
        assert 'gateway_events_subscribers{tenant="acme"} 0.0' in metrics


async def test_draining_ends_the_streams(upstream_url: str) -> None:
    """A replica that shuts down ends its streams at once (clients reconnect elsewhere with
    Last-Event-ID) and refuses new ones."""
    async with start_gateway(upstream_url) as gateway, subscribe(gateway.client, EVENTS, LISTENER) as stream:
        gateway.app.state.gateway.drain()
        assert await stream.ended(within=2.0)
        response = await gateway.client.get(EVENTS, headers=LISTENER)
        assert (response.status_code, response.json()["code"]) == (503, "draining")


async def test_a_slow_subscriber_reads_the_log_itself(upstream_url: str) -> None:
    """A subscriber that stops reading: once the socket's buffers are full its queue (3 events
    here) overflows, it lags and its queue is dropped. When it reads again it gets every event
    from the log, in order; a subscriber beside it that reads is not held up."""
    filler = "x" * 40_000
    async with (
        start_gateway(upstream_url, events_queue=3) as gateway,
        subscribe(gateway.client, EVENTS, LISTENER) as slow,
        subscribe(gateway.client, EVENTS, LISTENER) as quick,
    ):
        hub = gateway.app.state.gateway.hub
        for n in range(300):  # 12 MB: more than loopback socket buffers hold
            body = destroyed("room-1", 1000 + n) | {"Filler": filler}
            await callback(gateway, "Live.CallbackAfterDestroyRoom", body)
            assert (await quick.event()).json()["event_time"] == 1000 + n
        assert all(len(sub.queue) <= 3 for feed in hub._feeds.values() for sub in feed.subscribers)
        metrics = (await gateway.client.get("/metrics")).text
        assert 'gateway_events_lagged_total{tenant="acme"}' in metrics
        times = [(await slow.event()).json()["event_time"] for _ in range(300)]
        assert times == list(range(1000, 1300))


def test_callback_token_is_not_in_the_stream() -> None:
    """(The event payload is Tencent's body; the URL's Sign and the token never enter it.)"""
    assert CALLBACK_TOKEN not in json.dumps(update_body())


async def test_the_openapi_document_describes_the_stream(upstream_url: str) -> None:
    """The OpenAPI document gives the stream's media type and its parameters."""
    async with start_gateway(upstream_url) as gateway:
        doc = (await gateway.client.get("/schema/openapi.json")).json()
    op = doc["paths"]["/v1/tenants/{tenant}/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert {p["name"] for p in op["parameters"]} >= {"tenant", "last-event-id", "last_event_id", "command"}


# ---------------------------------------------------------------------- real processes, Redis


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post_callback(url: str, command: str, body: dict[str, Any]) -> None:
    response = httpx.post(url + signed(command), content=json.dumps(body), timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.slow
async def test_a_subscriber_on_one_replica_gets_events_from_another_and_resumes_on_a_third(tmp_path: Path) -> None:
    """Two replicas on one Redis: a callback received by B reaches a subscriber on A; events
    sent while it is away are read after it reconnects to B with Last-Event-ID."""
    with standalone() as redis, fleet(tmp_path, redis.url, replicas=2) as running:
        a, b = running.urls
        async with httpx.AsyncClient(base_url=a) as client, subscribe(client, EVENTS, LISTENER) as stream:
            post_callback(b, "Live.CallbackAfterDestroyRoom", destroyed("room-1", 11))
            first = await stream.event()
            assert first.json()["room_id"] == "room-1"
        post_callback(a, "Live.CallbackAfterDestroyRoom", destroyed("room-2", 12))
        post_callback(b, "Live.CallbackAfterDestroyRoom", destroyed("room-3", 13))
        assert first.id is not None
        resume = {**LISTENER, "last-event-id": first.id}
        async with httpx.AsyncClient(base_url=b) as client, subscribe(client, EVENTS, resume) as stream:
            assert [(await stream.event()).json()["room_id"] for _ in range(2)] == ["room-2", "room-3"]
        assert running.counter("gateway_events_published_total") == 3


@pytest.mark.slow
async def test_a_stalled_subscriber_does_not_grow_the_gateways_memory(tmp_path: Path) -> None:
    """A client that opens a stream and never reads, while 1,000 events of 40 kB (40 MB) are
    published: the replica's memory grows by less than 10 MB (its queue holds 16 events and
    the socket's buffers are the kernel's), the subscriber is counted as lagging, and a
    subscriber beside it gets the newest event at once."""
    with standalone() as redis, fleet(tmp_path, redis.url, replicas=1, events_queue=16) as running:
        (url,) = running.urls
        gateway_pid = running.procs[1].pid
        port = int(url.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        request = f"GET {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: {LISTENER['authorization']}\r\n\r\n"
        stalled.sendall(request.encode())
        await asyncio.sleep(0.5)
        before = rss_mb(gateway_pid)
        filler = "x" * 40_000
        async with httpx.AsyncClient(base_url=url, timeout=10) as client, subscribe(client, EVENTS, LISTENER) as quick:

            async def read() -> list[int]:
                return [(await quick.event(within=10)).json()["event_time"] for _ in range(1000)]

            reading = asyncio.create_task(read())
            for n in range(1000):
                body = json.dumps(destroyed("room-1", 5000 + n) | {"Filler": filler})
                response = await client.post(signed("Live.CallbackAfterDestroyRoom"), content=body)
                assert response.status_code == 200
            assert await reading == list(range(5000, 6000))
        grown = rss_mb(gateway_pid) - before
        lagged = running.counter("gateway_events_lagged_total")
        stalled.close()
    print(f"RSS grew {grown:.1f} MB while 40 MB of events passed a stalled subscriber; lagged {lagged:.0f}")
    assert lagged >= 1
    assert grown < 10  # an unbounded queue would hold all 40 MB


@pytest.mark.slow
async def test_events_accepted_during_a_redis_outage_are_published_after_it(upstream_url: str) -> None:
    """Redis killed: a callback is still acknowledged (its event held in the replica); Redis
    restarted empty: the event is published and the subscriber that waited through the outage
    receives it."""
    with standalone() as redis:
        async with (
            start_gateway(upstream_url, redis_url=redis.url, redis_cool_off=0.2) as gateway,
            subscribe(gateway.client, EVENTS, LISTENER) as stream,
        ):
            await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-1", 21))
            assert (await stream.event()).json()["room_id"] == "room-1"
            redis.kill()
            await callback(gateway, "Live.CallbackAfterDestroyRoom", destroyed("room-2", 22))
            metrics = (await gateway.client.get("/metrics")).text
            assert "gateway_events_held 1.0" in metrics
            redis.start()
            assert (await stream.event(within=10)).json()["room_id"] == "room-2"
            metrics = (await gateway.client.get("/metrics")).text
            assert "gateway_events_held 0.0" in metrics


async def test_the_emulator_calls_back_for_its_changes(upstream_url: str, emulator: Emulator) -> None:
    """The emulated Tencent, its callback registered through the service (as `gateway callbacks
    register` does; set, then updated, with commands the budget knows), sends signed callbacks
    for room updates, metadata and destroys: each one reaches a subscriber."""
    async with start_gateway(upstream_url) as gateway, subscribe(gateway.client, EVENTS, LISTENER) as stream:
        gw = gateway.app.state.gateway
        acme = gw.directory.tenants["acme"]
        share = Share("test", 1)
        assert (
            await gw.service.register_callback(
                acme, gateway.url + "/v1/callbacks/tencent", default_commands(), share=share
            )
            == "set"
        )
        again = await gw.service.register_callback(
            acme, gateway.url + "/v1/callbacks/tencent", default_commands(), share=share
        )
        assert again == "updated"
        assert set(emulator.calls) <= DOCUMENTED.keys()  # (every command the budget gauge and api_qps know)
        room = "/v1/tenants/acme/rooms/room-1"
        assert (await gateway.client.patch(room, json={"room_name": "Renamed"})).status_code == 204
        assert (await gateway.client.patch(room + "/metadata", json={"metadata": {"k": "v"}})).status_code == 204
        assert (await gateway.client.delete(room + "/metadata", params={"key": "k"})).status_code == 204
        commands = [(await stream.event()).json()["command"] for _ in range(3)]
        assert commands == [
            "Live.CallbackAfterUpdateRoomInfo",
            "Live.CallbackAfterSetMetadata",
            "Live.CallbackAfterDelMetadata",
        ]
    assert emulator.callbacks_sent == {"ok": 3}
