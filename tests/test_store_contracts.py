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

from gateway.budget import BudgetStore, Paused
from gateway.budget.schedule import Booked, Booking, Terms, Want
from gateway.cache import RoomStore
from gateway.events import EventLog, order
from gateway.idempotency import Claim, KeyStore
from gateway.signing import Signature, SignatureStore
from gateway.stores.memory import (
    MemoryBudgetStore,
    MemoryEventLog,
    MemoryKeyStore,
    MemoryRoomStore,
    MemorySignatureStore,
)
from gateway.stores.redis import (
    Redis,
    RedisBudgetStore,
    RedisEventLog,
    RedisKeyStore,
    RedisRoomStore,
    RedisSignatureStore,
    connect,
)
from tests.redis_servers import url_for


@dataclass
class Stores:
    """One kind of store: the budget, the signatures, and rooms kept ``keep`` seconds."""

    kind: str
    budget: BudgetStore
    signatures: SignatureStore
    rooms: Callable[[float], RoomStore]
    events: Callable[..., EventLog]  # a tenant's events: the newest ``keep``, none older than ``keep_seconds``
    keys: KeyStore  # Idempotency-Key claims and answers


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
            lambda keep, keep_seconds=3600: MemoryEventLog(
                wall_clock=time.time, keep=keep, keep_seconds=keep_seconds, block=0.2
            ),
            MemoryKeyStore(clock=clock),
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
            lambda keep, keep_seconds=3600: RedisEventLog(
                redis, keep=keep, keep_seconds=keep_seconds, wall_clock=time.time
            ),
            RedisKeyStore(redis),
        )
    finally:
        await redis.aclose()


# ---------------------------------------------------------------------- budget

TERMS = Terms(interval=0.1, horizon=1.05, borrow=0.15, active=10.0)  # long slots: Redis's pace can't matter


async def waits(
    store: BudgetStore,
    *wants: tuple[str, int, int],
    scope: str = "1400",
    api: str = "api",
    terms: Terms = TERMS,
    within: float | None = None,
    unbook: tuple[Booking, ...] = (),
) -> dict[str, list[float]]:
    """Book for (caller, weight, wanted) at once: each caller's waits, in seconds from the store's now."""
    limit = terms.horizon if within is None else within
    booked = await store.book(scope, api, [Want(c, w, n, limit) for c, w, n in wants], terms, unbook)
    assert isinstance(booked, Booked), booked
    return {caller: [round(start - booked.at, 3) for start in starts] for caller, starts in booked.slots.items()}


async def test_a_booking_that_grants_nothing_changes_nothing(stores: Stores) -> None:
    """Callers whose caps are too short get no slot and leave the schedule as it was. (Slots a
    second apart: the 20 refused bookings run on the store's real clock, and must all come
    before the next slot is within their cap, however slow the machine.)"""
    store = stores.budget
    terms = Terms(interval=1.0, horizon=5.0, borrow=5.0, active=10.0)
    assert (await waits(store, ("a", 1, 1), terms=terms))["a"] == [0.0]
    for _ in range(20):
        assert (await waits(store, ("b", 1, 1), terms=terms, within=0.05))["b"] == []
    after = (await waits(store, ("a", 1, 1), terms=terms))["a"]
    assert len(after) == 1
    assert 0.05 < after[0] <= 1.0


async def test_a_batch_books_consecutive_slots_up_to_the_horizon(stores: Stores) -> None:
    """One caller alone asking for 30 slots gets the 11 within the horizon, spaced by the interval."""
    got = (await waits(stores.budget, ("a", 1, 30)))["a"]
    assert got == pytest.approx([k / 10 for k in range(11)], abs=0.01)


