"""The use cases: validate -> budget -> signed call (retried, cached where it reads) -> result.

``_call`` is the one path to Tencent. Each attempt waits for its own budget slot, signs, and
sends; transient failures back off exponentially with full jitter inside one total deadline; a
rejected UserSig is dropped and the call re-signed once; "too frequent" pauses the shared
schedule; a 70050 lock-out (or rejected credentials) pauses the tenant's calls altogether.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from gateway import errors, validation
from gateway.budget import Budget, Paused, Share, Slot
from gateway.cache import CacheResult, Filled, RoomCache, room_key
from gateway.metrics import Metrics
from gateway.models import (
    CallbackSettings,
    CallbackSettingsReply,
    CallbackTokenRequest,
    Envelope,
    KeysRequest,
    MetadataItem,
    MetadataPatch,
    MetadataReply,
    RoomIdRequest,
    RoomInfoReply,
    RoomPatch,
    SetMetadataRequest,
    room_from_wire,
    update_to_wire,
)
from gateway.signing import Signer
from gateway.tenants import Tenant
from gateway.transport import TooLate
from gateway.upstream import Api, Upstream

R = TypeVar("R", bound=Envelope)
LOCKOUT_CODE = 70050

_encode = msgspec.json.Encoder().encode


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """How hard to try: the numbers come from Settings."""

    deadline: float
    upstream_timeout: float
    max_wait: float
    attempts: int
    backoff: float
    backoff_max: float
    lockout: float
    misconfig_cooldown: float
    rate_limit_pause: float


class Outcome(msgspec.Struct, frozen=True):
    """A write's result: Tencent's RequestId for ``X-Upstream-Request-Id``."""

    upstream_request_id: str | None


class RoomService:
    def __init__(
        self,
        *,
        upstream: Upstream,
        signer: Signer,
        budget: Budget,
        cache: RoomCache,
        policy: Policy,
        metrics: Metrics,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        uniform: Callable[[float, float], float],
    ) -> None:
        self._upstream = upstream
        self._signer = signer
        self._budget = budget
        self._cache = cache
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._uniform = uniform

    # ------------------------------------------------------------------ use cases

    async def get_room(self, tenant: Tenant, room_id: str, *, share: Share, bypass_cache: bool = False) -> CacheResult:
        """The room as encoded JSON, from the shared cache or one coalesced upstream call."""
        validation.room_id(room_id)

        async def fetch() -> Filled:
            reply = await self._call(tenant, share, "get_room_info", RoomIdRequest(RoomId=room_id), RoomInfoReply)
            if reply.Response is None:
                raise errors.UpstreamUnavailable("Tencent get_room_info: reply without RoomInfo")
            return Filled(body=_encode(room_from_wire(reply.Response.RoomInfo)), upstream_request_id=reply.RequestId)

        result = await self._cache.read(room_key(tenant.sdkappid, room_id), fetch, bypass=bypass_cache)
        m = self._metrics
        m.child(m.cache_results, tenant.name, "coalesced" if result.coalesced else result.status).inc()
        return result

    async def update_room(self, tenant: Tenant, room_id: str, patch: RoomPatch, *, share: Share) -> Outcome:
        """Apply the patch, then invalidate the room everywhere before answering."""
        validation.room_id(room_id)
        validation.room_patch(patch)
        reply = await self._call(tenant, share, "update_room_info", update_to_wire(room_id, patch), Envelope)
        await self._cache.invalidate(room_key(tenant.sdkappid, room_id))
        return Outcome(reply.RequestId or None)

    async def get_metadata(
        self, tenant: Tenant, room_id: str, keys: list[str], *, share: Share
    ) -> tuple[dict[str, str], Outcome]:
        """The room's metadata; all keys when ``keys`` is empty."""
        validation.room_id(room_id)
        wanted = validation.metadata_keys(keys, required=False)
        request = KeysRequest(RoomId=room_id, Keys=wanted)
        reply = await self._call(tenant, share, "get_room_metadata", request, MetadataReply)
        items = reply.Response.Metadata if reply.Response is not None else []
        return {item.Key: item.Value for item in items}, Outcome(reply.RequestId or None)

    async def set_metadata(self, tenant: Tenant, room_id: str, patch: MetadataPatch, *, share: Share) -> Outcome:
        """Upsert the given keys."""
        validation.room_id(room_id)
        validation.metadata_patch(patch)
        items = [MetadataItem(Key=k, Value=v) for k, v in patch.metadata.items()]
        reply = await self._call(
            tenant, share, "set_room_metadata", SetMetadataRequest(RoomId=room_id, Metadata=items), Envelope
        )
        return Outcome(reply.RequestId or None)

    async def delete_metadata(self, tenant: Tenant, room_id: str, keys: list[str], *, share: Share) -> Outcome:
        """Delete the keys; a 100503 after an attempt that may have applied counts as done."""
        validation.room_id(room_id)
        wanted = validation.metadata_keys(keys, required=True)
        request = KeysRequest(RoomId=room_id, Keys=wanted)
        reply = await self._call(
            tenant, share, "del_room_metadata", request, Envelope, done_if_retried=errors.MetadataKeysNotFound
        )
        return Outcome(reply.RequestId or None)

    # ------------------------------------------------------------------ the tenant's callback settings

    async def get_callback(self, tenant: Tenant, *, share: Share) -> CallbackSettings:
        """Where Tencent sends the tenant's callbacks (Url "" when none is set), and which."""
        reply = await self._call(tenant, share, "get_callback", CallbackSettings(), CallbackSettingsReply)
        return reply.Response or CallbackSettings()

    async def register_callback(self, tenant: Tenant, url: str, commands: list[str], *, share: Share) -> str:
        """Point the tenant's callbacks at ``url`` for ``commands`` (set_callback the first time,
        update_callback after), then have Tencent sign them with the tenant's callback token.
        The token first: a callback signed with a token the gateway does not know yet would be
        refused. Returns "set" or "updated"."""
        if tenant.callback_token is None:
            raise errors.InvalidRequest(f"tenant {tenant.name!r} has no callback_token_env / callback_token_file")
        token = CallbackTokenRequest(Token=tenant.callback_token.reveal(), IsTokenEnable=True)
        await self._call(tenant, share, "set_callback_token", token, Envelope)
        current = await self.get_callback(tenant, share=share)
        api: Api = "update_callback" if current.Url else "set_callback"
        await self._call(tenant, share, api, CallbackSettings(Url=url, CallbackCommandList=commands), Envelope)
        return "updated" if current.Url else "set"

    # ------------------------------------------------------------------ the one path to Tencent

    async def _call(
        self,
        tenant: Tenant,
        share: Share,
        api: Api,
        request: msgspec.Struct,
        reply: type[R],
        *,
        done_if_retried: type[errors.GatewayError] | None = None,
    ) -> R:
        body = _encode(request)
        policy = self._policy
        deadline = self._clock() + policy.deadline
        resigned = False
        maybe_applied = False  # an earlier attempt may have reached Tencent and taken effect
        last: errors.GatewayError | None = None
        retry_reason = ""
        m = self._metrics
        for attempt in range(1, policy.attempts + 1):
            if attempt > 1:
                m.upstream_retries.labels(tenant=tenant.name, api=api, reason=retry_reason).inc()
            usersig = await self._signer.get(tenant)  # before the slot: its send window is short
            try:
                return await self._send(
                    tenant, share, api, body=body, usersig=usersig, reply=reply, deadline=deadline, last=last
                )
            except errors.SignatureRejected as exc:
                m.usersig_rejections.labels(tenant=tenant.name).inc()
                retry_reason = "usersig"
                await self._signer.drop(tenant, usersig)
                if resigned:
                    await self._pause(tenant, policy.misconfig_cooldown, "UserSig rejected twice", exc)
                    raise
                resigned = True
                continue
            except errors.UpstreamLockedOut as exc:
                await self._pause(tenant, policy.lockout, "Tencent locked the app out (70050)", exc)
                raise
            except errors.UpstreamMisconfigured as exc:
                refused = isinstance(exc, errors.EgressProxyRefused)
                why = "the egress proxy refused the gateway" if refused else "Tencent rejected the credentials"
                await self._pause(tenant, policy.misconfig_cooldown, why, exc)
                raise
            except errors.UpstreamRateLimited as exc:
                await self._budget.defer(str(tenant.sdkappid), api, policy.rate_limit_pause)
                exc.retry_after = policy.rate_limit_pause
                last = exc
                retry_reason = "rate_limited"
            except (errors.UpstreamUnavailable, errors.UpstreamTimeout) as exc:
                maybe_applied = True
                last = exc
                retry_reason = "transient"
                delay = self._uniform(0, min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1)))
                if attempt == policy.attempts or self._clock() + delay >= deadline:
                    raise
                await self._sleep(delay)
            except errors.GatewayError as exc:
                if done_if_retried is not None and isinstance(exc, done_if_retried) and maybe_applied:
                    return reply(ErrorCode=0, RequestId=exc.upstream_request_id or "")
                raise
        assert last is not None  # the loop only falls through after a retried failure
        raise last

    async def _send(
        self,
        tenant: Tenant,
        share: Share,
        api: Api,
        *,
        body: bytes,
        usersig: str,
        reply: type[R],
        deadline: float,
        last: errors.GatewayError | None,
    ) -> R:
        """One attempt: a budget slot, then the call, which must leave within the slot's send
        window (``budget``). One that cannot has sent nothing: it hands the slot back and books
        another, until the deadline."""
        m = self._metrics
        until = min(deadline, self._clock() + self._policy.max_wait)  # the wait cap spans re-bookings
        slot: Slot | None = None
        while True:
            slot = await self._slot(tenant, share, api, until=until, last=last, forfeit=slot)
            timeout = min(self._policy.upstream_timeout, deadline - self._clock())
            try:
                return await self._upstream.call(
                    tenant, api, body=body, usersig=usersig, reply=reply, within=timeout, send_by=slot.send_by
                )
            except TooLate as late:
                m.child(m.budget_missed, tenant.name, api).inc()
                if self._clock() >= deadline:  # (a handed-back slot is free again: nothing else ends this)
                    raise errors.UpstreamTimeout(
                        f"Tencent {api}: the call could not leave in time before the deadline"
                    ) from late

    async def _slot(
        self,
        tenant: Tenant,
        share: Share,
        api: Api,
        *,
        until: float,
        last: errors.GatewayError | None,
        forfeit: Slot | None,
    ) -> Slot:
        """Wait for a budget slot, at most until ``until``. Past that: the last attempt's error if
        there was one (the caller learns why it failed, not merely that the retry found no slot)."""
        m = self._metrics
        wait = max(0.0, until - self._clock())
        got = await self._budget.acquire(
            str(tenant.sdkappid), api, qps=tenant.qps, max_wait=wait, share=share, forfeit=forfeit
        )
        if isinstance(got, Slot):
            m.child(m.budget_wait, tenant.name, api).observe(got.waited)
            m.child(m.budget_grants, tenant.name, api).inc()
            m.child(m.caller_wait, tenant.name, share.name).observe(got.waited)
            m.child(m.caller_grants, tenant.name, share.name).inc()
            return got
        if isinstance(got, Paused):
            cls = errors.UpstreamLockedOut if got.code == LOCKOUT_CODE else errors.UpstreamMisconfigured
            raise cls(f"calls to Tencent for this tenant are paused: {got.reason}", retry_after=got.left)
        m.child(m.budget_refusals, tenant.name, api).inc()
        m.child(m.caller_refusals, tenant.name, share.name).inc()
        refused = errors.RateLimited(
            f"the request budget for {api} is exhausted; try again shortly",
            retry_after=max(1.0, math.ceil(got.retry_after)),
        )
        raise (last if last is not None else refused) from None

    async def _pause(self, tenant: Tenant, seconds: float, reason: str, exc: errors.GatewayError | None = None) -> None:
        code = exc.upstream_code if exc is not None and exc.upstream_code is not None else 0
        if seconds > 0:
            await self._budget.pause(str(tenant.sdkappid), seconds, code, reason)
        if exc is not None:
            exc.retry_after = seconds
