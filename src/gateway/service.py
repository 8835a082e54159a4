"""The use cases: validate -> budget -> signed call (retried, cached where it reads) -> result.

``_call`` is the one path to Tencent. Each attempt waits for its own budget slot, signs, and
sends; transient failures back off exponentially with full jitter inside one total deadline; a
rejected UserSig is dropped and the call re-signed once; "too frequent" pauses the shared
schedule; a 70050 lock-out (or rejected credentials) pauses the tenant's calls altogether.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import msgspec

from gateway import errors
from gateway.budget import Budget, Paused, SendNow, Share, Slot
from gateway.cache import Filled, RoomCache, room_key
from gateway.catalogue import Args, Confirm, Operation, Split, our_reply, tencent_request
from gateway.catalogue.operations import BY_ID
from gateway.idempotency import Answer, Keyed, Keys
from gateway.metrics import Metrics
from gateway.models import (
    CallbackSettings,
    CallbackSettingsReply,
    CallbackTokenRequest,
    Envelope,
)
from gateway.signing import Signer
from gateway.tenants import Tenant
from gateway.transport import LaunchedCall, TooLate
from gateway.upstream import LIVE, Api, Upstream

R = TypeVar("R", bound=Envelope)
Applied = Callable[[errors.GatewayError], Awaitable[bool]]  # after a maybe-applied attempt: does this error mean done?
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


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """A catalogue operation's result: our reply's JSON (None: no content), Tencent's RequestId,
    for a cached read whether it was a hit, and whether it is an Idempotency-Key's kept answer."""

    body: bytes | None
    upstream_request_id: str | None
    cache: str | None = None
    replayed: bool = False