async def test_an_unused_slot_handed_back_is_undone_while_nobody_booked_after_it(stores: Stores) -> None:
    """A handed-back slot is undone only while the TAT is still where its booking left it
    (compared exactly, in Redis in microseconds); after another booking it changes nothing."""
    store = stores.budget
    terms = Terms(interval=1.0, horizon=5.0, borrow=5.0, active=10.0)
    first = await store.book("1400", "api", [Want("a", 1, 1, 0.0)], terms)
    assert isinstance(first, Booked)
    start = first.slots["a"][0]
    booking = Booking(start, start + first.interval)
    assert (await waits(store, ("a", 1, 1), terms=terms, within=0.0))["a"] == []
    again = await store.book("1400", "api", [Want("a", 1, 1, 0.0)], terms, [booking])
    assert isinstance(again, Booked)
    assert again.slots["a"][0] == pytest.approx(again.at, abs=1e-6)
    theirs = (await waits(store, ("b", 1, 1), terms=terms))["b"]
    assert theirs[0] > 0.9
    mine = Booking(again.slots["a"][0], again.slots["a"][0] + again.interval)
    late = await waits(store, ("a", 1, 1), terms=terms, within=0.0, unbook=(mine,))  # booked after: not undone
    assert late["a"] == []


async def test_defer_pushes_the_schedule(stores: Stores) -> None:
    """After "too frequent" the next slot is at least the pause away."""
    store = stores.budget
    await store.defer("1400", "api", 0.8)
    nxt = (await waits(store, ("a", 1, 1)))["a"]
    assert 0.7 < nxt[0] <= 0.8


async def test_pause_stops_every_api_of_the_tenant_until_it_expires(stores: Stores) -> None:
    """A paused tenant gets Paused (with the code and reason) on every API, until it expires."""
    store = stores.budget
    await store.pause("1400", 0.3, 70050, "locked out")
    decision = await store.book("1400", "get_room_info", [Want("a", 1, 1, 1.0)], TERMS)
    assert isinstance(decision, Paused)
    assert (decision.code, decision.reason) == (70050, "locked out")
    assert 0.1 < decision.left <= 0.3
    assert (await waits(store, ("a", 1, 1), scope="1401"))["a"] == [0.0], "other tenants run"
    await asyncio.sleep(0.35)
    assert (await waits(store, ("a", 1, 1), api="set_room_metadata"))["a"] == [0.0]


async def test_schedules_are_per_tenant_and_api(stores: Stores) -> None:
    """Booking one (tenant, API) schedule leaves every other one idle."""
    store = stores.budget
    assert (await waits(store, ("a", 1, 5), api="a"))["a"][0] == 0.0
    for scope, api in (("1400", "b"), ("1401", "a")):
        assert (await waits(store, ("a", 1, 1), scope=scope, api=api))["a"] == [0.0]


async def test_callers_asking_together_share_slots_by_weight(stores: Stores) -> None:
    """Weights 3:1, both asking for more than there is: over the horizon's 11 slots the heavier
    caller takes 8 and the lighter 3 (its first slot at once: a newcomer is served by right)."""
    got = await waits(stores.budget, ("heavy", 3, 20), ("light", 1, 20))
    assert len(got["heavy"]) == 8
    assert len(got["light"]) == 3
    assert got["light"][0] == 0.1


async def test_a_newcomer_is_served_before_a_caller_that_booked_the_horizon_alone(stores: Stores) -> None:
    """A caller alone books the whole horizon; a second caller, arriving, waits no more than
    the horizon, and from then on slots alternate (equal weights): nobody queues behind the burst."""
    store = stores.budget
    first = (await waits(store, ("batch", 1, 100)))["batch"]
    assert len(first) == 11
    late = await waits(store, ("batch", 1, 100), ("checkout", 1, 1))
    assert late == {"batch": [], "checkout": []}, "the horizon is booked: nobody gets more yet"
    await asyncio.sleep(0.6)  # the horizon now reaches six slots past the batch's
    later = await waits(store, ("batch", 1, 100), ("checkout", 1, 3))
    assert later["checkout"][0] <= TERMS.horizon
    assert later["checkout"][0] < later["batch"][0], "the newcomer first"
    merged = sorted([(w, "c") for w in later["checkout"]] + [(w, "b") for w in later["batch"]])
    assert [who for _, who in merged[:6]] == ["c", "b", "c", "b", "c", "b"]


