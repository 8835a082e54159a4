"""The emulator's model of Tencent: apps, rooms, limits, faults and the counters tests read.

Everything is in memory and synchronous; ``server.py`` puts it behind real HTTP. Replies are
plain dicts in Tencent's wire format, including its quirks (``Owner_Account`` as a number when
it looks like one, ``TakeSeatMode`` as 1 | 2 in get_room_info).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlencode

from live_engine_emulator import members, model, usersig
from live_engine_emulator.model import ApiError, App, People, Reply

LOCKOUT_FAILURES = 5  # signature failures within LOCKOUT_WINDOW before 70050
LOCKOUT_WINDOW = 60.0
API_QPS = members.API_QPS
DEFAULT_QPS = 200
WRITES = frozenset(
    {
        "create_room",
        "destroy_room",
        "update_room_info",
        "set_room_metadata",
        "del_room_metadata",
        "set_callback",
        "update_callback",
        "set_callback_token",
    }
    | members.WRITES
)
SERVICES = {  # the commands not under v4/live_engine_http_srv
    **dict.fromkeys(
        ("get_seat_list", "lock_seat", "pick_user_on_seat", "kick_user_off_seat", "move_user_to_seat"),
        "room_engine_http_mic",
    ),
    **dict.fromkeys(
        ("set_callback", "update_callback", "get_callback", "set_callback_token", "get_callback_token"), "live_config"
    ),
}
CALLBACKS = {  # the writes after which Tencent calls the app's callback URL, and the command it sends
    "create_room": "Live.CallbackAfterCreateRoom",
    "destroy_room": "Live.CallbackAfterDestroyRoom",
    "update_room_info": "Live.CallbackAfterUpdateRoomInfo",
    "set_room_metadata": "Live.CallbackAfterSetMetadata",
    "del_room_metadata": "Live.CallbackAfterDelMetadata",
}
HTTP_502 = 0  # fault: answer HTTP 502
DROP = -1  # fault: close the connection before doing anything
APPLY_THEN_DROP = -2  # fault: do the call, then close the connection (the reply is lost)
PASS = -3  # no fault for this call (to script a later call's)
STALL = 0.01  # seconds: the event loop running this late is recorded (Emulator.stall)
STALLS_KEPT = 1000


class Callback(NamedTuple):
    """A callback the emulator owes an app: the signed URL and the JSON body."""

    url: str
    body: bytes


@dataclass
class Faults:
    """Knobs: added latency, random or scripted ErrorCodes, HTTP 502s, dropped connections."""

    latency: float = 0.0  # before the call is handled
    reply_latency: float = 0.0  # after it is handled: the answer is computed, then held back
    error_rate: float = 0.0
    error_code: int = 100001
    http_502_rate: float = 0.0
    drop_rate: float = 0.0
    # api -> the next calls' faults: an ErrorCode, or HTTP_502 / DROP / APPLY_THEN_DROP
    scripted: dict[str, deque[int]] = field(default_factory=dict)


class Emulator:
    """Tencent's Live Engine REST API for the apps registered with ``add_app``."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.rng = random.Random(seed)
        self.apps: dict[int, App] = {}
        self.faults = Faults()
        self.enforce_rate_limit = True
        self.calls: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        self.usersigs: defaultdict[int, set[str]] = defaultdict(set)
        self.randoms: list[int] = []
        self.applied: list[tuple[str, Any]] = []  # (api, request body) of every write that took effect
        self.outbox: list[Callback] = []  # callbacks to send (server.py sends them)
        self.callbacks_sent: Counter[str] = Counter()  # by outcome: ok, or what failed
        self._admitted: defaultdict[str, deque[float]] = defaultdict(deque)
        self.stalls: list[tuple[float, float]] = []  # (when, seconds late): the loop ran late (server.py)
        self._seq = 0

    # ------------------------------------------------------------------ set-up and knobs

    def add_app(self, sdkappid: int, key: str, admins: set[str] | None = None) -> App:
        app = self.apps[sdkappid] = App(sdkappid=sdkappid, key=key, admins=admins or {"administrator"})
        return app

    def add_room(self, sdkappid: int, room_id: str, **fields: Any) -> dict[str, Any]:
        room = _new_room(room_id, fields.pop("Owner_Account", "administrator"), int(self.wall()))
        room.update(fields)
        self.apps[sdkappid].rooms[room_id] = room
        self.apps[sdkappid].metadata.setdefault(room_id, {})
        return room

    def add_members(self, sdkappid: int, room_id: str, accounts: list[str]) -> None:
        """Members who entered the room (as clients would)."""
        people = self.apps[sdkappid].people.setdefault(room_id, People())
        people.members.extend(a for a in accounts if a not in people.members)

    def fail_next(self, api: str, *codes: int) -> None:
        """The next calls to ``api`` meet these faults (ErrorCodes, HTTP_502, DROP, APPLY_THEN_DROP, PASS)."""
        self.faults.scripted.setdefault(api, deque()).extend(codes)

    def stall(self, when: float, late: float) -> None:
        """The event loop that stamps arrivals ran ``late`` seconds behind at ``when`` (the
        clock's time); kept from ``STALL`` on, the newest ``STALLS_KEPT``."""
        if late >= STALL:
            self.stalls.append((when, late))
            del self.stalls[:-STALLS_KEPT]

    def reset_counters(self) -> None:
        self.calls.clear()
        self.stalls.clear()
        self.codes.clear()
        self.arrivals.clear()
        self.usersigs.clear()
        self.randoms.clear()
        self.applied.clear()

    def busiest_second(self, key: str) -> int:
        """Most arrivals for ``"sdkappid:api"`` in any sliding one-second window."""
        times = sorted(self.arrivals.get(key, []))
        return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "codes": {str(k): v for k, v in self.codes.items()},
            "busiest_second": {k: self.busiest_second(k) for k in self.arrivals},
            "arrivals": {
                k: {"count": len(v), "first": min(v), "last": max(v), "per_second": _per_second(v), "times": sorted(v)}
                for k, v in self.arrivals.items()
                if v
            },
            "usersigs": {str(k): len(v) for k, v in self.usersigs.items()},
            "callbacks_sent": dict(self.callbacks_sent),
            "stalls": [[round(when, 4), round(late, 4)] for when, late in self.stalls],
        }

    # ------------------------------------------------------------------ one request

    def fault_for(self, api: str) -> int | None:
        """The fault this call meets: an ErrorCode, HTTP_502, DROP, APPLY_THEN_DROP, or None."""
        scripted = self.faults.scripted.get(api)
        if scripted:
            fault = scripted.popleft()
            return None if fault == PASS else fault
        roll = self.rng.random()
        f = self.faults
        if roll < f.drop_rate:
            return DROP
        if roll < f.drop_rate + f.http_502_rate:
            return HTTP_502
        if roll < f.drop_rate + f.http_502_rate + f.error_rate:
            return f.error_code
        return None

    def arrive(self, api: str, query: dict[str, str]) -> None:
        self.calls[api] += 1
        self.arrivals[f"{query.get('sdkappid', '?')}:{api}"].append(self.clock())

    def handle(
        self,
        api: str,
        query: dict[str, str],
        body: Any,
        injected: int | None = None,
        service: str = "live_engine_http_srv",
    ) -> Reply:
        """Tencent's reply to one call (``v4/<service>/<api>``) whose fault (if any) is an ErrorCode."""
        self._seq += 1
        request_id = f"Id-emu{self._seq:08d}-O-Seq-{self._seq}"
        try:
            if SERVICES.get(api, "live_engine_http_srv") != service:
                raise ApiError(60009, f"unknown command {service}/{api}")
            app = self._authenticate(api, query)
            if injected:
                raise ApiError(injected, "injected fault")
            room_id = body.get("RoomId") if isinstance(body, dict) else None
            before = app.rooms.get(room_id) if isinstance(room_id, str) else None  # (a destroy's callback shows it)
            response = self._dispatch(app, api, body)
            if api in WRITES:
                self.applied.append((api, body))
            if api in CALLBACKS:
                self._notify(app, CALLBACKS[api], body, query.get("identifier", ""), before)
        except ApiError as exc:
            self.codes[exc.code] += 1
            return {"ActionStatus": "FAIL", "ErrorCode": exc.code, "ErrorInfo": exc.info, "RequestId": request_id}
        self.codes[0] += 1
        reply: Reply = {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0, "RequestId": request_id}
        if response is not None:
            reply["Response"] = response
        return reply

    def _notify(self, app: App, command: str, body: dict[str, Any], operator: str, before: Any) -> None:
        """Owe the app a callback for a write that took effect, if it asked for this command."""
        if not app.callback_url or command not in app.callback_commands:
            return
        event: dict[str, Any] = {
            "CallbackCommand": command,
            "Operator_Account": operator,
            "EventTime": int(self.wall() * 1000),
        }
        if command == "Live.CallbackAfterDestroyRoom":
            event |= {"RoomId": body["RoomId"], "EventType": "DestroyByUser", "RoomInfo": before or {}}
        elif command in ("Live.CallbackAfterCreateRoom", "Live.CallbackAfterUpdateRoomInfo"):
            room_id = body["RoomInfo"]["RoomId"]
            event["RoomInfo"] = dict(app.rooms.get(room_id, {"RoomId": room_id}))
        elif command == "Live.CallbackAfterSetMetadata":
            event |= {"RoomId": body["RoomId"], "Metadata": body["Metadata"]}
        else:
            event |= {"RoomId": body["RoomId"], "Keys": body["Keys"]}
        query = {
            "SdkAppid": app.sdkappid,
            "CallbackCommand": command,
            "contenttype": "json",
            "ClientIP": "127.0.0.1",
            "OptPlatform": "RESTAPI",
        }
        if app.callback_token_enabled:
            request_time = str(int(self.wall()))
            sign = hashlib.sha256((app.callback_token + request_time).encode()).hexdigest()
            query |= {"RequestTime": request_time, "Sign": sign}
        joiner = "&" if "?" in app.callback_url else "?"
        self.outbox.append(Callback(app.callback_url + joiner + urlencode(query), json.dumps(event).encode()))

    def take_outbox(self) -> list[Callback]:
        owed, self.outbox = self.outbox, []
        return owed

    def _authenticate(self, api: str, query: dict[str, str]) -> App:
        if query.get("contenttype") != "json":
            raise ApiError(60002, "contenttype must be json")
        try:
            sdkappid = int(query["sdkappid"])
        except (KeyError, ValueError) as exc:
            raise ApiError(60012, "SDKAppID missing from the URL") from exc
        rnd = query.get("random", "")
        if not rnd.isdigit() or int(rnd) > 4294967295:
            raise ApiError(60002, "random must be a 32-bit unsigned integer")
        self.randoms.append(int(rnd))
        app = self.apps.get(sdkappid)
        if app is None:
            raise ApiError(70020, "SDKAppID not found")
        now = self.clock()
        if now < app.locked_until:
            raise ApiError(70050, "too many UserSig failures; retry after 1 minute")
        identifier = query.get("identifier", "")
        try:
            usersig.verify(
                query.get("usersig", ""), sdkappid=sdkappid, identifier=identifier, key=app.key, now=self.wall()
            )
        except usersig.SigError as exc:
            self._sig_failed(app, now)
            raise ApiError(exc.code, exc.info) from exc
        self.usersigs[sdkappid].add(query["usersig"])
        if identifier not in app.admins:
            raise ApiError(60010, "the request needs App admin rights")
        self._rate_limit(f"{sdkappid}:{api}", API_QPS.get(api, DEFAULT_QPS), now)
        return app

    def _sig_failed(self, app: App, now: float) -> None:
        app.sig_failures.append(now)
        while app.sig_failures and app.sig_failures[0] < now - LOCKOUT_WINDOW:
            app.sig_failures.popleft()
        if len(app.sig_failures) >= LOCKOUT_FAILURES:
            app.locked_until = now + LOCKOUT_WINDOW
            app.sig_failures.clear()

    def _rate_limit(self, key: str, qps: int, now: float) -> None:
        admitted = self._admitted[key]
        while admitted and admitted[0] <= now - 1.0:
            admitted.popleft()
        if self.enforce_rate_limit and len(admitted) >= qps:
            raise ApiError(60007, "REST API call frequency over the limit")
        admitted.append(now)

    def _dispatch(self, app: App, api: str, body: Any) -> Reply | None:
        if not isinstance(body, dict):
            raise ApiError(60003, "request JSON could not be parsed")
        handler = _HANDLERS.get(api)
        if handler is None:
            raise ApiError(60009, f"unknown command {api}")
        return handler(self, app, body)


