"""The Redis stores on real Redis, standalone and a 3-node cluster: the Lua scripts' contracts."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.budget.schedule import Booked, Terms, Want
from gateway.health import StoreUnavailable
from gateway.stores.redis import Redis, RedisBudgetStore, RedisRoomStore, connect
from tests.redis_servers import RedisServer, url_for


@pytest.fixture(params=["standalone", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A Redis wrapper on a fresh key prefix, on the standalone server or the cluster."""
    url = url_for(request, request.param)
    wrapper = Redis(connect(url, timeout=2.0), prefix=f"t{uuid.uuid4().hex[:8]}:", timeout=2.0)
    await wrapper.start()  # as the app does at start-up
    try:
        yield wrapper
    finally:
        await wrapper.aclose()


TERMS = Terms(interval=0.01, horizon=1.0, borrow=0.02, active=1.0)


async def test_concurrent_bookings_admit_exactly_what_the_horizon_allows(redis: Redis) -> None:
    """300 concurrent one-slot bookings, 0.5 s slots, a 5 s horizon: exactly 11 granted (waits
    0, 0.5 .. 5 s, one slot each, whoever asked), the other 289 nothing: the script is atomic.

    (Slots are long so that the few milliseconds Redis takes to run 300 scripts cannot open one more.)"""
    store = RedisBudgetStore(redis)
    terms = Terms(interval=0.5, horizon=5.0, borrow=5.0, active=10.0)
    booked = await asyncio.gather(
        *(store.book("1400", "api", [Want(f"c{i % 7}", 1, 1, 5.0)], terms) for i in range(300))
    )
    waits = sorted(s - b.at for b in booked if isinstance(b, Booked) for slots in b.slots.values() for s in slots)
    assert len(waits) == 11
    assert waits[0] < 0.05
    assert all(abs((b - a) - 0.5) < 0.05 for a, b in itertools.pairwise(waits))


async def test_heartbeats_count_replicas_that_fell_silent_until_forgotten(redis: Redis) -> None:
    """A replica that stops beating counts as lapsed after ``lapse_after`` and is forgotten after
    ``forget_after``; one that leaves is gone at once; the beating replica never counts itself.
    Each beat says how long the record has been kept; if Redis loses it, that starts again."""
    store = RedisBudgetStore(redis)
    beats = [await store.beat(r, 0.2, 0.8) for r in ("a", "b", "c")]
    assert [lapsed for lapsed, _, _ in beats] == [0, 0, 0]
    assert [size for _, _, size in beats] == [1, 2, 3]  # the fleet in the record, each beater included
    assert beats[0][1] == 0.0
    await store.leave("c")
    await asyncio.sleep(0.35)  # "b" falls silent
    lapsed, kept_for, size = await store.beat("a", 0.2, 0.8)
    assert (lapsed, round(kept_for, 1), size) == (1, 0.4, 2)  # "b", lapsed, still counts in the size
    assert (await store.beat("b", 0.2, 0.8))[0] == 0  # back: "a" beat just now
    await asyncio.sleep(0.35)
    assert (await store.beat("a", 0.2, 0.8))[0] == 1
    await asyncio.sleep(0.6)  # "b" silent for 0.95 s: forgotten
    assert (await store.beat("a", 0.2, 0.8))[::2] == (0, 1)
    await redis.run(redis.client.delete(f"{redis.prefix}fleet:{{fleet}}"))  # Redis lost the record
    assert await store.beat("a", 0.2, 0.8) == (0, 0.0, 1)


async def test_reads_in_one_turn_share_one_pipeline_and_one_call_per_room(redis: Redis) -> None:
    """100 concurrent reads of 5 rooms, made in one event-loop turn: each reader gets its room,
    and (standalone) only 5 calls are sent; a cluster client sends one per read."""
    rooms = RedisRoomStore(redis, keep=5.0)
    for n in range(5):
        await rooms.put(f"1400:b{n}", f"body-{n}".encode(), 0)
    sent = rooms._get.sent
    found = await asyncio.gather(*(rooms.get(f"1400:b{i % 5}") for i in range(100)))
    assert [f.body for f in found] == [f"body-{i % 5}".encode() for i in range(100)]
    batched = isinstance(redis.client, aioredis.Redis)
    assert rooms._get.sent - sent == (5 if batched else 100)


async def test_a_read_sent_after_a_write_sees_it(redis: Redis) -> None:
    """Read-your-writes through the batcher: a read issued after an invalidation returned is
    never answered from a call sent before it, even with other reads of the room in flight."""
    rooms = RedisRoomStore(redis, keep=5.0)
    await rooms.put("1400:ryw", b"before", 0)
    in_flight = [asyncio.ensure_future(rooms.get("1400:ryw")) for _ in range(20)]
    await asyncio.sleep(0)  # those reads are now queued or sent
    await rooms.invalidate("1400:ryw")
    after = await rooms.get("1400:ryw")
    assert after.body is None
    assert after.generation == 1
    await asyncio.gather(*in_flight)


