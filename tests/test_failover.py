"""Shared state while Redis answers, in-process state while it does not (``stores/failover.py``),
on a real redis-server that the tests kill; and the Signer's cross-replica path: another replica
holds the issue lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.cache import Lookup
from gateway.health import Breaker
from gateway.signing import Signature, Signer
from gateway.stores.failover import FailoverRoomStore, FailoverSignatureStore
from gateway.stores.memory import MemoryRoomStore, MemorySignatureStore
from gateway.stores.redis import Redis, RedisRoomStore, RedisSignatureStore, connect
from gateway.tenants import Secret, Tenant
from live_engine_emulator import Emulator
from live_engine_emulator.state import HTTP_502
from tests.redis_servers import RedisServer, standalone
from tests.support import start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"

SIG = Signature(value="sig-1", expires_at=1_800_000_000.0)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill."""
    with standalone() as server:
        yield server


@pytest.fixture
async def redis(own_redis: RedisServer) -> AsyncIterator[Redis]:
    wrapper = Redis(connect(own_redis.url, timeout=0.3), prefix="f:", timeout=0.3)
    try:
        yield wrapper
    finally:
        await wrapper.aclose()


def breaker() -> Breaker:
    """The production breaker: degraded after three failures within a second."""
    return Breaker(cool_off=60.0, clock=time.monotonic)


async def test_signatures_fall_back_to_the_replica_and_a_dropped_one_stays_dropped(
    own_redis: RedisServer, redis: Redis
) -> None:
    """A sig is put in both tiers, so it is still served from the replica when Redis dies; one
    Tencent rejected is dropped from both, so a later outage cannot bring it back."""
    local = MemorySignatureStore(clock=time.time)
    gate = breaker()
    store = FailoverSignatureStore(shared=RedisSignatureStore(redis), local=local, breaker=gate)
    await store.put("1400:admin", SIG, ttl=60)
    assert await RedisSignatureStore(redis).get("1400:admin") == SIG
    assert await local.get("1400:admin") == SIG
    rejected = Signature(value="sig-0", expires_at=1_800_000_000.0)
    await store.put("1400:old", rejected, ttl=60)
    await store.drop("1400:old", "sig-0")
    assert await local.get("1400:old") is None
    own_redis.kill()
    for _ in range(3):  # each a failed Redis call, then the replica's answer
        assert await store.get("1400:admin") == SIG
        assert await store.get("1400:old") is None
    assert gate.degraded
    await store.put("1400:new", SIG, ttl=60)  # while degraded: the replica's tier alone
    assert await store.get("1400:new") == SIG
    token = await store.lock("1400:admin", 5.0)  # the replica's own lock now
    assert token is not None
    assert await store.lock("1400:admin", 5.0) is None


async def test_a_sig_rejected_during_an_outage_is_not_taken_back_from_redis(
    own_redis: RedisServer, redis: Redis
) -> None:
    """Tencent rejects a sig while Redis is unreachable (the drop reaches only the replica), and
    Redis comes back still holding it (or a failover brings back an older copy): the replica
    does not use it again; a new sig put afterwards is served."""
    gate = Breaker(cool_off=0.2, clock=time.monotonic)
    local = MemorySignatureStore(clock=time.time)
    store = FailoverSignatureStore(shared=RedisSignatureStore(redis), local=local, breaker=gate)
    await store.put("1400:admin", SIG, ttl=60)
    own_redis.kill()
    for _ in range(3):
        await store.get("1400:admin")
    assert gate.degraded
    await store.drop("1400:admin", SIG.value)  # rejected by Tencent now
    own_redis.start()
    await RedisSignatureStore(redis).put("1400:admin", SIG, ttl=60)  # the stale copy, back in Redis
    await asyncio.sleep(0.25)  # the breaker's cool-off: the next call tries Redis again
    assert await store.get("1400:admin") is None
    fresh = Signature(value="sig-2", expires_at=1_800_000_000.0)
    await store.put("1400:admin", fresh, ttl=60)
    assert await store.get("1400:admin") == fresh


async def test_a_missed_fill_lock_call_means_wait_unless_redis_is_down() -> None:
    """One failed lock call while the breaker is still closed answers "not yours": another
    replica may hold the lock, so the cache waits for its value instead of calling Tencent a
    second time. Once the breaker opens (Redis is down), the replica's own lock is taken."""
    dead = Redis(connect("redis://127.0.0.1:1", timeout=0.2), prefix="x:", timeout=0.2)
    gate = breaker()
    rooms = FailoverRoomStore(
        shared=RedisRoomStore(dead, keep=5.0),
        local=MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10),
        breaker=gate,
    )
    assert await rooms.lock("1400:r1", 5.0) is None
    assert not gate.degraded
    assert await rooms.lock("1400:r1", 5.0) is None
    assert await rooms.lock("1400:r1", 5.0) is not None  # the third failure opened the breaker
    assert gate.degraded
    assert await rooms.lock("1400:r1", 5.0) is not None  # degraded: straight to the replica's lock
    await dead.aclose()