async def test_a_caller_over_its_share_only_borrows_free_slots_near_now(stores: Stores) -> None:
    """Once a caller has used its share (another caller is active), it takes no slot beyond the
    borrow window: those stay free for callers within their share."""
    store = stores.budget
    await waits(store, ("quiet", 1, 1))  # active, fleet-wide, for TERMS.active
    got = (await waits(store, ("batch", 1, 100)))["batch"]
    # by right: its share is every other slot; borrowing: free slots within 0.15 s
    assert all(w <= TERMS.horizon for w in got)
    borrowed = [w for w in got if w <= TERMS.borrow + 0.01]
    assert len(borrowed) >= 1
    assert len(got) < 11, "it did not take the whole horizon"


async def test_a_caller_stops_competing_after_the_active_window(stores: Stores) -> None:
    """A caller that stopped asking no longer holds a share: after ``active`` the other gets the
    whole horizon by right."""
    store = stores.budget
    terms = Terms(interval=0.1, horizon=1.05, borrow=0.15, active=0.3)
    await waits(store, ("quiet", 1, 1), terms=terms)
    await asyncio.sleep(0.5)
    got = (await waits(store, ("batch", 1, 100), terms=terms))["batch"]
    assert len(got) == 11


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


# ---------------------------------------------------------------------- events


async def test_events_are_kept_in_order_and_read_after_a_position(stores: Stores) -> None:
    """Ids grow, the tail is the newest, pages read after a position in order and within their
    count, and tenants are apart."""
    events = stores.events(100)
    start = await events.tail("1400")
    ids = [await events.publish("1400", f"Live.C{n}", b'{"n":%d}' % n) for n in range(5)]
    assert all(isinstance(i, str) for i in ids)
    assert [order(i) for i in ids] == sorted(order(i) for i in ids if i)
    assert len(set(ids)) == 5
    assert await events.tail("1400") == ids[-1]
    page = await events.page("1400", start, 3)
    assert not page.lost
    assert [(e.id, e.command, e.data) for e in page.entries] == [
        (ids[n], f"Live.C{n}", b'{"n":%d}' % n) for n in range(3)
    ]
    assert [e.id for e in (await events.page("1400", ids[2], 100)).entries] == ids[3:]
    assert (await events.page("1400", ids[-1], 100)).entries == []
    assert (await events.page("1401", start, 100)).entries == []  # tenants apart


async def test_waiting_for_events(stores: Stores) -> None:
    """``wait`` answers at once with what is there, else within its block with what arrives (or nothing)."""
    events = stores.events(100)
    start = await events.tail("1400")
    assert (await events.wait("1400", start)).entries == []
    first = await events.publish("1400", "Live.C", b"{}")
    assert [e.id for e in (await events.wait("1400", start)).entries] == [first]

    async def later() -> str | None:
        await asyncio.sleep(0.05)
        return await events.publish("1400", "Live.C", b"{}")

    publishing = asyncio.create_task(later())
    got = await events.wait("1400", first)
    assert [e.id for e in got.entries] == [await publishing]


async def test_a_position_behind_what_is_kept_reads_as_lost(stores: Stores) -> None:
    """With 2 kept, after 4: entries past the first are gone through the second; the page goes
    on with what is kept. A position inside what is kept is not lost."""
    events = stores.events(2)
    ids = [await events.publish("1400", "Live.C", b"{}") for _ in range(4)]
    page = await events.page("1400", ids[0], 100)
    assert page.lost
    assert page.through == ids[1]
    assert [e.id for e in page.entries] == ids[2:]
    assert not (await events.page("1400", ids[1], 100)).lost


async def test_a_position_in_a_log_the_store_never_had_reads_as_lost(stores: Stores) -> None:
    """Events from before the store knew them (a restarted process, an emptied Redis) cannot
    be vouched for."""
    assert (await stores.events(10).page("1499", "1000-0", 100)).lost


async def test_events_older_than_the_keep_time_are_trimmed_as_events_are_added(stores: Stores) -> None:
    """Adding an event trims those older than the keep time, and a reader behind them is told
    what was lost."""
    events = stores.events(100, keep_seconds=0.2)
    old = [await events.publish("1400", "Live.C", b"{}") for _ in range(2)]
    await asyncio.sleep(0.3)
    new = await events.publish("1400", "Live.C", b"{}")
    page = await events.page("1400", old[0], 100)
    assert page.lost
    assert page.through == old[1]
    assert [e.id for e in page.entries] == [new]


