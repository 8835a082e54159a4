"""Admin UserSigs: issued with Tencent's ``tls-sig-api-v2``, cached in two tiers, never logged.

A signature is reused until ``margin`` seconds before it expires, then replaced; the in-process
tier answers without any I/O, the store (process memory, or Redis shared by the fleet) behind it
makes one signature serve every replica. One replica issues under a lock in the store while the
others keep using the old signature (or, with none, wait briefly for the new one). When Tencent
rejects a signature it is dropped from both tiers; the other replicas notice within ``recheck``
seconds, when their in-process copy is checked against the store again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from TLSSigAPIv2 import TLSSigAPIv2

from gateway.tenants import Tenant


class Signature(msgspec.Struct, frozen=True):
    """A UserSig and the unix time it stops being valid."""

    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Signature(expires_at={self.expires_at})"


class SignatureStore(Protocol):
    async def get(self, key: str) -> Signature | None: ...

    async def put(self, key: str, sig: Signature, ttl: float) -> None: ...

    async def drop(self, key: str, value: str) -> None: ...

    async def lock(self, key: str, ttl: float) -> str | None: ...

    async def unlock(self, key: str, token: str) -> None: ...


def issue_usersig(tenant: Tenant, ttl: int) -> str:
    """A fresh admin UserSig for the tenant, valid ``ttl`` seconds from now."""
    api = TLSSigAPIv2(tenant.sdkappid, tenant.secret_key.reveal())
    sig: str = api.gen_sig(tenant.identifier, ttl)
    return sig


class Signer:
    """Hands out a valid admin UserSig per tenant, reusing it until the refresh margin."""

    def __init__(
        self,
        *,
        store: SignatureStore,
        ttl: int,
        margin: int,
        wall_clock: Callable[[], float],
        issue: Callable[[Tenant, int], str] = issue_usersig,
        recheck: float = 5.0,
        wait: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._margin = margin
        self._now = wall_clock
        self._issue = issue
        self._recheck = recheck
        self._wait = wait
        self._sleep = sleep
        self._local: dict[str, tuple[Signature, float]] = {}  # signature, when last checked
        self._locks: dict[str, asyncio.Lock] = {}
        self.issued = 0

    @staticmethod
    def key(tenant: Tenant) -> str:
        # The key's fingerprint is part of it: after a key rotation (config reload) the old
        # signature, which Tencent now rejects as 70009, is simply never looked up again.
        return f"{tenant.sdkappid}:{tenant.identifier}:{tenant.secret_key.fingerprint}"

    def _usable(self, sig: Signature | None) -> bool:
        return sig is not None and sig.expires_at - self._margin > self._now()

    def _cached(self, key: str) -> Signature | None:
        entry = self._local.get(key)
        if entry is None or not self._usable(entry[0]) or self._now() - entry[1] > self._recheck:
            return None
        return entry[0]

    async def get(self, tenant: Tenant) -> str:
        """A signature valid for at least the margin: from memory, else the store, else new."""
        key = self.key(tenant)
        sig = self._cached(key)
        if sig is not None:
            return sig.value
        async with self._locks.setdefault(key, asyncio.Lock()):  # one store visit per process
            sig = self._cached(key) or await self._from_store(tenant, key)
            self._local[key] = (sig, self._now())
            return sig.value

    async def _from_store(self, tenant: Tenant, key: str) -> Signature:
        stored = await self._store.get(key)
        if stored is not None and self._usable(stored):
            return stored
        old = stored or (self._local[key][0] if key in self._local else None)
        token = await self._store.lock(key, ttl=10.0)
        if token is not None:
            try:
                return await self._renew(tenant, key, old)
            finally:
                await self._store.unlock(key, token)
        # Another replica is issuing: keep using the old one while it is valid, else wait for theirs.
        if old is not None and old.expires_at > self._now() + 60:
            return old
        give_up = self._now() + self._wait
        while self._now() < give_up:
            await self._sleep(0.02)
            stored = await self._store.get(key)
            if stored is not None and self._usable(stored):
                return stored
        return await self._renew(tenant, key, None)  # the issuer is gone; don't stall the call

    async def _renew(self, tenant: Tenant, key: str, ours: Signature | None) -> Signature:
        """Under the issue lock: the store's sig, else ours put back (the store lost it), else a new one."""
        stored = await self._store.get(key)  # someone may have finished just before our lock
        if stored is not None and self._usable(stored):
            return stored
        if ours is not None and self._usable(ours):
            sig = ours
        else:
            sig = Signature(value=self._issue(tenant, self._ttl), expires_at=self._now() + self._ttl)
            self.issued += 1
        await self._store.put(key, sig, ttl=sig.expires_at - self._now() - self._margin)
        return sig

    async def drop(self, tenant: Tenant, value: str) -> None:
        """Forget a signature Tencent rejected (only that one: a newer one may be in place)."""
        key = self.key(tenant)
        entry = self._local.get(key)
        if entry is not None and entry[0].value == value:
            del self._local[key]
        await self._store.drop(key, value)