async def test_an_invalidation_reaches_the_replica_tier_too(own_redis: RedisServer, redis: Redis) -> None:
    """A write invalidates the room in both tiers, so the replica's older copy cannot be served
    in a later outage; while Redis is up, reads and fills go to Redis."""
    local = MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10)
    gate = breaker()
    rooms = FailoverRoomStore(shared=RedisRoomStore(redis, keep=5.0), local=local, breaker=gate)
    assert await local.put("1400:r1", b"old", 0)  # filled during an earlier outage
    assert await rooms.put("1400:r1", b"shared", 0)
    assert (await rooms.get("1400:r1")).body == b"shared"
    await rooms.invalidate("1400:r1")
    assert (await rooms.get("1400:r1")).body is None
    own_redis.kill()
    for _ in range(3):
        assert (await rooms.get("1400:r1")).body is None
    assert gate.degraded


# ---------------------------------------------------------------------- the Signer across replicas

TENANT = Tenant(
    name="t", sdkappid=1400000001, identifier="administrator", secret_key=Secret("k" * 32), base_url="http://x", qps=200
)


class Clock:
    """Wall time that moves only when the Signer sleeps; ``at`` runs a step at a given moment."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.steps: list[tuple[float, object]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        due = [s for s in self.steps if s[0] <= self.now]
        self.steps = [s for s in self.steps if s[0] > self.now]
        for _, step in due:
            await step()  # type: ignore[operator]


def replica(clock: Clock, store: MemorySignatureStore, issued: list[str]) -> Signer:
    """A replica's Signer on the fleet's store (the memory store keeps Redis's contract)."""

    def issue(tenant: Tenant, ttl: int) -> str:
        issued.append(f"ours-{len(issued) + 1}")
        return issued[-1]

    return Signer(store=store, ttl=7200, margin=600, wall_clock=clock, issue=issue, wait=2.0, sleep=clock.sleep)


async def held_elsewhere(clock: Clock, old: Signature | None) -> MemorySignatureStore:
    """The fleet's store with ``old`` in it (due for renewal) and another replica holding the issue lock."""
    store = MemorySignatureStore(clock=clock)
    if old is not None:
        await store.put(Signer.key(TENANT), old, ttl=3600)
    assert await store.lock(Signer.key(TENANT), 10.0) is not None  # the other replica's
    return store


async def test_while_another_replica_renews_the_old_sig_serves_if_over_a_minute_is_left() -> None:
    """Due for renewal but valid for more than 60 s: used as it is, with no wait and no issue."""
    clock, issued = Clock(), []
    old = Signature(value="old", expires_at=clock.now + 300)
    signer = replica(clock, await held_elsewhere(clock, old), issued)
    assert await signer.get(TENANT) == "old"
    assert (issued, clock.now) == ([], 1_700_000_000.0)


async def test_with_under_a_minute_left_it_waits_for_the_other_replicas_sig() -> None:
    """Valid for less than 60 s: it polls the store and takes the sig the other replica stores."""
    clock, issued = Clock(), []
    old = Signature(value="old", expires_at=clock.now + 30)
    store = await held_elsewhere(clock, old)
    theirs = Signature(value="theirs", expires_at=clock.now + 7200)

    async def other_replica_finishes() -> None:
        await store.put(Signer.key(TENANT), theirs, ttl=6600)

    clock.steps.append((clock.now + 0.3, other_replica_finishes))
    assert await replica(clock, store, issued).get(TENANT) == "theirs"
    assert issued == []
    assert 0.3 <= clock.now - 1_700_000_000.0 < 0.4


async def test_if_the_other_replica_never_finishes_it_issues_after_the_wait() -> None:
    """The issuer died holding the lock: after ``wait`` this replica issues a sig itself."""
    clock, issued = Clock(), []
    signer = replica(clock, await held_elsewhere(clock, None), issued)
    assert await signer.get(TENANT) == "ours-1"
    assert issued == ["ours-1"]
    assert clock.now - 1_700_000_000.0 >= 2.0


# ---------------------------------------------------------------------- stale reads through an outage


async def test_a_room_redis_served_is_kept_here_as_old_as_it_was(own_redis: RedisServer, redis: Redis) -> None:
    """Every room Redis serves or stores through the replica is copied into its own store with
    its age in Redis: once Redis is lost, the copy is there, no younger than it was."""
    local = MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10)
    rooms = FailoverRoomStore(shared=RedisRoomStore(redis, keep=5.0), local=local, breaker=breaker())
    assert await rooms.put("1400:r1", b"filled", 0)  # a fill, stored through this replica
    assert (await local.get("1400:r1")).body == b"filled"
    await RedisRoomStore(redis, keep=5.0).put("1400:r2", b"theirs", 0)  # another replica's fill
    await asyncio.sleep(0.2)
    served = await rooms.get("1400:r2")
    assert served.body == b"theirs"
    own_redis.kill()
    for _ in range(3):
        copy = await rooms.get("1400:r2")
        assert copy.body == b"theirs"
        assert copy.age >= served.age >= 0.2


