"""In-process stores: the embedded single-replica mode, and the fallback of each replica.

They keep the Redis stores' contracts (``tests/test_store_contracts.py`` runs the same cases
against both), TTLs included, with one documented difference: the room store's fill lock is
always granted. In one process the cache's singleflight already makes one filler per room and
generation, and a real lock would make a read after a write wait for the fill that started
before it (Redis's lock does that across replicas; in process nothing needs it).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import secrets
from collections.abc import Callable, Sequence

from gateway.budget import schedule
from gateway.budget.schedule import Booked, Booking, FairState, Paused, Terms, Want
from gateway.cache import Lookup
from gateway.events import Entry, Page, order
from gateway.idempotency import Claim
from gateway.signing import Signature


class MemoryBudgetStore:
    """Schedules and pauses in dicts; atomic because the event loop runs one coroutine at a time."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._schedules: dict[tuple[str, str], FairState] = {}
        self._paused: dict[str, tuple[float, int, str]] = {}

    async def book(
        self,
        scope: str,
        api: str,
        wants: Sequence[Want],
        terms: Terms,
        unbook: Sequence[Booking] = (),
        *,
        then: Callable[[Booked | Paused], None] | None = None,
    ) -> Booked | Paused:
        """(``then`` is not told: the answer is returned at once, in the caller's own step.)"""
        now = self._clock()
        paused = self._paused.get(scope)
        if paused is not None and paused[0] > now:
            return Paused(left=paused[0] - now, code=paused[1], reason=paused[2])
        return schedule.book(self._schedules.setdefault((scope, api), FairState()), now, wants, terms, unbook)

    async def defer(self, scope: str, api: str, pause: float) -> None:
        state = self._schedules.setdefault((scope, api), FairState())
        state.tat = schedule.defer(state.tat, self._clock(), pause)

    async def pause(self, scope: str, seconds: float, code: int, reason: str) -> None:
        self._paused[scope] = (self._clock() + seconds, code, reason)

    def ahead(self, scope: str, api: str) -> float:
        """Seconds from now to the schedule's TAT (0 when idle): how far ahead it is booked."""
        state = self._schedules.get((scope, api))
        return 0.0 if state is None else max(0.0, state.tat - self._clock())