class RoomService:
    def __init__(
        self,
        *,
        upstream: Upstream,
        signer: Signer,
        budget: Budget,
        cache: RoomCache,
        lists: RoomCache,
        keys: Keys,
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
        self._lists = lists  # get_room_list's pages: a short shared cache of their own
        self._keys = keys
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._uniform = uniform

    # ------------------------------------------------------------------ the catalogue's operations

    async def run(self, op: Operation, tenant: Tenant, args: Args, *, share: Share, key: Keyed | None = None) -> Done:
        """One catalogue operation: validated before any budget is spent, then one Tencent call
        per batch of accounts (each budgeted), the cached room invalidated where the operation
        changes it (before the answer), and our reply shaped from Tencent's. A room read goes
        through the shared room cache (coalesced, served stale when Tencent fails), and
        get_room_list's pages through a short cache of their own.

        A write with an Idempotency-Key (``key``) runs once per key: a repeat gets the first
        one's answer (``idempotency``). A request that fails validation holds no key."""
        op.validate(args)
        if key is None or op.method == "GET":
            return await self._run(op, tenant, args, share)

        async def work() -> Answer:
            done = await self._run(op, tenant, args, share)
            return Answer(status=op.status, body=done.body, upstream_request_id=done.upstream_request_id)

        answer, replayed = await self._keys.run(key, repeatable=op.repeatable, work=work, calls=_calls(op, args))
        return Done(body=answer.body, upstream_request_id=answer.upstream_request_id, replayed=replayed)

    async def _run(self, op: Operation, tenant: Tenant, args: Args, share: Share) -> Done:
        if op.cache in ("room", "read"):
            if op.cache == "room":
                cache, key = self._cache, room_key(tenant.sdkappid, args.room_id)
            else:  # (other query parameters than the operation's own do not change the page)
                page = [args.query.get(q.name, []) for q in op.query]
                cache, key = self._lists, f"{op.api}:{tenant.sdkappid}:" + _encode(page).hex()

            async def fill() -> Filled:
                reply, request_id = await self._apply(op, tenant, args, share)
                return Filled(body=_encode(reply), upstream_request_id=request_id or "")

            result = await cache.read(key, fill, bypass=args.no_cache)
            if op.cache == "room":
                m = self._metrics
                m.child(m.cache_results, tenant.name, "coalesced" if result.coalesced else result.status).inc()
            return Done(body=result.body, upstream_request_id=result.upstream_request_id, cache=result.status)
        try:
            reply, request_id = await self._apply(op, tenant, args, share)
        except errors.GatewayError as exc:
            # Tencent may have changed the room (a lost reply): a read, the caller's way to learn
            # whether it did, must see Tencent's room, not the copy cached before the write.
            if op.cache == "invalidate" and exc.may_have_applied:
                await self._cache.invalidate(room_key(tenant.sdkappid, args.room_id))
            raise
        if op.cache == "invalidate":
            await self._cache.invalidate(room_key(tenant.sdkappid, args.room_id))
        return Done(body=None if reply is None else _encode(reply), upstream_request_id=request_id)

    async def _apply(
        self, op: Operation, tenant: Tenant, args: Args, share: Share
    ) -> tuple[msgspec.Struct | None, str | None]:
        api, request = tencent_request(op, args)
        requests = _split(request, op.split)
        replies: list[Envelope] = []

        async def applied(exc: errors.GatewayError) -> bool:
            if exc.upstream_code in op.applied_if_retried:
                return True
            confirm = op.confirm
            if confirm is None or exc.status >= 500 or (confirm.when and exc.upstream_code not in confirm.when):
                return False
            return await self._confirmed(confirm, tenant, args, share)

        for n, request in enumerate(requests):
            try:
                replies.append(
                    await self._call(
                        tenant,
                        share,
                        api,
                        request,
                        op.wire,
                        applied=applied,
                        service=op.service,
                        documented=op.qps,
                        overrides=op.errors,
                        repeatable=op.repeatable,
                    )
                )
            except errors.GatewayError as exc:
                if n:  # some batches were applied: say which, so the caller can retry the rest
                    exc.detail = f"the first {n} of {len(requests)} Tencent calls were applied, then: {exc.detail}"
                raise
        if not replies:
            return None, None
        return our_reply(op, args, replies[-1]), replies[-1].RequestId or None

    async def _confirmed(self, confirm: Confirm, tenant: Tenant, args: Args, share: Share) -> bool:
        """Whether a write Tencent refused on a retry was applied by an earlier attempt after all,
        as the catalogue's read ``confirm.read`` shows (a create finds its room taken: by us?)."""
        read = BY_ID[confirm.read]
        api, request = tencent_request(read, args)
        try:
            reply = await self._call(tenant, share, api, request, read.wire, service=read.service, documented=read.qps)
        except errors.GatewayError:
            return False
        return confirm.done(args, our_reply(read, args, reply), tenant.identifier)

    # ------------------------------------------------------------------ the tenant's callback settings

    async def get_callback(self, tenant: Tenant, *, share: Share) -> CallbackSettings:
        """Where Tencent sends the tenant's callbacks (Url "" when none is set), and which."""
        reply = await self._call(
            tenant, share, "get_callback", CallbackSettings(), CallbackSettingsReply, service="live_config"
        )
        return reply.Response or CallbackSettings()

    async def register_callback(self, tenant: Tenant, url: str, commands: list[str], *, share: Share) -> str:
        """Point the tenant's callbacks at ``url`` for ``commands`` (set_callback the first time,
        update_callback after), then have Tencent sign them with the tenant's callback token.
        The token first: a callback signed with a token the gateway does not know yet would be
        refused. Returns "set" or "updated"."""
        if tenant.callback_token is None:
            raise errors.InvalidRequest(f"tenant {tenant.name!r} has no callback_token_env / callback_token_file")
        token = CallbackTokenRequest(Token=tenant.callback_token.reveal(), IsTokenEnable=True)
        await self._call(tenant, share, "set_callback_token", token, Envelope, service="live_config")
        current = await self.get_callback(tenant, share=share)
        api: Api = "update_callback" if current.Url else "set_callback"
        settings = CallbackSettings(Url=url, CallbackCommandList=commands)
        await self._call(tenant, share, api, settings, Envelope, service="live_config")
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
        applied: Applied | None = None,
        service: str = LIVE,
        documented: int = 200,
        overrides: Mapping[int, type[errors.GatewayError]] | None = None,
        repeatable: bool = True,
    ) -> R:
        """Call Tencent: budgeted (``documented``: the API's documented limit, which the
        tenant's ``api_qps`` may override), signed and retried. ``applied`` says whether an error
        means "done" after an earlier attempt may have applied (a retried delete finds it gone);
        ``overrides`` map ErrorCodes to other errors than ``upstream.ERROR_CODES`` does.

        A call that is not ``repeatable`` is retried only after an attempt that certainly did not
        reach Tencent (no connection, the budget, a refused UserSig, Tencent's "too frequent"):
        one that may have (``may_have_applied``: a timeout, a connection lost after the write)
        fails at once. Whatever fails after an attempt that may have applied says so."""
        body = _encode(request)
        qps = tenant.limit(api, documented)
        policy = self._policy
        deadline = self._clock() + policy.deadline
        resigned = False
        maybe_applied = False  # an earlier attempt may have reached Tencent and taken effect
        last: errors.GatewayError | None = None
        retry_reason = ""
        m = self._metrics
        try:
            for attempt in range(1, policy.attempts + 1):
                if attempt > 1:
                    m.upstream_retries.labels(tenant=tenant.name, api=api, reason=retry_reason).inc()
                usersig = await self._signer.get(tenant)  # before the slot: its send window is short
                try:
                    return await self._send(
                        tenant,
                        share,
                        api,
                        body=body,
                        usersig=usersig,
                        reply=reply,
                        deadline=deadline,
                        last=last,
                        service=service,
                        qps=qps,
                        attempt=attempt,
                    )
                except errors.UpstreamMisconfigured as exc:
                    if not await self._refused(tenant, usersig, exc, resigned=resigned):
                        raise
                    resigned = True  # a fresh UserSig, once
                    retry_reason = "usersig"
                except errors.UpstreamRateLimited as exc:
                    await self._budget.defer(str(tenant.sdkappid), api, policy.rate_limit_pause)
                    exc.retry_after = policy.rate_limit_pause
                    last = exc
                    retry_reason = "rate_limited"
                except (errors.UpstreamUnavailable, errors.UpstreamTimeout) as exc:
                    maybe_applied = maybe_applied or exc.may_have_applied
                    last = exc
                    retry_reason = "transient"
                    if exc.may_have_applied and not repeatable:
                        raise
                    delay = self._uniform(0, min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1)))
                    if attempt == policy.attempts or self._clock() + delay >= deadline:
                        raise
                    await self._sleep(delay)
                except errors.GatewayError as exc:
                    if maybe_applied and applied is not None and await applied(exc):
                        return reply(ErrorCode=0, RequestId=exc.upstream_request_id or "")
                    raise _override(exc, overrides) from None
            assert last is not None  # the loop only falls through after a retried failure
            raise last
        except errors.GatewayError as exc:
            exc.may_have_applied = exc.may_have_applied or maybe_applied
            raise

    async def _refused(
        self, tenant: Tenant, usersig: str, exc: errors.UpstreamMisconfigured, *, resigned: bool
    ) -> bool:
        """After Tencent (or the egress proxy) refused the gateway: True to sign again and retry
        (a UserSig rejected for the first time), else the tenant's calls pause."""
        policy = self._policy
        if isinstance(exc, errors.SignatureRejected):
            self._metrics.usersig_rejections.labels(tenant=tenant.name).inc()
            await self._signer.drop(tenant, usersig)
            if not resigned:
                return True
            await self._pause(tenant, policy.misconfig_cooldown, "UserSig rejected twice", exc)
        elif isinstance(exc, errors.UpstreamLockedOut):
            await self._pause(tenant, policy.lockout, "Tencent locked the app out (70050)", exc)
        else:
            refused = isinstance(exc, errors.EgressProxyRefused)
            why = "the egress proxy refused the gateway" if refused else "Tencent rejected the credentials"
            await self._pause(tenant, policy.misconfig_cooldown, why, exc)
        return False

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
        service: str,
        qps: int,
        attempt: int = 1,
    ) -> R:
        """One attempt (the ``attempt``-th): a budget slot, then the call, which must leave within the slot's send
        window (``budget``). One that cannot has sent nothing: it hands the slot back and books
        another, until the deadline."""
        m = self._metrics
        until = min(deadline, self._clock() + self._policy.max_wait)  # the wait cap spans re-bookings
        slot: Slot | None = None
        launched: list[LaunchedCall] = []

        def send(send_by: float) -> bool:  # the moment the slot comes (``budget.slots.Launch``)
            call = self._upstream.launch(tenant, api, body=body, usersig=usersig, service=service)
            if call is not None:
                launched.append(call)
            return call is not None

        while True:
            try:
                slot = await self._slot(tenant, share, api, qps=qps, until=until, last=last, forfeit=slot, send=send)
            except asyncio.CancelledError:
                for call in launched:  # (sent while this caller went away: nobody reads its reply)
                    call.abandon()
                raise
            timeout = min(self._policy.upstream_timeout, deadline - self._clock())
            try:
                return await self._upstream.call(
                    tenant,
                    api,
                    body=body,
                    usersig=usersig,
                    reply=reply,
                    within=timeout,
                    send_by=slot.send_by,
                    service=service,
                    attempt=attempt,
                    launched=launched.pop() if slot.sent else None,
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
        qps: int,
        until: float,
        last: errors.GatewayError | None,
        forfeit: Slot | None,
        send: SendNow | None = None,
    ) -> Slot:
        """Wait for a budget slot, at most until ``until``. Past that: the last attempt's error if
        there was one (the caller learns why it failed, not merely that the retry found no slot)."""
        m = self._metrics
        wait = max(0.0, until - self._clock())
        got = await self._budget.acquire(
            str(tenant.sdkappid), api, qps=qps, max_wait=wait, share=share, forfeit=forfeit, send=send
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


def _calls(op: Operation, args: Args) -> int:
    """How many Tencent calls the operation makes for ``args`` (a long list of accounts: several)."""
    if op.split is None:
        return 1
    _, request = tencent_request(op, args)
    return max(1, math.ceil(len(getattr(request, op.split.field)) / op.split.most))


def _split(request: msgspec.Struct, split: Split | None) -> list[msgspec.Struct]:
    """Tencent's request as the calls it takes: at most ``split.most`` accounts in each."""
    if split is None:
        return [request]
    items = getattr(request, split.field)
    parts = [items[i : i + split.most] for i in range(0, len(items), split.most)]
    return [msgspec.structs.replace(request, **{split.field: part}) for part in parts]


def _override(exc: errors.GatewayError, overrides: Mapping[int, type[errors.GatewayError]] | None) -> Exception:
    """The error the caller gets for Tencent's ErrorCode, where an operation overrides the
    default mapping (create_room's 100003 is 409 room_exists, not 502)."""
    code = exc.upstream_code
    if not overrides or code is None or code not in overrides:
        return exc
    mapped = overrides[code](exc.detail, upstream_code=code, upstream_request_id=exc.upstream_request_id)
    mapped.may_have_applied = exc.may_have_applied
    return mapped
