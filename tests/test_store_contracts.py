"""Store contracts: the same cases against the in-process stores (embedded mode) and the Redis
ones on a real Redis, standalone and a 3-node cluster. A store that passes here can stand in
for the other; where embedded mode differs on purpose, a test below says so by name."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from gateway.budget import BudgetStore, Grant, Paused, Refusal
from gateway.cache import RoomStore
from gateway.signing import Signature, SignatureStore
from gateway.stores.memory import MemoryBudgetStore, MemoryRoomStore, MemorySignatureStore
from gateway.stores.redis import Redis, RedisBudgetStore, RedisRoomStore, RedisSignatureStore, connect
from tests.redis_servers import url_for


@dataclass
class Stores:
    """One kind of store: the budget, the signatures, and rooms kept ``keep`` seconds."""

    kind: str
    budget: BudgetStore
    signatures: SignatureStore
    rooms: Callable[[float], RoomStore]


@pytest.fixture(params=["memory", "standalone", "cluster"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    """The stores of one kind; the Redis kinds on a fresh key prefix. The memory stores run on
    the monotonic clock, so that the cases' real sleeps age both kinds alike."""
    if request.param == "memory":
        clock = time.monotonic
        yield Stores(
            "memory",
            MemoryBudgetStore(clock=clock),
            MemorySignatureStore(clock=clock),
            lambda keep: MemoryRoomStore(clock=clock, max_age=keep, max_rooms=1000),
        )
        return
    url = url_for(request, request.param)
    redis = Redis(connect(url, timeout=2.0), prefix=f"c{uuid.uuid4().hex[:8]}:", timeout=2.0)
    await redis.start()
    try:
        yield Stores(
            request.param,
            RedisBudgetStore(redis),
            RedisSignatureStore(redis),
            lambda keep: RedisRoomStore(redis, keep=keep),
        )
    finally:
        await redis.aclose()


# ---------------------------------------------------------------------- budget


async def test_a_refusal_books_nothing(stores: Stores) -> None:
    """Refused callers leave the schedule as it was: the next caller's wait is unchanged."""
    store = stores.budget
    first = await store.reserve("1400", "api", 0.5, 10.0)
    assert isinstance(first, Grant)
    for _ in range(20):
        assert isinstance(await store.reserve("1400", "api", 0.5, 0.1), Refusal)
    after = await store.reserve("1400", "api", 0.5, 10.0)
    assert isinstance(after, Grant)
    assert 0.4 < after.wait <= 0.5


async def test_an_unused_slot_handed_back_is_undone_while_nobody_booked_after_it(stores: Stores) -> None:
    """A handed-back slot is undone only while the TAT is still where its booking left it
    (compared exactly, in Redis in microseconds); after another booking it changes nothing."""
    store = stores.budget
    first = await store.reserve("1400", "api", 1.0, 0.0)
    assert isinstance(first, Grant)
    assert first.booking is not None
    assert first.booking.end - first.booking.start == pytest.approx(1.0)
    assert isinstance(await store.reserve("1400", "api", 1.0, 0.0), Refusal)
    again = await store.reserve("1400", "api", 1.0, 0.0, first.booking)
    assert isinstance(again, Grant)
    assert again.wait == 0.0
    assert again.booking is not None
    assert again.booking.start > first.booking.start
    theirs = await store.reserve("1400", "api", 1.0, 5.0)
    assert isinstance(theirs, Grant)
    assert theirs.wait > 0.9
    late = await store.reserve("1400", "api", 1.0, 0.0, again.booking)  # booked after: not undone
    assert isinstance(late, Refusal)


async def test_defer_pushes_the_schedule(stores: Stores) -> None:
    """After "too frequent" the next slot is at least the pause away."""
    store = stores.budget
    await store.defer("1400", "api", 0.8)
    nxt = await store.reserve("1400", "api", 0.01, 5.0)
    assert isinstance(nxt, Grant)
    assert 0.7 < nxt.wait <= 0.8


async def test_pause_stops_every_api_of_the_tenant_until_it_expires(stores: Stores) -> None:
    """A paused tenant gets Paused (with the code and reason) on every API, until it expires."""
    store = stores.budget
    await store.pause("1400", 0.3, 70050, "locked out")
    decision = await store.reserve("1400", "get_room_info", 0.01, 1.0)
    assert isinstance(decision, Paused)
    assert (decision.code, decision.reason) == (70050, "locked out")
    assert 0.1 < decision.left <= 0.3
    assert isinstance(await store.reserve("1401", "get_room_info", 0.01, 1.0), Grant), "other tenants run"
    await asyncio.sleep(0.35)
    assert isinstance(await store.reserve("1400", "set_room_metadata", 0.01, 1.0), Grant)


