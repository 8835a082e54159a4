"""Admin UserSigs: issued with Tencent's ``tls-sig-api-v2``, cached in two tiers, never logged.

A signature is reused until ``margin`` seconds before it expires, then replaced; the in-process
tier answers without any I/O, the store (process memory, or Redis shared by the fleet) behind it
makes one signature serve every replica. When Tencent rejects a signature it is dropped from both
tiers so the next call signs afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._margin = margin
        self._now = wall_clock
        self._issue = issue
        self._local: dict[str, Signature] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.issued = 0

    @staticmethod
    def key(tenant: Tenant) -> str:
        return f"{tenant.sdkappid}:{tenant.identifier}"

    def _usable(self, sig: Signature | None) -> bool:
        return sig is not None and sig.expires_at - self._margin > self._now()

    async def get(self, tenant: Tenant) -> str:
        """A signature valid for at least the margin: from memory, else the store, else new."""
        key = self.key(tenant)
        sig = self._local.get(key)
        if sig is not None and self._usable(sig):
            return sig.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one issuer per key in this process
            sig = self._local.get(key)
            if not self._usable(sig):
                sig = await self._store.get(key)
            if sig is None or not self._usable(sig):
                sig = Signature(value=self._issue(tenant, self._ttl), expires_at=self._now() + self._ttl)
                self.issued += 1
                await self._store.put(key, sig, ttl=self._ttl - self._margin)
            self._local[key] = sig
            return sig.value

    async def drop(self, tenant: Tenant, value: str) -> None:
        """Forget a signature Tencent rejected (only that one: a newer one may be in place)."""
        key = self.key(tenant)
        current = self._local.get(key)
        if current is not None and current.value == value:
            del self._local[key]
        await self._store.drop(key, value)