def _per_second(times: list[float]) -> list[int]:
    """Arrivals in each whole second since the first one."""
    first = min(times)
    counts = [0] * (int(max(times) - first) + 1)
    for t in times:
        counts[int(t - first)] += 1
    return counts


# ---------------------------------------------------------------------- the APIs


def _new_room(room_id: str, owner: str, now: int) -> dict[str, Any]:
    return {
        "RoomId": room_id,
        "RoomName": room_id,
        "RoomType": "Live",
        "Owner_Account": owner,
        "CreateTime": now,
        "IsSeatEnabled": True,
        "TakeSeatMode": "FreeToTake",
        "MaxSeatCount": 8,
        "MaxMemberCount": 300,
        "IsMessageDisabled": False,
        "CoverURL": "",
        "Category": [],
        "ActivityStatus": 0,
        "ViewCount": 0,
        "IsPublicVisible": True,
    }


_UPDATABLE: dict[str, tuple[type, int | None]] = {
    "RoomName": (str, 100),
    "MaxMemberCount": (int, None),
    "IsMessageDisabled": (bool, None),
    "CoverURL": (str, 200),
    "Category": (list, 3),
    "ActivityStatus": (int, None),
    "IsPublicVisible": (bool, None),
    "TakeSeatMode": (str, None),
}