async def test_schedules_are_per_tenant_and_api(stores: Stores) -> None:
    """Booking one (tenant, API) schedule leaves every other one idle."""
    store = stores.budget
    assert isinstance(await store.reserve("1400", "a", 10.0, 0.0), Grant)
    for scope, api in (("1400", "b"), ("1401", "a")):
        other = await store.reserve(scope, api, 10.0, 0.0)
        assert isinstance(other, Grant)
        assert other.wait == 0.0


# ---------------------------------------------------------------------- signatures


async def test_signatures_are_shared_and_dropped_only_if_current(stores: Stores) -> None:
    """A sig round-trips; dropping another value keeps it; dropping it removes it."""
    sigs = stores.signatures
    sig = Signature(value="sig-1", expires_at=1_800_000_000.0)
    assert await sigs.get("1400:admin") is None
    await sigs.put("1400:admin", sig, ttl=60)
    assert await sigs.get("1400:admin") == sig
    await sigs.drop("1400:admin", "sig-0")
    assert await sigs.get("1400:admin") == sig
    await sigs.drop("1400:admin", "sig-1")
    assert await sigs.get("1400:admin") is None


async def test_a_signature_expires_after_its_ttl(stores: Stores) -> None:
    """A sig put with a TTL is gone once the TTL has passed (the Signer puts it with the time
    left until its refresh margin, so no replica reads a sig due for renewal)."""
    sigs = stores.signatures
    await sigs.put("1400:admin", Signature(value="short", expires_at=1_800_000_000.0), ttl=0.2)
    assert await sigs.get("1400:admin") is not None
    await asyncio.sleep(0.3)
    assert await sigs.get("1400:admin") is None


async def test_the_issue_lock_has_one_holder_and_only_its_token_unlocks(stores: Stores) -> None:
    """Of many concurrent lockers exactly one wins; another token does not unlock; the holder's does."""
    sigs = stores.signatures
    tokens = await asyncio.gather(*(sigs.lock("1400:admin", 5.0) for _ in range(20)))
    held = [t for t in tokens if t is not None]
    assert len(held) == 1
    await sigs.unlock("1400:admin", "not-the-token")
    assert await sigs.lock("1400:admin", 5.0) is None
    await sigs.unlock("1400:admin", held[0])
    assert await sigs.lock("1400:admin", 5.0) is not None


async def test_an_issue_lock_nobody_releases_expires(stores: Stores) -> None:
    """A holder that dies without unlocking blocks the others for the lock's TTL only."""
    sigs = stores.signatures
    assert await sigs.lock("1400:admin", 0.2) is not None
    assert await sigs.lock("1400:admin", 0.2) is None
    await asyncio.sleep(0.3)
    assert await sigs.lock("1400:admin", 0.2) is not None


# ---------------------------------------------------------------------- rooms


async def test_room_cache_generation_fence(stores: Stores) -> None:
    """put stores only at the current generation; invalidate removes the room and moves it on."""
    rooms = stores.rooms(5.0)
    found = await rooms.get("1400:r1")
    assert (found.body, found.generation) == (None, 0)
    assert await rooms.put("1400:r1", b'{"room_id":"r1"}', found.generation)
    hit = await rooms.get("1400:r1")
    assert hit.body == b'{"room_id":"r1"}'
    assert hit.generation == found.generation
    assert 0 <= hit.age < 0.5
    assert hit.stored_at > 0
    await rooms.invalidate("1400:r1")
    gone = await rooms.get("1400:r1")
    assert (gone.body, gone.generation) == (None, 1)
    assert not await rooms.put("1400:r1", b"old", found.generation), "a fill from before the write is refused"
    assert await rooms.put("1400:r1", b"new", gone.generation)
    assert (await rooms.get("1400:r1")).body == b"new"


async def test_room_keys_expire(stores: Stores) -> None:
    """A room is kept TTL + stale bound, then gone."""
    rooms = stores.rooms(0.2)
    await rooms.put("1400:r2", b"x", (await rooms.get("1400:r2")).generation)
    assert (await rooms.get("1400:r2")).body == b"x"
    await asyncio.sleep(0.3)
    assert (await rooms.get("1400:r2")).body is None


async def test_the_fill_lock(stores: Stores) -> None:
    """Redis: of many concurrent lockers exactly one wins, and only the holder's token unlocks.
    Embedded mode differs on purpose: the lock is always granted (``stores/memory.py``), since
    the cache's in-process singleflight already makes one filler per room and generation."""
    rooms = stores.rooms(5.0)
    tokens = await asyncio.gather(*(rooms.lock("1400:r3", 5.0) for _ in range(50)))
    if stores.kind == "memory":
        assert all(t is not None for t in tokens)
        return
    held = [t for t in tokens if t is not None]
    assert len(held) == 1
    await rooms.unlock("1400:r3", "not-the-token")
    assert await rooms.lock("1400:r3", 5.0) is None
    await rooms.unlock("1400:r3", held[0])
    assert await rooms.lock("1400:r3", 5.0) is not None
