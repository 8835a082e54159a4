"""The room cache: TTL, X-Cache, no-cache, coalescing, invalidation, stale-if-error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.cache import Filled, RoomCache
from gateway.stores.memory import MemoryRoomStore
from gateway.stores.redis import Redis, RedisRoomStore, connect
from live_engine_emulator import Emulator
from live_engine_emulator.state import APPLY_THEN_DROP, HTTP_502
from tests.support import APP_ID, TOKENS, Gateway, SkipClock, blast, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"


async def test_second_read_is_a_hit(gateway: Gateway, emulator: Emulator) -> None:
    """Within the TTL a read is served from the cache: X-Cache miss, then hit; one upstream call."""
    first = await gateway.client.get(ROOM)
    second = await gateway.client.get(ROOM)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content
    assert "x-upstream-request-id" in first.headers
    assert "x-upstream-request-id" not in second.headers
    assert emulator.calls["get_room_info"] == 1


async def test_entries_expire_after_the_ttl(upstream_url: str, emulator: Emulator) -> None:
    """After the TTL the next read goes upstream again."""
    clock = SkipClock()
    async with start_gateway(upstream_url, cache_ttl=0.2, clock=clock) as gateway:
        await gateway.client.get(ROOM)
        clock.skip(0.3)
        assert (await gateway.client.get(ROOM)).headers["x-cache"] == "miss"
    assert emulator.calls["get_room_info"] == 2


async def test_no_cache_skips_the_cache(gateway: Gateway, emulator: Emulator) -> None:
    """Cache-Control: no-cache goes upstream even when a fresh copy is cached."""
    await gateway.client.get(ROOM)
    response = await gateway.client.get(ROOM, headers={"cache-control": "no-cache"})
    assert response.headers["x-cache"] == "miss"
    assert emulator.calls["get_room_info"] == 2


async def test_200_concurrent_identical_reads_make_one_upstream_call(gateway: Gateway, emulator: Emulator) -> None:
    """Two hundred concurrent cold reads of one room cost Tencent exactly one call."""
    emulator.faults.latency = 0.2  # keep the first call in flight while the others arrive
    statuses = await blast(gateway.url, [ROOM] * 200, token=TOKENS["rw"])
    assert statuses == [200] * 200
    assert emulator.calls["get_room_info"] == 1


async def test_concurrent_no_cache_reads_are_still_coalesced(gateway: Gateway, emulator: Emulator) -> None:
    """no-cache reads skip the stored copy but still share one in-flight call."""
    emulator.faults.latency = 0.2
    statuses = await blast(gateway.url, [ROOM] * 50, token=TOKENS["rw"], headers={"cache-control": "no-cache"})
    assert statuses == [200] * 50
    assert emulator.calls["get_room_info"] == 1


async def test_patch_invalidates_before_answering(gateway: Gateway) -> None:
    """A read after a successful PATCH sees the write (read-your-writes)."""
    assert (await gateway.client.get(ROOM)).json()["room_name"] == "room-1"
    assert (await gateway.client.patch(ROOM, json={"room_name": "Fresh"})).status_code == 204
    after = await gateway.client.get(ROOM)
    assert after.headers["x-cache"] == "miss"
    assert after.json()["room_name"] == "Fresh"


async def test_a_write_that_may_have_applied_invalidates_too(gateway: Gateway, emulator: Emulator) -> None:
    """A PATCH answered "may have applied" (Tencent applied every attempt, each reply was lost)
    invalidates the room as a successful one does: the caller's read, to learn whether it
    applied, sees Tencent's room, not the copy cached before the write."""
    assert (await gateway.client.get(ROOM)).json()["room_name"] == "room-1"
    emulator.fail_next("update_room_info", *[APPLY_THEN_DROP] * 10)
    failed = await gateway.client.patch(ROOM, json={"room_name": "Maybe"})
    assert failed.status_code == 502, failed.text
    assert failed.json()["may_have_applied"] is True
    emulator.faults.scripted.clear()
    after = await gateway.client.get(ROOM)
    assert after.headers["x-cache"] == "miss"
    assert after.json()["room_name"] == "Maybe"