async def test_one_cancelled_reader_does_not_cancel_the_others(redis: Redis) -> None:
    """Readers sharing a call: cancelling one leaves the rest with their answer. (A cluster client
    sends each read on its own, so there is nothing shared and the first may finish first.)"""
    rooms = RedisRoomStore(redis, keep=5.0)
    await rooms.put("1400:c1", b"shared", 0)
    readers = [asyncio.ensure_future(rooms.get("1400:c1")) for _ in range(10)]
    await asyncio.sleep(0)
    readers[0].cancel()
    results = await asyncio.gather(*readers, return_exceptions=True)
    if isinstance(redis.client, aioredis.Redis):
        assert isinstance(results[0], asyncio.CancelledError)
    assert [getattr(r, "body", r) for r in results[1:]] == [b"shared"] * 9


async def test_batched_reads_survive_a_script_flush(redis_server: RedisServer) -> None:
    """After Redis loses its scripts (a restart, SCRIPT FLUSH), batched reads still answer: the
    NOSCRIPT replies are retried one by one, which loads the script again."""
    wrapper = Redis(connect(redis_server.url, timeout=2.0), prefix=f"f{uuid.uuid4().hex[:8]}:", timeout=2.0)
    rooms = RedisRoomStore(wrapper, keep=5.0)
    await rooms.put("1400:f1", b"kept", 0)
    await rooms.get("1400:f1")
    await wrapper.client.script_flush()
    found = await asyncio.gather(*(rooms.get("1400:f1") for _ in range(5)))
    assert [f.body for f in found] == [b"kept"] * 5
    await wrapper.aclose()


async def test_batched_reads_fail_as_store_unavailable() -> None:
    """Nothing listening: every reader of the batch gets StoreUnavailable, nothing else."""
    dead = Redis(connect("redis://127.0.0.1:1", timeout=0.2), prefix="x:", timeout=0.2)
    rooms = RedisRoomStore(dead, keep=5.0)
    results = await asyncio.gather(*(rooms.get(f"1400:d{i % 2}") for i in range(6)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    await dead.aclose()


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    """Nothing listening: StoreUnavailable within the timeout, never a redis-py error."""
    dead = Redis(connect("redis://127.0.0.1:1", timeout=0.2), prefix="x:", timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await RedisBudgetStore(dead).book("1400", "api", [Want("a", 1, 1, 1.0)], TERMS)
    await dead.aclose()


async def test_a_slow_redis_is_store_unavailable(redis_server: RedisServer) -> None:
    """A Redis stuck for longer than the timeout (DEBUG SLEEP) costs one timeout, not a stall."""
    slow = Redis(connect(redis_server.url, timeout=0.1), prefix="s:", timeout=0.1)
    blocker = redis_server.client()
    task = asyncio.get_running_loop().run_in_executor(None, blocker.execute_command, "DEBUG", "SLEEP", "0.5")
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await RedisBudgetStore(slow).book("1400", "api", [Want("a", 1, 1, 1.0)], TERMS)
    assert loop.time() - started < 0.3
    await task
    blocker.close()
    await slow.aclose()


def test_breaker_opens_after_repeated_failures_only() -> None:
    """One late reply costs that call; three failures within a second mean Redis is down."""
    from gateway.health import Breaker

    now = [0.0]
    breaker = Breaker(cool_off=1.0, clock=lambda: now[0], threshold=3, window=1.0)
    breaker.failed("slow")
    now[0] += 0.6
    breaker.failed("slow")
    now[0] += 0.6  # the first failure is now out of the window
    breaker.failed("slow")
    assert not breaker.degraded
    breaker.failed("down")
    assert breaker.degraded
    assert not breaker.allows()
    now[0] += 1.0
    assert breaker.allows()
    assert breaker.succeeded() is True
    assert not breaker.degraded


async def test_one_failed_pipelined_read_is_one_failure_for_the_breaker() -> None:
    """Six readers sharing one failed pipeline see one Redis failure between them: a single late
    or lost round trip must not look like three and send the replica into degraded mode."""
    from gateway.health import Breaker
    from gateway.stores.failover import FailoverRoomStore
    from gateway.stores.memory import MemoryRoomStore

    dead = Redis(connect("redis://127.0.0.1:1", timeout=0.2), prefix="x:", timeout=0.2)
    breaker = Breaker(cool_off=1.0, clock=lambda: 0.0, threshold=3, window=1.0)
    rooms = FailoverRoomStore(
        shared=RedisRoomStore(dead, keep=5.0),
        local=MemoryRoomStore(clock=lambda: 0.0, max_age=5.0, max_rooms=10),
        breaker=breaker,
    )
    found = await asyncio.gather(*(rooms.get(f"1400:e{i % 2}") for i in range(6)))
    assert all(f.body is None for f in found)  # answered from the in-process tier
    assert breaker.failures == 1
    assert not breaker.degraded
    await dead.aclose()
