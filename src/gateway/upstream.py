"""The only code that speaks HTTP to Tencent.

One call = one signed POST to ``{base_url}/v4/{service}/{api}`` (``live_engine_http_srv``, or
``room_engine_http_mic`` for seats and ``live_config`` for the callback settings) with a fresh 32-bit
``random``; the reply's envelope is checked and every failure becomes a ``GatewayError``:
transport errors and non-200 statuses as ``UpstreamUnavailable``, a missed deadline as
``UpstreamTimeout``, and Tencent's ErrorCodes through ``ERROR_CODES``. Retrying is the
service's business, not this module's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast
from urllib.parse import quote

import httpx
import msgspec

from gateway import errors
from gateway.metrics import Metrics
from gateway.models import Envelope
from gateway.tenants import Tenant
from gateway.transport import (
    LaunchedCall,
    Launcher,
    OnTime,
    Proxy,
    ProxyRefused,
    Reply,
    Sender,
    TooLate,
    proxy_from_url,
)

Api = str  # a Tencent command (catalogue.operations.DOCUMENTED), e.g. "get_room_info"
R = TypeVar("R", bound=Envelope)
Send = Callable[[str, bytes, OnTime | None], Awaitable[Reply]]  # (path and query, body, on_time) -> the reply
Launch = Callable[[str, bytes], LaunchedCall | None]  # (path and query, body) -> written now, or None

LIVE = "live_engine_http_srv"

# Tencent ErrorCode -> the error the caller gets (README: "Error mapping"). Unlisted codes become
# UpstreamRejected (502, not retried), with the code in the problem's ``upstream_code``.
ERROR_CODES: dict[int, type[errors.GatewayError]] = {
    100002: errors.InvalidRequest,
    100004: errors.RoomNotFound,
    100006: errors.Forbidden,
    100503: errors.MetadataKeysNotFound,
    **dict.fromkeys((100500, 100501, 100502, 100504), errors.MetadataLimitExceeded),
    **dict.fromkeys((60007, 60011, 60018, 60019, 100012), errors.UpstreamRateLimited),
    **dict.fromkeys((70001, 70002, 70003, 70005, 70052, 60004, 60005), errors.SignatureRejected),
    70050: errors.UpstreamLockedOut,
    **dict.fromkeys(
        (60006, 60010, 60016, 60017, 60020, 60021, 70009, 70013, 70014, 70016, 70020, 70051, 70114, 70403, 100007),
        errors.UpstreamMisconfigured,
    ),
    **dict.fromkeys((100001, 60008, 60013, 60014, 70169, 70500), errors.UpstreamUnavailable),
}


class Upstream:
    """Signed calls to Tencent through one ``Sender`` per base URL (a ``PooledTransport`` in
    production, the scripted Tencent in tests: the same ``post`` either way)."""

    def __init__(
        self,
        *,
        transport_factory: Callable[[], Sender],
        random32: Callable[[], int],
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._transport_factory = transport_factory
        self._random32 = random32
        self._metrics = metrics
        self._clock = clock
        self._transports: dict[str, Sender] = {}
        self._senders: dict[tuple[str, str | None], Send] = {}
        self._launchers: dict[tuple[str, str | None], Launch | None] = {}
        self._queries: dict[tuple[int, str, str], str] = {}
        self._decoders: dict[type[Envelope], msgspec.json.Decoder[Envelope]] = {}

    def _sender(self, tenant: Tenant) -> Send:
        """The tenant's way to Tencent: its base URL's transport, through its proxy if it has one."""
        proxy_url = None if tenant.proxy_url is None else tenant.proxy_url.reveal()
        send = self._senders.get((tenant.base_url, proxy_url))
        if send is None:
            transport = self._transports.get(tenant.base_url)
            if transport is None:
                transport = self._transports[tenant.base_url] = self._transport_factory()
            proxy: Proxy | None = None if proxy_url is None else proxy_from_url(proxy_url)
            send = self._senders[(tenant.base_url, proxy_url)] = functools.partial(
                transport.post, tenant.base_url, proxy=proxy
            )
        return send

    def _launcher(self, tenant: Tenant) -> Launch | None:
        """The tenant's way to write a call with nothing awaited, if its transport has one
        (``PooledTransport`` has; the tests' scripted Tencent has not: its calls are ``post``ed)."""
        proxy_url = None if tenant.proxy_url is None else tenant.proxy_url.reveal()
        key = (tenant.base_url, proxy_url)
        if key not in self._launchers:
            self._sender(tenant)
            transport = self._transports[tenant.base_url]
            proxy: Proxy | None = None if proxy_url is None else proxy_from_url(proxy_url)
            launch = getattr(transport, "launch", None)  # (``Launcher``: decided once per transport)
            self._launchers[key] = (
                None
                if launch is None
                else functools.partial(cast(Launcher, transport).launch, tenant.base_url, proxy=proxy)
            )
        return self._launchers[key]

    def launch(
        self, tenant: Tenant, api: Api, *, body: bytes, usersig: str, service: str = LIVE
    ) -> LaunchedCall | None:
        """Write the call now if a socket is ready, with nothing awaited (the budget calls this
        the moment a slot comes: ``budget.slots.Launch``); None, nothing written, if not. Its
        reply is awaited by ``call(launched=...)``."""
        launch = self._launcher(tenant)
        return None if launch is None else launch(self._target(tenant, api, usersig, service), body)

    def _target(self, tenant: Tenant, api: Api, usersig: str, service: str) -> str:
        return f"/v4/{service}/{api}?{self._query(tenant, usersig)}&random={self._random32()}&contenttype=json"

    def _query(self, tenant: Tenant, usersig: str) -> str:
        """The signed part of the query string, quoted once per UserSig (a UserSig lives for days)."""
        key = (tenant.sdkappid, tenant.identifier, usersig)
        query = self._queries.get(key)
        if query is None:
            if len(self._queries) >= 1024:
                self._queries.clear()
            query = self._queries[key] = (
                f"sdkappid={tenant.sdkappid}&identifier={quote(tenant.identifier, safe='')}"
                f"&usersig={quote(usersig, safe='')}"
            )
        return query

    def _decoder(self, reply: type[R]) -> msgspec.json.Decoder[R]:
        decoder = self._decoders.get(reply)
        if decoder is None:
            decoder = self._decoders[reply] = msgspec.json.Decoder(reply)
        return decoder  # type: ignore[return-value]

    async def call(
        self,
        tenant: Tenant,
        api: Api,
        *,
        body: bytes,
        usersig: str,
        reply: type[R],
        within: float,
        send_by: float | None = None,
        service: str = LIVE,
        attempt: int = 1,
        launched: LaunchedCall | None = None,
    ) -> R:
        """POST ``body`` to ``api``; the decoded reply on ErrorCode 0, else a GatewayError.
        ``TooLate`` (nothing sent) if the request could not be written by ``send_by``.
        ``attempt``: the service's attempt number, which traces record (``tracing``).
        ``launched``: the call, already written by ``launch``: only its reply is awaited.

        A failure after the request's first byte was written (a timeout, a lost connection, a
        non-200 status, an unreadable reply, Tencent's "internal error" codes) is marked
        ``may_have_applied``: Tencent may have applied it. The transport asks ``on_time`` right
        before that write, so a failure before it (no connection, the proxy unreachable) is not."""
        clock = self._clock
        started = clock()
        outcome: str | None = "0"
        written = launched is not None

        def on_time() -> bool:
            nonlocal written
            written = send_by is None or clock() <= send_by
            return written

        try:
            try:
                async with asyncio.timeout(within):
                    if launched is not None:
                        status, _, content = await launched.reply()
                    else:
                        target = self._target(tenant, api, usersig, service)
                        status, _, content = await self._sender(tenant)(target, body, on_time)
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise errors.UpstreamTimeout(f"Tencent {api}: no answer within {within:.3g} s") from exc
            except ProxyRefused as exc:  # its message names the proxy, never its credentials
                raise errors.EgressProxyRefused(f"Tencent {api}: {exc}; check its credentials and policy") from exc
            except httpx.ProxyError as exc:
                raise errors.UpstreamUnavailable(f"Tencent {api}: {exc}") from exc
            except httpx.TransportError as exc:
                raise errors.UpstreamUnavailable(f"Tencent {api}: connection failed ({type(exc).__name__})") from exc
            if status != 200:
                raise errors.UpstreamUnavailable(f"Tencent {api}: HTTP {status}")
            try:
                decoded = self._decoder(reply).decode(content)
            except msgspec.DecodeError as exc:
                raise errors.UpstreamUnavailable(f"Tencent {api}: unreadable reply ({exc})") from exc
            _check(decoded, api, usersig)
            return decoded
        except errors.GatewayError as exc:
            outcome = _outcome(exc)
            exc.may_have_applied = written and isinstance(exc, errors.UpstreamUnavailable | errors.UpstreamTimeout)
            raise
        except TooLate:
            outcome = None  # nothing was sent: not a call to Tencent
            raise
        finally:
            if outcome is not None:
                m = self._metrics
                m.child(m.upstream_calls, tenant.name, api, outcome).inc()
                m.child(m.upstream_seconds, api).observe(clock() - started)

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()
        self._senders.clear()


def _outcome(exc: errors.GatewayError) -> str:
    """The metric label for a failed call: a known ErrorCode, or what went wrong on the way
    (the egress proxy's failures apart from the network's and Tencent's)."""
    if exc.upstream_code is not None:
        return str(exc.upstream_code) if exc.upstream_code in ERROR_CODES else "other"
    if isinstance(exc.__cause__, httpx.ProxyError):
        return "proxy_refused" if isinstance(exc.__cause__, ProxyRefused) else "proxy"
    return "timeout" if isinstance(exc, errors.UpstreamTimeout) else "transport"


def _check(reply: Envelope, api: str, usersig: str) -> None:
    code = reply.ErrorCode
    if code == 0 or (code is None and reply.ActionStatus == "OK"):
        return
    code = -1 if code is None else code
    info = reply.ErrorInfo.replace(usersig, "***")[:300]
    raise ERROR_CODES.get(code, errors.UpstreamRejected)(
        f"Tencent {api} answered {code}: {info}".rstrip(": "),
        upstream_code=code,
        upstream_request_id=reply.RequestId or None,
    )