async def test_a_write_tencent_refused_keeps_the_cached_room(gateway: Gateway, emulator: Emulator) -> None:
    """A PATCH that certainly did not apply (Tencent refused it with an ErrorCode) leaves the
    cached copy alone: nothing changed."""
    await gateway.client.get(ROOM)
    emulator.fail_next("update_room_info", 100002)
    assert (await gateway.client.patch(ROOM, json={"room_name": "No"})).status_code == 400
    after = await gateway.client.get(ROOM)
    assert (after.headers["x-cache"], after.json()["room_name"]) == ("hit", "room-1")


async def test_a_read_in_flight_during_a_write_cannot_cache_the_old_room(gateway: Gateway, emulator: Emulator) -> None:
    """A fill that started before a PATCH does not store its (older) answer afterwards."""
    emulator.faults.reply_latency = 0.3  # Tencent reads the room now, answers 0.3 s later
    slow_read = asyncio.create_task(gateway.client.get(ROOM))
    await asyncio.sleep(0.1)
    emulator.faults.reply_latency = 0.0
    assert (await gateway.client.patch(ROOM, json={"room_name": "New"})).status_code == 204
    assert (await slow_read).json()["room_name"] == "room-1"  # the old answer, delivered late
    after = await gateway.client.get(ROOM)
    assert after.headers["x-cache"] == "miss"
    assert after.json()["room_name"] == "New"


async def test_a_read_after_a_write_does_not_join_an_older_fill(gateway: Gateway, emulator: Emulator) -> None:
    """A read that starts after a PATCH gets its own upstream call, not the pre-write one's result."""
    emulator.faults.reply_latency = 0.3  # Tencent reads the room now and answers 0.3 s later
    slow_read = asyncio.create_task(gateway.client.get(ROOM))
    await asyncio.sleep(0.1)
    emulator.faults.reply_latency = 0.0
    assert (await gateway.client.patch(ROOM, json={"room_name": "New"})).status_code == 204
    after = await gateway.client.get(ROOM)  # the pre-write fill is still in flight now
    assert not slow_read.done()
    assert after.json()["room_name"] == "New"
    assert (await slow_read).json()["room_name"] == "room-1"  # that fill really read the old room
    assert emulator.calls["get_room_info"] == 2


async def test_stale_copy_is_served_when_tencent_fails(upstream_url: str, emulator: Emulator) -> None:
    """After the TTL, if Tencent fails, a copy within the stale bound is served with X-Cache: stale."""
    clock = SkipClock()
    async with start_gateway(upstream_url, cache_ttl=0.1, stale_ttl=5.0, retry_attempts=2, clock=clock) as gateway:
        await gateway.client.get(ROOM)
        clock.skip(0.15)
        emulator.fail_next("get_room_info", HTTP_502, HTTP_502)
        response = await gateway.client.get(ROOM)
    assert response.status_code == 200
    assert response.headers["x-cache"] == "stale"
    assert response.json()["room_id"] == "room-1"


async def test_no_stale_copy_past_the_bound(upstream_url: str, emulator: Emulator) -> None:
    """Past TTL + stale bound, Tencent's failure is the caller's error."""
    clock = SkipClock()
    async with start_gateway(upstream_url, cache_ttl=0.1, stale_ttl=0.1, retry_attempts=2, clock=clock) as gateway:
        await gateway.client.get(ROOM)
        clock.skip(0.25)
        emulator.fail_next("get_room_info", HTTP_502, HTTP_502)
        response = await gateway.client.get(ROOM)
    assert response.status_code == 502


async def test_room_not_found_is_not_served_stale(upstream_url: str, emulator: Emulator) -> None:
    """A room Tencent says is gone (100004) is a 404 even with a stale copy around."""
    clock = SkipClock()
    async with start_gateway(upstream_url, cache_ttl=0.1, stale_ttl=5.0, clock=clock) as gateway:
        await gateway.client.get(ROOM)
        clock.skip(0.15)
        del emulator.apps[APP_ID].rooms["room-1"]
        assert (await gateway.client.get(ROOM)).status_code == 404


