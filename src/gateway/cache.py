"""Read-through room cache: short TTL, coalesced fills, stale-if-error, safe invalidation.

A fill records the room's *generation* when it starts and stores its result only if no write
invalidated the room meanwhile; a read that starts after an invalidation never joins a fill
that started before it. Together these give read-your-writes: once a PATCH has invalidated a
room, no older copy can be served or stored again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec

from gateway.coalesce import SingleFlight
from gateway.errors import RateLimited, UpstreamTimeout, UpstreamUnavailable

CacheStatus = Literal["hit", "miss", "stale"]

# Failures for which a recently expired copy beats an error.
_STALE_OK = (UpstreamUnavailable, UpstreamTimeout, RateLimited)


class Lookup(msgspec.Struct, frozen=True):
    """What the store holds for a room: its body and age (if any) and its generation."""

    body: bytes | None
    age: float
    generation: int


class RoomStore(Protocol):
    async def get(self, key: str) -> Lookup: ...

    async def put(self, key: str, body: bytes, generation: int) -> bool: ...

    async def invalidate(self, key: str) -> None: ...


class Filled(msgspec.Struct, frozen=True):
    """A fresh upstream answer: the encoded room and Tencent's RequestId."""

    body: bytes
    upstream_request_id: str


class CacheResult(msgspec.Struct, frozen=True):
    body: bytes
    status: CacheStatus
    upstream_request_id: str | None = None
    coalesced: bool = False


class RoomCache:
    """Serves rooms from the store while fresh, else from one coalesced upstream fill."""

    def __init__(self, *, store: RoomStore, ttl: float, stale_ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._stale_limit = ttl + stale_ttl
        self._flights: SingleFlight[Filled] = SingleFlight()

    async def read(self, key: str, fetch: Callable[[], Awaitable[Filled]], *, bypass: bool = False) -> CacheResult:
        found = await self._store.get(key)
        if found.body is not None and not bypass and found.age < self._ttl:
            return CacheResult(body=found.body, status="hit")

        async def fill() -> Filled:
            filled = await fetch()
            await self._store.put(key, filled.body, found.generation)
            return filled

        try:
            filled, joined = await self._flights.do((key, found.generation), fill)
        except _STALE_OK:
            if found.body is not None and found.age < self._stale_limit:
                return CacheResult(body=found.body, status="stale")
            raise
        return CacheResult(
            body=filled.body, status="miss", upstream_request_id=filled.upstream_request_id, coalesced=joined
        )

    async def invalidate(self, key: str) -> None:
        """Forget the room and fence off fills that started before now."""
        await self._store.invalidate(key)
