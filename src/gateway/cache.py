"""Read-through room cache: short TTL, coalesced fills, stale-if-error, safe invalidation.

A fill records the room's *generation* when it starts and stores its result only if no write
invalidated the room meanwhile; a read that starts after an invalidation never joins a fill
that started before it. Together these give read-your-writes: once a PATCH has invalidated a
room, no older copy can be served or stored again.

Fills are coalesced twice: in process (singleflight), then across replicas by a fill lock in the
store. A replica that finds the lock taken polls for the value the holder stores; if the holder
dies, its lock expires after ``lock_ttl`` and a waiter takes over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec

from gateway.coalesce import SingleFlight
from gateway.errors import RateLimited, UpstreamTimeout, UpstreamUnavailable

CacheStatus = Literal["hit", "miss", "stale"]

# Failures for which a recently expired copy beats an error.
_STALE_OK = (UpstreamUnavailable, UpstreamTimeout, RateLimited)


class Lookup(msgspec.Struct, frozen=True):
    """What the store holds for a room: its body, age and store time (if any) and its generation."""

    body: bytes | None
    age: float
    generation: int
    stored_at: float = 0.0


class RoomStore(Protocol):
    async def get(self, key: str) -> Lookup: ...

    async def put(self, key: str, body: bytes, generation: int) -> bool: ...

    async def invalidate(self, key: str) -> None: ...

    async def lock(self, key: str, ttl: float) -> str | None:
        """A token when this caller now holds the room's fill lock, else None."""
        ...

    async def unlock(self, key: str, token: str) -> None: ...


class Filled(msgspec.Struct, frozen=True):
    """A fresh upstream answer: the encoded room and Tencent's RequestId."""

    body: bytes
    upstream_request_id: str


class CacheResult(msgspec.Struct, frozen=True):
    body: bytes
    status: CacheStatus
    upstream_request_id: str | None = None
    coalesced: bool = False


def room_key(sdkappid: int, room_id: str) -> str:
    """A room's cache key: the tenant's SDKAppID and the room id."""
    return f"{sdkappid}:{room_id}"


class RoomCache:
    """Serves rooms from the store while fresh, else from one coalesced upstream fill."""

    def __init__(
        self,
        *,
        store: RoomStore,
        ttl: float,
        stale_ttl: float,
        lock_ttl: float = 5.0,
        poll: float = 0.01,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._stale_limit = ttl + stale_ttl
        self._lock_ttl = lock_ttl
        self._poll = poll
        self._sleep = sleep
        self._flights: SingleFlight[Filled] = SingleFlight()
        self.fill_waits = 0

    async def read(self, key: str, fetch: Callable[[], Awaitable[Filled]], *, bypass: bool = False) -> CacheResult:
        found = await self._store.get(key)
        if found.body is not None and not bypass and found.age < self._ttl:
            return CacheResult(body=found.body, status="hit")

        try:
            filled, joined = await self._flights.do((key, found.generation), lambda: self._fill(key, found, fetch))
        except _STALE_OK:
            if found.body is not None and found.age < self._stale_limit:
                return CacheResult(body=found.body, status="stale")
            raise
        return CacheResult(
            body=filled.body, status="miss", upstream_request_id=filled.upstream_request_id, coalesced=joined
        )

    async def _fill(self, key: str, found: Lookup, fetch: Callable[[], Awaitable[Filled]]) -> Filled:
        """Fetch under the fleet-wide fill lock, or wait for the replica that holds it (at most
        ``lock_ttl``: then fetch anyway, whatever the lock says)."""
        waited = False
        give_up = asyncio.get_running_loop().time() + self._lock_ttl
        while True:
            token = await self._store.lock(key, self._lock_ttl)
            if token is None and asyncio.get_running_loop().time() >= give_up:
                token = ""  # waited long enough: fill without the fleet's lock
            if token is not None:
                try:
                    if token:  # double-check: the previous holder may have filled it meanwhile
                        body = self._filled_since(found, await self._store.get(key))
                        if body is not None:
                            return Filled(body=body, upstream_request_id="")
                    filled = await fetch()
                    await self._store.put(key, filled.body, found.generation)
                    return filled
                finally:
                    if token:
                        await self._store.unlock(key, token)
            if not waited:
                self.fill_waits += 1
                waited = True
            await self._sleep(self._poll)
            body = self._filled_since(found, await self._store.get(key))
            if body is not None:
                return Filled(body=body, upstream_request_id="")  # another replica's fill

    def _filled_since(self, found: Lookup, seen: Lookup) -> bytes | None:
        """``seen``'s body if it is a fresh fill stored after ``found`` was read, with no write between."""
        newer = found.body is None or seen.stored_at > found.stored_at
        if seen.body is not None and newer and seen.age < self._ttl and seen.generation == found.generation:
            return seen.body
        return None

    async def invalidate(self, key: str) -> None:
        """Forget the room and fence off fills that started before now."""
        await self._store.invalidate(key)