async def test_memory_store_stays_bounded() -> None:
    """The in-process store keeps at most max_rooms entries, dropping the oldest."""
    now = [0.0]
    store = MemoryRoomStore(clock=lambda: now[0], max_age=10.0, max_rooms=3)
    cache = RoomCache(store=store, ttl=1.0, stale_ttl=9.0)
    for n in range(5):
        assert await store.put(f"k{n}", b"x", 0)
    assert [(await store.get(f"k{n}")).body for n in range(5)] == [None, None, b"x", b"x", b"x"]
    await cache.invalidate("k4")
    assert (await store.get("k4")).body is None
    assert not await store.put("k4", b"y", 0), "a fill from before the invalidation is refused"


# ---------------------------------------------------------------------- two replicas' caches on one Redis


def replica_cache(redis: Redis, **options: float) -> RoomCache:
    """One replica's room cache on the fleet's Redis (TTL 1 s, stale bound 5 s)."""
    return RoomCache(store=RedisRoomStore(redis, keep=6.0), ttl=1.0, stale_ttl=5.0, **options)


@pytest.fixture
async def fleet_redis(redis_url: str) -> AsyncIterator[Redis]:
    """The fleet's Redis (a real server), as each replica's store reaches it."""
    redis = Redis(connect(redis_url, timeout=1.0), prefix="c:", timeout=1.0)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_a_replica_waits_for_the_fill_another_replica_holds(fleet_redis: Redis) -> None:
    """While replica A fills a room under the fleet's lock, replica B's read waits and serves
    A's answer: one upstream call for both."""
    a, b = replica_cache(fleet_redis), replica_cache(fleet_redis)
    release, fetched = asyncio.Event(), []

    async def slow_fetch() -> Filled:
        fetched.append("a")
        await release.wait()
        return Filled(body=b'{"room_id":"r"}', upstream_request_id="up-1")

    async def never() -> Filled:
        raise AssertionError("replica B called Tencent")

    first = asyncio.create_task(a.read("1400:r", slow_fetch))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(b.read("1400:r", never))
    await asyncio.sleep(0.05)
    release.set()
    ours, theirs = await first, await second
    assert (ours.status, ours.upstream_request_id) == ("miss", "up-1")
    assert (theirs.status, theirs.body) == ("miss", b'{"room_id":"r"}')
    assert (fetched, a.fill_waits, b.fill_waits) == (["a"], 0, 1)


async def test_a_fill_lock_held_past_its_ttl_no_longer_blocks(fleet_redis: Redis) -> None:
    """A replica that took the lock and hung (its lock not yet expired) holds the others up for
    ``lock_ttl`` only: then a waiter fills without the lock rather than stall its caller."""
    stuck = await RedisRoomStore(fleet_redis, keep=6.0).lock("1400:r", 30.0)
    assert stuck is not None
    cache = replica_cache(fleet_redis, lock_ttl=0.2)
    started = asyncio.get_running_loop().time()

    async def fetch() -> Filled:
        return Filled(body=b"fresh", upstream_request_id="up-2")

    result = await cache.read("1400:r", fetch)
    waited = asyncio.get_running_loop().time() - started
    assert (result.body, result.upstream_request_id) == (b"fresh", "up-2")
    assert 0.2 <= waited < 1.0
    assert cache.fill_waits == 1


async def test_the_next_lock_holder_serves_what_the_last_one_filled(fleet_redis: Redis) -> None:
    """A fill that gets the lock after another replica filled the room (since this read looked)
    serves that fill instead of calling Tencent again; a fill stored before the look is not used."""
    a, b = replica_cache(fleet_redis), replica_cache(fleet_redis)
    looked = await RedisRoomStore(fleet_redis, keep=6.0).get("1400:r")  # B looks: nothing yet

    async def fetch() -> Filled:
        return Filled(body=b"from-a", upstream_request_id="up-a")

    await a.read("1400:r", fetch)  # meanwhile A fills, and releases the lock

    async def never() -> Filled:
        raise AssertionError("called Tencent a second time")

    assert await b._fill("1400:r", looked, never) == Filled(body=b"from-a", upstream_request_id="")
    after = await RedisRoomStore(fleet_redis, keep=6.0).get("1400:r")  # B looks after A's fill ...

    async def again() -> Filled:
        return Filled(body=b"from-b", upstream_request_id="up-b")

    assert (await b._fill("1400:r", after, again)).body == b"from-b"  # ... so that one is no newer