def _check_fields(info: dict[str, Any], allowed: dict[str, tuple[type, int | None]]) -> None:
    for name, value in info.items():
        if name == "RoomId" or name not in allowed:
            continue
        kind, limit = allowed[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ApiError(100002, f"{name} has the wrong type")
        size = len(value.encode()) if isinstance(value, str) else len(value) if isinstance(value, list) else 0
        if limit is not None and size > limit:
            raise ApiError(100009 if name == "Category" else 100002, f"{name} is over its limit")
        if name == "Category" and not all(isinstance(c, int) and not isinstance(c, bool) for c in info[name]):  # noqa: PLR1733 - `value` is narrowed to object
            raise ApiError(100002, "Category must hold integers")
        if name == "TakeSeatMode" and value not in ("FreeToTake", "ApplyToTake"):
            raise ApiError(100002, "TakeSeatMode must be FreeToTake or ApplyToTake")


def create_room(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    info = body.get("RoomInfo")
    if not isinstance(info, dict) or info.get("RoomType") != "Live":
        raise ApiError(100002, "RoomInfo with RoomType Live is required")
    room_id = model.room_id(info)
    if room_id in app.rooms:
        if app.rooms[room_id]["Owner_Account"] == str(info.get("Owner_Account", "administrator")):
            raise ApiError(100010, "RoomId exists and you are its owner")
        raise ApiError(100003, "RoomId already exists")
    _check_fields(info, _UPDATABLE)
    room = _new_room(room_id, str(info.get("Owner_Account", "administrator")), int(emu.wall()))
    room.update({k: v for k, v in info.items() if k in _UPDATABLE or k in ("IsSeatEnabled", "MaxSeatCount")})
    app.rooms[room_id] = room
    app.metadata[room_id] = {}
    return None


def destroy_room(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    room = model.room(app, body)
    del app.rooms[room["RoomId"]]
    app.metadata.pop(room["RoomId"], None)
    people = app.people.pop(room["RoomId"], People())
    stats = {"TotalViewers": len(people.members), "TotalGiftsSent": 0, "TotalGiftCoins": 0}
    return {"Statistic": stats | {"TotalUniqueGiftSenders": 0, "TotalLikesReceived": 0}}


def get_room_list(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    nxt, count = body.get("Next", ""), body.get("Count", 20)
    if not isinstance(nxt, str) or not isinstance(count, int) or not 1 <= count <= 20:
        raise ApiError(100002, "Next must be a string and Count 1-20")
    start = int(nxt) if nxt.isdigit() else 0
    rooms = sorted((r for r in app.rooms.values() if r.get("IsPublicVisible")), key=lambda r: -r["ViewCount"])
    page = rooms[start : start + count]
    more = start + count < len(rooms)
    keep = ("RoomName", "RoomId", "Owner_Account", "CoverURL", "Category", "CreateTime", "ActivityStatus", "ViewCount")
    return {"Next": str(start + count) if more else "", "RoomList": [{k: r[k] for k in keep} for r in page]}


def get_room_info(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    info = dict(model.room(app, body))
    owner = info["Owner_Account"]
    if isinstance(owner, str) and owner.isdigit():
        info["Owner_Account"] = int(owner)  # as in Tencent's sample reply
    info["TakeSeatMode"] = 1 if info["TakeSeatMode"] == "FreeToTake" else 2
    return {"RoomInfo": info}


def update_room_info(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    info = body.get("RoomInfo")
    if not isinstance(info, dict):
        raise ApiError(100002, "RoomInfo is required")
    room = model.room(app, info)
    _check_fields(info, _UPDATABLE)
    room.update({k: v for k, v in info.items() if k in _UPDATABLE})
    return None


def _keys(body: dict[str, Any]) -> list[str]:
    keys = body.get("Keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ApiError(100002, "Keys must be an array of strings")
    return keys


def get_room_metadata(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    room = model.room(app, body)
    stored = app.metadata[room["RoomId"]]
    keys = _keys(body) or list(stored)
    return {"Metadata": [{"Key": k, "Value": stored[k]} for k in keys if k in stored]}


def set_room_metadata(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    room = model.room(app, body)
    items = body.get("Metadata")
    if not isinstance(items, list) or not items:
        raise ApiError(100002, "Metadata must be a non-empty array")
    merged = dict(app.metadata[room["RoomId"]])
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Key"), str) or not isinstance(item.get("Value"), str):
            raise ApiError(100002, "each Metadata item needs string Key and Value")
        if not 1 <= len(item["Key"].encode()) <= 50:
            raise ApiError(100504, "a key is over 50 bytes")
        if len(item["Value"].encode()) > 2048:
            raise ApiError(100501, "a value is over 2KB")
        merged[item["Key"]] = item["Value"]
    if len(merged) > 10:
        raise ApiError(100500, "more than 10 keys")
    if sum(len(v.encode()) for v in merged.values()) > 16384:
        raise ApiError(100502, "values total over 16KB")
    app.metadata[room["RoomId"]] = merged
    return None


def del_room_metadata(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    room = model.room(app, body)
    keys = _keys(body)
    stored = app.metadata[room["RoomId"]]
    present = [k for k in keys if k in stored]
    if not present:
        raise ApiError(100503, "none of the keys exist")
    for key in present:
        del stored[key]
    return None


# ---------------------------------------------------------------------- live_config: callbacks


def _callback_settings(body: dict[str, Any]) -> tuple[str, list[str]]:
    url, commands = body.get("Url"), body.get("CallbackCommandList")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 1024:
        raise ApiError(100002, "Url must be an http(s) URL")
    if not isinstance(commands, list) or not commands or not all(isinstance(c, str) for c in commands):
        raise ApiError(100002, "CallbackCommandList must be a non-empty array of strings")
    return url, commands


def set_callback(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    if app.callback_url:
        raise ApiError(100002, "a callback is already set: update_callback changes it")
    app.callback_url, app.callback_commands = _callback_settings(body)
    return None


def update_callback(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    if not app.callback_url:
        raise ApiError(100002, "no callback is set: set_callback first")
    app.callback_url, app.callback_commands = _callback_settings(body)
    return None


def get_callback(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    return {"Url": app.callback_url, "CallbackCommandList": list(app.callback_commands)}


def set_callback_token(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    token, enabled = body.get("Token"), body.get("IsTokenEnable")
    if not isinstance(token, str) or not 1 <= len(token) <= 128 or not isinstance(enabled, bool):
        raise ApiError(100002, "Token (1-128 characters) and IsTokenEnable are required")
    app.callback_token, app.callback_token_enabled = token, enabled
    return None


def get_callback_token(emu: Emulator, app: App, body: dict[str, Any]) -> Reply | None:
    return {"Token": app.callback_token, "IsTokenEnable": app.callback_token_enabled}


_HANDLERS: dict[str, Callable[[Emulator, App, dict[str, Any]], Reply | None]] = {
    f.__name__: f
    for f in (
        create_room,
        destroy_room,
        get_room_list,
        get_room_info,
        update_room_info,
        get_room_metadata,
        set_room_metadata,
        del_room_metadata,
        set_callback,
        update_callback,
        get_callback,
        set_callback_token,
        get_callback_token,
    )
}
_HANDLERS.update(members.HANDLERS)  # (they need only the clock of the emulator they are given)