class MemorySeenStore:
    """Keys remembered until they expire, at most ``max_keys`` (past that, the oldest go)."""

    def __init__(self, *, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max = max_keys
        self._until: dict[str, float] = {}  # in insertion order: the oldest first

    async def first(self, key: str, ttl: float) -> bool:
        now = self._clock()
        until = self._until.get(key)
        if until is not None and until > now:
            return False
        self._until.pop(key, None)
        self._until[key] = now + ttl
        while len(self._until) > self._max:
            del self._until[next(iter(self._until))]
        return True


class _Held:
    __slots__ = ("answer", "expires", "fingerprint", "lease_until", "owner", "repeatable")

    def __init__(self, fingerprint: str, owner: str, lease_until: float, repeatable: bool, expires: float) -> None:
        self.fingerprint = fingerprint
        self.owner = owner
        self.lease_until = lease_until
        self.repeatable = repeatable
        self.expires = expires
        self.answer: bytes | None = None


class MemoryKeyStore:
    """Idempotency keys (``idempotency.KeyStore``) until they expire, at most ``max_keys`` (past
    that, the oldest answers and lapsed claims go; a claim still running never does, so a key
    never runs twice here while it runs); atomic because the event loop runs one coroutine at a
    time."""

    def __init__(self, *, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max = max_keys
        self._keys: dict[str, _Held] = {}  # in insertion order: the oldest first

    async def claim(
        self, key: str, fingerprint: str, owner: str, *, lease: float, ttl: float, repeatable: bool
    ) -> Claim:
        now = self._clock()
        held = self._keys.get(key)
        if held is None or held.expires <= now:
            self._keys.pop(key, None)
            self._keys[key] = _Held(fingerprint, owner, now + lease, repeatable, now + ttl)
            self._evict(now)
            return Claim("claimed")
        if held.answer is not None:
            return Claim("kept", held.fingerprint, held.answer)
        if held.lease_until > now or held.fingerprint != fingerprint:
            return Claim("running", held.fingerprint)
        if held.repeatable:
            held.owner, held.lease_until = owner, now + lease
            return Claim("claimed")
        return Claim("abandoned", held.fingerprint)

    def _evict(self, now: float) -> None:
        """Down to ``max_keys``, the oldest first, passing over claims still running (over the
        bound while every key is one: they end within their lease)."""
        while len(self._keys) > self._max:
            oldest = next((k for k, h in self._keys.items() if h.answer is not None or h.lease_until <= now), None)
            if oldest is None:
                return
            del self._keys[oldest]

    async def keep(self, key: str, owner: str, answer: bytes | None, ttl: float) -> None:
        held = self._keys.get(key)
        if held is None or held.owner != owner:
            return
        if answer is None:
            del self._keys[key]
        else:
            held.answer, held.expires = answer, self._clock() + ttl


class MemorySignatureStore:
    """Signatures that expire after the ``ttl`` they were put with, and an issue lock per key
    that expires too (a holder that never unlocks does not block issuing for ever)."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sigs: dict[str, tuple[Signature, float]] = {}  # signature, when it expires
        self._locks: dict[str, tuple[str, float]] = {}  # holder's token, when the lock expires

    async def get(self, key: str) -> Signature | None:
        entry = self._sigs.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def put(self, key: str, sig: Signature, ttl: float) -> None:
        now = self._clock()
        self._sigs = {k: v for k, v in self._sigs.items() if v[1] > now}  # a few keys: one per tenant
        self._sigs[key] = (sig, now + ttl)

    async def drop(self, key: str, value: str) -> None:
        if (current := await self.get(key)) is not None and current.value == value:
            del self._sigs[key]

    async def lock(self, key: str, ttl: float) -> str | None:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(8)
        self._locks[key] = (token, now + ttl)
        return token

    async def unlock(self, key: str, token: str) -> None:
        if (held := self._locks.get(key)) is not None and held[0] == token:
            del self._locks[key]


class MemoryRoomStore:
    """Rooms with their store time, and a generation per invalidated room.

    A room is kept ``max_age`` seconds (the cache's TTL plus its stale bound), as Redis keeps it.
    Bounded: past ``max_rooms`` the expired entries go first, then the oldest. Generations are
    kept ``fence_seconds`` (longer than any fill may last) after the invalidation that set them.
    """

    def __init__(
        self, *, clock: Callable[[], float], max_age: float, max_rooms: int, fence_seconds: float = 120.0
    ) -> None:
        self._clock = clock
        self._max_age = max_age
        self._max_rooms = max_rooms
        self._fence = fence_seconds
        self._rooms: dict[str, tuple[bytes, float]] = {}
        self._generations: dict[str, tuple[int, float]] = {}
        self._counter = 0
        self._copies: dict[str, float] = {}  # rooms held as copies of the shared store's: its store time

    async def get(self, key: str) -> Lookup:
        generation = self._generations.get(key, (0, 0.0))[0]
        entry = self._rooms.get(key)
        age = 0.0 if entry is None else self._clock() - entry[1]
        if entry is None or age >= self._max_age:
            return Lookup(body=None, age=0.0, generation=generation)
        return Lookup(body=entry[0], age=age, generation=generation, stored_at=entry[1])

    async def put(self, key: str, body: bytes, generation: int) -> bool:
        if self._generations.get(key, (0, 0.0))[0] != generation:
            return False  # a write invalidated the room while this fill was in flight
        self._copies.pop(key, None)
        self._store(key, body, self._clock())
        return True

    def generation(self, key: str) -> int:
        """The room's generation here now (a fence for ``keep``)."""
        return self._generations.get(key, (0, 0.0))[0]

    def keep(self, key: str, body: bytes, age: float, stored_at: float | None, generation: int) -> None:
        """Hold a copy of what the shared store (Redis) served or stored, as old as it is there,
        so that it can be served stale if Redis is lost; not if a write invalidated the room here
        since ``generation`` was read (before the shared call began). Cheap when the copy is
        already held: ``stored_at``, the shared store's store time, tells (None: not known, as
        for a fill just stored; kept then, and once more when a read shows its store time)."""
        if stored_at is not None and self._copies.get(key) == stored_at:
            return
        if self._generations.get(key, (0, 0.0))[0] != generation:
            return
        self._copies[key] = stored_at if stored_at is not None else float("nan")  # nan equals nothing
        self._store(key, body, self._clock() - age)

    def drop_copy(self, key: str) -> None:
        """The shared store holds no such room (it expired, or another replica's write
        invalidated it): this replica's copy must not outlive it."""
        if self._copies.pop(key, None) is not None:
            self._rooms.pop(key, None)

    def _store(self, key: str, body: bytes, stored: float) -> None:
        self._rooms.pop(key, None)  # re-insert at the end: dict order is store order
        self._rooms[key] = (body, stored)
        if len(self._rooms) > self._max_rooms:
            self._prune()

    async def invalidate(self, key: str) -> None:
        self._counter += 1
        self._rooms.pop(key, None)
        self._copies.pop(key, None)
        self._generations[key] = (self._counter, self._clock())
        if len(self._generations) > self._max_rooms:
            horizon = self._clock() - self._fence
            self._generations = {k: v for k, v in self._generations.items() if v[1] > horizon}

    async def lock(self, key: str, ttl: float) -> str | None:
        return "local"  # one process: the in-process singleflight already makes one filler

    async def unlock(self, key: str, token: str) -> None:
        return None

    def _prune(self) -> None:
        horizon = self._clock() - self._max_age
        self._rooms = {k: v for k, v in self._rooms.items() if v[1] > horizon}
        while len(self._rooms) > self._max_rooms:
            del self._rooms[next(iter(self._rooms))]
        self._copies = {k: v for k, v in self._copies.items() if k in self._rooms}


class _Kept:
    def __init__(self, floor: str) -> None:
        self.entries: list[Entry] = []
        self.places: list[tuple[int, int]] = []  # the entries' order, for bisect
        self.head = 0  # entries[head:] are kept; the rest are trimmed, awaiting compaction
        self.trimmed = floor  # the newest id no longer kept (or the floor: before this process)
        self.arrived = asyncio.Event()


class MemoryEventLog:
    """Each tenant's events in process (embedded mode), ids numbered as Redis numbers them.

    Kept: the newest ``keep`` entries, none older than ``keep_seconds`` (trimmed as entries are
    added). Entries from before this process are not known: a position older than its start
    reads as lost, through the start (``floor``)."""

    def __init__(self, *, wall_clock: Callable[[], float], keep: int, keep_seconds: float, block: float = 1.0) -> None:
        self._wall_clock = wall_clock
        self._keep = keep
        self._keep_ms = int(keep_seconds * 1000)
        self._block = block
        self._floor = (int(wall_clock() * 1000), 0)
        self._last = self._floor
        self._logs: dict[str, _Kept] = {}

    def _kept(self, scope: str) -> _Kept:
        kept = self._logs.get(scope)
        if kept is None:
            kept = self._logs[scope] = _Kept(f"{self._floor[0]}-{self._floor[1]}")
        return kept

    async def publish(self, scope: str, command: str, data: bytes) -> str | None:
        kept = self._kept(scope)
        now = int(self._wall_clock() * 1000)
        place = (now, 0) if now > self._last[0] else (self._last[0], self._last[1] + 1)
        self._last = place
        entry = Entry(f"{place[0]}-{place[1]}", command, data)
        kept.entries.append(entry)
        kept.places.append(place)
        oldest = now - self._keep_ms
        while len(kept.entries) - kept.head > self._keep or kept.places[kept.head][0] < oldest:
            kept.trimmed = kept.entries[kept.head].id
            kept.head += 1
        if kept.head > 1024 and kept.head * 2 > len(kept.entries):
            del kept.entries[: kept.head], kept.places[: kept.head]
            kept.head = 0
        kept.arrived.set()
        kept.arrived = asyncio.Event()
        return entry.id

    async def tail(self, scope: str) -> str:
        kept = self._kept(scope)
        return kept.entries[-1].id if len(kept.entries) > kept.head else kept.trimmed

    async def page(self, scope: str, after: str, count: int) -> Page:
        kept = self._kept(scope)
        place = order(after)
        start = bisect.bisect_right(kept.places, place, lo=kept.head)
        entries = kept.entries[start : start + count]
        if place < order(kept.trimmed):
            return Page(entries, lost=True, through=kept.trimmed)
        return Page(entries)

    async def wait(self, scope: str, after: str) -> Page:
        kept = self._kept(scope)
        page = await self.page(scope, after, 1000)
        if page.entries or page.lost:
            return page
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._block):
                await kept.arrived.wait()
        return await self.page(scope, after, 1000)
