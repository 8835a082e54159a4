"""Shared store while Redis answers, in-process store while it does not.

The budget does its own fail-over (it must also re-pace; see ``budget/modes.py``); the room
cache and the signatures use these. Writes that matter to every replica (invalidations, dropped
signatures) go to both tiers so that a later degraded period cannot resurrect old state, and a
replica remembers the UserSigs Tencent rejected: a Redis that comes back with an older copy (a
drop made while it was unreachable, or a failover to a replica that lost writes) cannot hand one
back to it. Room events are held in process while Redis is unreachable and published, in
order, when it answers again. Idempotency keys are claimed in both tiers, so that one key never
sends twice through one replica, whatever Redis does.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.cache import Lookup, RoomStore
from gateway.events import Page
from gateway.health import Breaker, StoreUnavailable
from gateway.idempotency import Claim
from gateway.signing import Signature, SignatureStore
from gateway.stores.memory import MemoryKeyStore, MemoryRoomStore, MemorySeenStore
from gateway.stores.redis import RedisEventLog, RedisKeyStore, RedisSeenStore

T = TypeVar("T")
REVOKED_KEPT = 1024  # UserSigs Tencent rejected that a replica remembers (rare: a few per key rotation)


async def _either(
    breaker: Breaker, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]], *, by: str
) -> T:
    if breaker.allows():
        try:
            result = await shared()
        except StoreUnavailable as exc:
            breaker.failed(exc)
        else:
            breaker.succeeded(by=by)
            return result
    return await local()


class FailoverRoomStore:
    """Redis's rooms while it answers; the replica's own while it does not. The replica keeps a
    copy of every room Redis served or stored through it (bounded like its own cache), as old as
    it is in Redis, so that a room read recently can still be served stale when Redis is lost
    and Tencent cannot be called. A write invalidates both tiers, and a copy is not kept if a
    write invalidated the room here while the Redis call was under way: read-your-writes through
    one replica holds across an outage too. A copy goes when Redis shows the room gone (expired,
    or invalidated by another replica's write), so a write acknowledged before the outage is not
    undone by it."""

    def __init__(self, *, shared: RoomStore, local: MemoryRoomStore, breaker: Breaker) -> None:
        self._shared = shared
        self._local = local
        self._breaker = breaker

    async def get(self, key: str) -> Lookup:
        if self._breaker.allows():
            fence = self._local.generation(key)
            try:
                found = await self._shared.get(key)
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
            else:
                self._breaker.succeeded(by="the room store")
                if found.body is not None:
                    self._local.keep(key, found.body, found.age, found.stored_at, fence)
                else:
                    self._local.drop_copy(key)
                return found
        return await self._local.get(key)

    async def put(self, key: str, body: bytes, generation: int) -> bool:
        if self._breaker.allows():
            fence = self._local.generation(key)
            try:
                stored = await self._shared.put(key, body, generation)
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
            else:
                self._breaker.succeeded(by="the room store")
                if stored:
                    self._local.keep(key, body, 0.0, None, fence)
                return stored
        return await self._local.put(key, body, generation)

    async def invalidate(self, key: str) -> None:
        await self._local.invalidate(key)
        await _either(self._breaker, lambda: self._shared.invalidate(key), _nothing, by="the room store")

    async def lock(self, key: str, ttl: float) -> str | None:
        """The fleet's fill lock. If Redis missed this one call but is not down, another replica
        may hold the lock: answer "not yours" so the cache waits for the value (and retries)
        rather than fill from here and make a second upstream call."""
        if self._breaker.allows():
            try:
                token = await self._shared.lock(key, ttl)
            except StoreUnavailable as exc:
                self._breaker.failed(exc)
                if not self._breaker.degraded:
                    return None
            else:
                self._breaker.succeeded(by="the room store")
                return token
        return await self._local.lock(key, ttl)

    async def unlock(self, key: str, token: str) -> None:
        await _either(self._breaker, lambda: self._shared.unlock(key, token), _nothing, by="the room store")


class FailoverSeenStore:
    """Remembered fleet-wide while Redis answers, by this replica while it does not; a key is
    remembered here too, so a duplicate arriving during an outage is still dropped."""

    def __init__(self, *, shared: RedisSeenStore, local: MemorySeenStore, breaker: Breaker) -> None:
        self._shared = shared
        self._local = local
        self._breaker = breaker

    async def first(self, key: str, ttl: float) -> bool:
        here = await self._local.first(key, ttl)
        return await _either(
            self._breaker,
            lambda: self._shared.first(key, ttl),
            lambda: _value(here),
            by="the callbacks' duplicate check",
        )


class FailoverKeyStore:
    """Idempotency keys in both tiers. The replica's own tier is asked first and always holds
    what ran here: a repeat through this replica finds it even while Redis is unreachable (or
    after Redis lost it). Redis's tier then says what the fleet did; while it does not answer,
    the replica's tier alone decides (another replica may then run the same key: README,
    "Retrying writes"). Answers are kept here at once and in Redis in the background
    (``redis.Batch``: with the next claims, under load): the claim is a keyed write's one extra
    round trip. A repeat on another replica meanwhile sees the key running for that moment, and
    waits."""

    def __init__(self, *, shared: RedisKeyStore, local: MemoryKeyStore, breaker: Breaker) -> None:
        self._shared = shared
        self._local = local
        self._breaker = breaker

    async def claim(
        self, key: str, fingerprint: str, owner: str, *, lease: float, ttl: float, repeatable: bool
    ) -> Claim:
        here = await self._local.claim(key, fingerprint, owner, lease=lease, ttl=ttl, repeatable=repeatable)
        if here.state != "claimed":
            return here
        fleet = await _either(
            self._breaker,
            lambda: self._shared.claim(key, fingerprint, owner, lease=lease, ttl=ttl, repeatable=repeatable),
            lambda: _value(here),
            by="the idempotency keys",
        )
        if fleet.state != "claimed":  # another replica has it: not ours to hold here
            await self._local.keep(key, owner, None, ttl)
        return fleet

    async def keep(self, key: str, owner: str, answer: bytes | None, ttl: float) -> None:
        await self._local.keep(key, owner, answer, ttl)
        if self._breaker.allows():
            await self._shared.keep(key, owner, answer, ttl)  # (queued: sent in the background)

    async def aclose(self) -> None:
        """Send the answers still on their way to Redis (each bounded by its timeout)."""
        await self._shared.aclose()


class FailoverSignatureStore:
    def __init__(self, *, shared: SignatureStore, local: SignatureStore, breaker: Breaker) -> None:
        self._shared = shared
        self._local = local
        self._breaker = breaker
        self._revoked: OrderedDict[str, None] = OrderedDict()  # rejected UserSigs, oldest first

    async def get(self, key: str) -> Signature | None:
        """The current sig, never one this replica saw rejected (whatever Redis still holds)."""
        sig = await _either(
            self._breaker, lambda: self._shared.get(key), lambda: self._local.get(key), by="the UserSig store"
        )
        return None if sig is None or sig.value in self._revoked else sig

    async def put(self, key: str, sig: Signature, ttl: float) -> None:
        await self._local.put(key, sig, ttl)
        await _either(self._breaker, lambda: self._shared.put(key, sig, ttl), _nothing, by="the UserSig store")

    async def drop(self, key: str, value: str) -> None:
        self._revoked[value] = None
        while len(self._revoked) > REVOKED_KEPT:
            self._revoked.popitem(last=False)
        await self._local.drop(key, value)
        await _either(self._breaker, lambda: self._shared.drop(key, value), _nothing, by="the UserSig store")

    async def lock(self, key: str, ttl: float) -> str | None:
        return await _either(
            self._breaker,
            lambda: self._shared.lock(key, ttl),
            lambda: self._local.lock(key, ttl),
            by="the UserSig store",
        )

    async def unlock(self, key: str, token: str) -> None:
        await _either(self._breaker, lambda: self._shared.unlock(key, token), _nothing, by="the UserSig store")


class FailoverEventLog:
    """Events go to Redis; while it does not answer they are held here (at most ``hold``; past
    that the oldest are dropped, and counted) and published in order when it answers again
    (at the next publish, or ``flush``, which the app calls every second). Reading is Redis's
    only: subscribers wait through an outage and read what they missed afterwards."""

    def __init__(self, *, shared: RedisEventLog, breaker: Breaker, hold: int) -> None:
        self._shared = shared
        self._breaker = breaker
        self._limit = hold
        self.held: deque[tuple[str, str, bytes]] = deque()
        self.dropped = 0
        self._flushing = asyncio.Lock()

    async def publish(self, scope: str, command: str, data: bytes) -> str | None:
        """The entry's id, or None if it is held until Redis answers (after the events held
        before it: order is kept)."""
        if self.held or self._flushing.locked():
            return await self._hold(scope, command, data)
        return await _either(
            self._breaker,
            lambda: self._shared.publish(scope, command, data),
            lambda: self._hold(scope, command, data),
            by="the event log",
        )

    async def _hold(self, scope: str, command: str, data: bytes) -> str | None:
        """Hold the event, then try to publish what is held: None (no id yet)."""
        self.held.append((scope, command, data))
        while len(self.held) > self._limit:
            self.held.popleft()
            self.dropped += 1
        await self.flush()
        return None

    async def flush(self) -> None:
        """Publish what is held, oldest first, while Redis answers."""
        async with self._flushing:
            while self.held and self._breaker.allows():
                scope, command, data = self.held[0]
                try:
                    await self._shared.publish(scope, command, data)
                except StoreUnavailable as exc:
                    self._breaker.failed(exc)
                    return
                self._breaker.succeeded(by="the event log")
                self.held.popleft()

    async def tail(self, scope: str) -> str:
        return await self._shared.tail(scope)

    async def page(self, scope: str, after: str, count: int) -> Page:
        return await self._shared.page(scope, after, count)

    async def wait(self, scope: str, after: str) -> Page:
        return await self._shared.wait(scope, after)


async def _nothing() -> None:
    return None


async def _value(value: T) -> T:
    return value