# ---------------------------------------------------------------------- idempotency keys


async def test_a_key_is_claimed_once_then_answers_what_was_kept(stores: Stores) -> None:
    """The first claim holds the key; while it runs, others see it running (with its
    fingerprint); once its answer is kept, every claim gets that answer."""
    keys = stores.keys
    assert await keys.claim("k1", "fp", "a", lease=10, ttl=60, repeatable=False) == Claim("claimed")
    assert await keys.claim("k1", "fp", "b", lease=10, ttl=60, repeatable=False) == Claim("running", "fp")
    assert await keys.claim("k1", "other", "b", lease=10, ttl=60, repeatable=False) == Claim("running", "fp")
    await keys.keep("k1", "b", b"not the holder", 60)  # only the holder keeps an answer
    assert (await keys.claim("k1", "fp", "b", lease=10, ttl=60, repeatable=False)).state == "running"
    await keys.keep("k1", "a", b"answer", 60)
    assert await keys.claim("k1", "fp", "c", lease=10, ttl=60, repeatable=False) == Claim("kept", "fp", b"answer")
    assert await keys.claim("k1", "x", "c", lease=10, ttl=60, repeatable=False) == Claim("kept", "fp", b"answer")


async def test_a_released_key_is_claimed_again(stores: Stores) -> None:
    """Releasing (no answer to keep) frees the key for the next request."""
    keys = stores.keys
    assert (await keys.claim("k2", "fp", "a", lease=10, ttl=60, repeatable=True)).state == "claimed"
    await keys.keep("k2", "a", None, 60)
    assert (await keys.claim("k2", "fp", "b", lease=10, ttl=60, repeatable=True)).state == "claimed"


async def test_a_lapsed_claim_is_taken_over_if_repeatable_else_abandoned(stores: Stores) -> None:
    """A claim whose lease lapsed with no answer: a repeatable operation's key is claimed again
    (and only the new holder keeps); a not-repeatable one's reads as abandoned, for good."""
    keys = stores.keys
    assert (await keys.claim("rep", "fp", "a", lease=0.05, ttl=60, repeatable=True)).state == "claimed"
    assert (await keys.claim("once", "fp", "a", lease=0.05, ttl=60, repeatable=False)).state == "claimed"
    await asyncio.sleep(0.12)
    assert (await keys.claim("rep", "other", "b", lease=10, ttl=60, repeatable=True)).state == "running"
    assert (await keys.claim("rep", "fp", "b", lease=10, ttl=60, repeatable=True)).state == "claimed"
    await keys.keep("rep", "a", b"late", 60)  # the first holder lost the key
    await keys.keep("rep", "b", b"new", 60)
    assert await keys.claim("rep", "fp", "c", lease=10, ttl=60, repeatable=True) == Claim("kept", "fp", b"new")
    assert await keys.claim("once", "fp", "b", lease=10, ttl=60, repeatable=False) == Claim("abandoned", "fp")
    assert await keys.claim("once", "fp", "c", lease=10, ttl=60, repeatable=False) == Claim("abandoned", "fp")


async def test_keys_expire_after_their_ttl(stores: Stores) -> None:
    """A kept answer goes after the key's ttl; the key is then new."""
    keys = stores.keys
    assert (await keys.claim("k3", "fp", "a", lease=10, ttl=60, repeatable=True)).state == "claimed"
    await keys.keep("k3", "a", b"answer", 0.1)
    await asyncio.sleep(0.2)
    assert (await keys.claim("k3", "other", "b", lease=10, ttl=60, repeatable=True)).state == "claimed"


async def test_a_lead_puts_every_slot_at_least_that_far_ahead(stores: Stores) -> None:
    """With ``lead``, the first slot of an idle schedule starts ``lead`` after the store's now
    (and the next ones at the spacing after it): an answer that reaches its waiters that late
    still finds its slots ahead."""
    got = await waits(stores.budget, ("a", 1, 3), terms=TERMS._replace(lead=0.25))
    assert got["a"] == [0.25, 0.35, 0.45]
    assert (await waits(stores.budget, ("b", 1, 1), scope="other"))["b"] == [0.0]  # (no lead: from now)