class Late:
    """A Redis room store whose reads come back late: each read is made, then held until
    ``release`` is set (a reply computed before a write that arrives after it)."""

    def __init__(self, store: RedisRoomStore) -> None:
        self._store = store
        self.release = asyncio.Event()

    async def get(self, key: str) -> Lookup:
        found = await self._store.get(key)
        await self.release.wait()
        return found

    async def put(self, key: str, body: bytes, generation: int) -> bool:
        return await self._store.put(key, body, generation)

    async def invalidate(self, key: str) -> None:
        await self._store.invalidate(key)

    async def lock(self, key: str, ttl: float) -> str | None:
        return await self._store.lock(key, ttl)

    async def unlock(self, key: str, token: str) -> None:
        await self._store.unlock(key, token)


async def test_no_copy_is_kept_of_a_read_a_write_overtook(redis: Redis) -> None:
    """A Redis read that started before a write and answers after it returns the old room to its
    caller, but leaves no copy here: a later outage cannot serve the pre-write room."""
    shared = RedisRoomStore(redis, keep=5.0)
    await shared.put("1400:r1", b"before", 0)
    local = MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10)
    late = Late(shared)
    rooms = FailoverRoomStore(shared=late, local=local, breaker=breaker())
    read = asyncio.create_task(rooms.get("1400:r1"))
    await asyncio.sleep(0.05)
    await rooms.invalidate("1400:r1")  # the write, while the read's reply is on its way
    late.release.set()
    assert (await read).body == b"before"
    assert (await local.get("1400:r1")).body is None


async def test_through_an_outage_a_recent_room_is_served_stale_and_a_write_still_wins(
    own_redis: RedisServer, upstream_url: str, emulator: Emulator
) -> None:
    """A gateway in Redis mode reads a room, then loses Redis while Tencent fails too: the
    replica's copy is served ``X-Cache: stale``. A write through it during the outage removes
    the copy, so a later failing read is an error, never the pre-write room."""
    async with start_gateway(
        upstream_url, redis_url=own_redis.url, cache_ttl=0.2, stale_ttl=10.0, retry_attempts=2
    ) as gateway:
        assert (await gateway.client.get(ROOM)).status_code == 200  # filled through Redis
        own_redis.kill()
        await asyncio.sleep(0.3)  # past the TTL
        emulator.fail_next("get_room_info", HTTP_502, HTTP_502)
        stale = await gateway.client.get(ROOM)
        assert (stale.status_code, stale.headers["x-cache"]) == (200, "stale"), stale.text
        assert stale.json()["room_name"] == "room-1"
        assert (await gateway.client.patch(ROOM, json={"room_name": "During"})).status_code == 204
        emulator.fail_next("get_room_info", HTTP_502, HTTP_502)
        assert (await gateway.client.get(ROOM)).status_code == 502
        fresh = await gateway.client.get(ROOM)
    assert (fresh.status_code, fresh.json()["room_name"]) == (200, "During")


async def test_a_write_through_another_replica_before_the_outage_removes_the_copy(
    own_redis: RedisServer, redis: Redis
) -> None:
    """Replica A holds a copy; replica B's write invalidates the room in Redis; A's next read
    finds no room there and drops its copy. So when Redis is lost afterwards, A cannot serve the
    room as it was before B's write (a write acknowledged before the outage stays seen)."""
    a_local = MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10)
    a = FailoverRoomStore(shared=RedisRoomStore(redis, keep=5.0), local=a_local, breaker=breaker())
    b = FailoverRoomStore(
        shared=RedisRoomStore(redis, keep=5.0),
        local=MemoryRoomStore(clock=time.monotonic, max_age=5.0, max_rooms=10),
        breaker=breaker(),
    )
    assert await a.put("1400:r1", b"before", 0)
    assert (await a_local.get("1400:r1")).body == b"before"
    await b.invalidate("1400:r1")  # B's write
    assert (await a.get("1400:r1")).body is None  # Redis: no room (a fill would follow)
    own_redis.kill()
    for _ in range(3):
        assert (await a.get("1400:r1")).body is None
