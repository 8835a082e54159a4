"""Tencent's callbacks (webhooks): verified, deduplicated, and the cached room invalidated.

Tencent allows one callback URL per SDKAppID, so the gateway receives them for every team:
``POST /v1/callbacks/tencent?SdkAppid=…&CallbackCommand=…&RequestTime=…&Sign=…`` (query keys in
any case). A callback is checked in this order, and refused (401, or 400 for a malformed one)
at the first failure, with nothing invalidated or published:

1. the SDKAppID is a configured tenant's, and that tenant has a callback token;
2. ``RequestTime`` is within ``WINDOW`` seconds of now (Tencent's advice against replays);
3. ``Sign == hex(sha256(token + RequestTime))``, compared in constant time;
4. the body is JSON (decoded leniently: Tencent's samples put numbers where strings belong).

The signature covers only the token and the time, not the body: anyone who saw a signed URL can
replay it for a minute. So the receiver also drops duplicates, fleet-wide: the same command,
room, event time and body within ``REMEMBER`` seconds. A room event (updated, destroyed,
metadata, owner changed) invalidates the room in the cache on every replica before Tencent is
answered; the cache TTL stays the backstop, since Tencent does not retry after-event callbacks.
Every accepted callback is then published to its tenant's events (``events.py``), also before
the answer: one store call, and an acknowledged event is one the subscribers will see.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from gateway import events
from gateway.cache import RoomCache, room_key
from gateway.errors import InvalidRequest, Unauthenticated
from gateway.events import EventLog
from gateway.metrics import Metrics
from gateway.tenants import Directory, Tenant

WINDOW = 60.0  # seconds: how far RequestTime may be from now
REMEMBER = 600.0  # seconds a callback is remembered, fleet-wide, to drop its duplicates
ACK = b'{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}'
ROOM_EVENTS = frozenset(  # callbacks after which the cached room is stale
    {
        "Live.CallbackAfterDestroyRoom",
        "Live.CallbackAfterUpdateRoomInfo",
        "Live.CallbackAfterSetMetadata",
        "Live.CallbackAfterDelMetadata",
        "Live.CallbackAfterChangeOwner",
    }
)
COMMANDS = ROOM_EVENTS | {  # the commands the metrics name; any other is "other"
    "Live.CallbackAfterCreateRoom",
    "Live.CallbackAfterModifyAdmin",
    "Live.CallbackAfterMemberStateChanged",
    "Live.CallbackMemberStateChanged",  # (Tencent's table spells it so; its samples do not)
    "Live.CallbackAfterCreateRoomReachingThreshold",
    "Mic.CallbackAfterSeatInfoChanged",
}


class Seen(Protocol):
    """Remembers keys for a while, fleet-wide when Redis is configured."""

    async def first(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds."""
        ...


class _RoomRef(msgspec.Struct):
    RoomId: str | int | None = None


class _Body(msgspec.Struct):
    """What the receiver reads of a callback body; anything else is passed on untouched."""

    RoomId: str | int | None = None
    EventTime: int | float | str | None = None
    RoomInfo: _RoomRef | None = None


_decode_body = msgspec.json.Decoder(_Body).decode


class Callback(msgspec.Struct, frozen=True, kw_only=True):
    """A verified callback: whose, which command, which room, when (ms), and its JSON body."""

    tenant: Tenant
    command: str
    room_id: str | None
    event_time: int | None
    body: bytes


def sign(token: str, request_time: str) -> str:
    """Tencent's callback signature: lowercase hex of sha256(token + RequestTime)."""
    return hashlib.sha256((token + request_time).encode()).hexdigest()


class Receiver:
    """Verifies callbacks, drops duplicates and invalidates the rooms they change."""

    def __init__(
        self, *, cache: RoomCache, seen: Seen, events: EventLog, metrics: Metrics, wall_clock: Callable[[], float]
    ) -> None:
        self._cache = cache
        self._seen = seen
        self._events = events
        self._metrics = metrics
        self._wall_clock = wall_clock

    def verify(self, directory: Directory, query: Mapping[str, str], body: bytes) -> Callback:
        """The callback, if it is Tencent's for a configured tenant (see the module docstring).
        ``query``: the query parameters, their names in lower case."""
        command = query.get("callbackcommand", "")
        label = _label(command)
        tenant = _tenant(directory, query.get("sdkappid", ""))
        if tenant is None or tenant.callback_token is None:
            self._count("unknown", label, "unknown_app")
            raise Unauthenticated("callback for an SDKAppID that receives no callbacks here")
        request_time = query.get("requesttime", "")
        if not request_time.isdigit() or abs(self._wall_clock() - int(request_time)) > WINDOW:
            self._count(tenant.name, label, "stale")
            raise Unauthenticated(f"callback RequestTime missing or more than {WINDOW:.0f} s from now")
        expected = sign(tenant.callback_token.reveal(), request_time)
        if not hmac.compare_digest(expected, query.get("sign", "").lower()):
            self._count(tenant.name, label, "bad_sign")
            raise Unauthenticated("callback signature does not match")
        if not command:
            self._count(tenant.name, label, "invalid")
            raise InvalidRequest("callback without CallbackCommand")
        try:
            view = _decode_body(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._count(tenant.name, label, "invalid")
            raise InvalidRequest(f"callback body is not JSON Tencent sends: {exc}") from None
        room = view.RoomId if view.RoomId is not None else view.RoomInfo.RoomId if view.RoomInfo else None
        return Callback(
            tenant=tenant,
            command=command,
            room_id=None if room is None else str(room),
            event_time=_millis(view.EventTime),
            body=body,
        )

    async def accept(self, callback: Callback) -> bool:
        """Act on a verified callback: invalidate the room it changes, then publish it to the
        tenant's events. False if it is a duplicate (nothing done again)."""
        label = _label(callback.command)
        key = hashlib.sha256(
            f"{callback.tenant.sdkappid}\n{callback.command}\n{callback.room_id}\n{callback.event_time}\n".encode()
            + hashlib.sha256(callback.body).digest()
        ).hexdigest()
        if not await self._seen.first(f"callback:{key}", REMEMBER):
            self._count(callback.tenant.name, label, "duplicate")
            return False
        if callback.command in ROOM_EVENTS and callback.room_id:
            await self._cache.invalidate(room_key(callback.tenant.sdkappid, callback.room_id))
        data = events.encode(callback.command, callback.room_id, callback.event_time, callback.body)
        await self._events.publish(str(callback.tenant.sdkappid), callback.command, data)
        m = self._metrics
        m.child(m.events_published, callback.tenant.name).inc()
        self._count(callback.tenant.name, label, "accepted")
        return True

    def _count(self, tenant: str, command: str, outcome: str) -> None:
        m = self._metrics
        m.child(m.callbacks, tenant, command, outcome).inc()


def _label(command: str) -> str:
    """The command as a metric label: known ones by name, anything else "other" (a closed set)."""
    return command if command in COMMANDS else "other"


def _tenant(directory: Directory, sdkappid: str) -> Tenant | None:
    if not sdkappid.isdigit():
        return None
    wanted = int(sdkappid)
    return next((t for t in directory.tenants.values() if t.sdkappid == wanted), None)


def _millis(value: int | float | str | None) -> int | None:
    """EventTime in milliseconds, as Tencent sends it (a number, or a numeric string)."""
    if isinstance(value, str):
        return int(value) if value.isdigit() else None
    return None if value is None else int(value)
