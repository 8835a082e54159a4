"""The emulator's room surface beyond rooms and metadata: members, admins, bans, mutes, messages,
stats, gifts, seats and robots, as strict as Tencent's documented limits (reference §3.7, §3.8, §9).

State lives beside each room in ``App.people``; accounts are not checked against an IM account
list (Tencent wants imported accounts for owners, senders and robots; the emulator takes any).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from live_engine_emulator.model import ApiError, App, Clocked, People, Reply
from live_engine_emulator.model import people as _people

ADMINS_MAX = 5
ROBOTS_MAX = 3
ACCOUNTS_PER_CALL = 20


def _accounts(body: dict[str, Any], name: str, most: int | None = None) -> list[str]:
    value = body.get(name)
    good = isinstance(value, list) and all(isinstance(a, str) and 1 <= len(a.encode()) <= 32 for a in value)
    if not good or not value:
        raise ApiError(100002, f"{name} must be a non-empty array of account strings")
    if most is not None and len(value) > most:
        raise ApiError(100002, f"{name} holds at most {most} accounts")
    return [str(a) for a in value]


def _int(body: dict[str, Any], name: str, *, default: int | None = None, low: int = 0, high: int = 2**31 - 1) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(100002, f"{name} must be an integer {low}-{high}")
    return value


def get_member_list(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    nxt = body.get("Next")
    if not isinstance(nxt, str):
        raise ApiError(100002, "Next must be a string")
    start = int(nxt) if nxt.isdigit() else 0
    page = people.members[start : start + 100][:1000]
    more = start + 100 < len(people.members)
    return {
        "Next": str(start + 100) if more else "",
        "MemberCount": len(people.members),
        "MemberList": [{"Member_Account": m} for m in page],
    }


def get_admin_list(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    return {"Admin_Account": list(_people(app, body).admins)}


def modify_admin(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    accounts = _accounts(body, "Admin_Account")
    op = body.get("OpType")
    if op == "add":
        merged = list(dict.fromkeys([*people.admins, *accounts]))
        if len(merged) > ADMINS_MAX:
            raise ApiError(100020, f"a room has at most {ADMINS_MAX} admins")
        people.admins = merged
    elif op == "delete":
        people.admins = [a for a in people.admins if a not in accounts]
    else:
        raise ApiError(100002, "OpType must be add or delete")
    return None


def ban_member(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    accounts = _accounts(body, "MemberList_Account", ACCOUNTS_PER_CALL)
    until = int(emu.wall()) + _int(body, "Duration", low=1)
    if "Reason" in body and not isinstance(body["Reason"], str):
        raise ApiError(100002, "Reason must be a string")
    for account in accounts:
        people.banned[account] = until
        if account in people.members:
            people.members.remove(account)
    return None


def unban_member(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    for account in _accounts(body, "MemberList_Account", ACCOUNTS_PER_CALL):
        people.banned.pop(account, None)
    return None


def get_banned_member_list(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    offset = _int(body, "Offset", default=0)
    limit = _int(body, "Limit", default=100, low=1, high=100)
    now = int(emu.wall())
    active = sorted((a, u) for a, u in people.banned.items() if u > now)
    page = active[offset : offset + limit]
    nxt = offset + limit if offset + limit < len(active) else 0
    return {"BannedAccountList": [{"Member_Account": a, "BannedUntil": u} for a, u in page], "NextOffset": nxt}


def mute_member(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    accounts = _accounts(body, "MemberList_Account", ACCOUNTS_PER_CALL)
    seconds = _int(body, "MuteTime")
    for account in accounts:
        if seconds == 0:
            people.muted.pop(account, None)
        else:
            people.muted[account] = int(emu.wall()) + seconds
    return None


def get_muted_member_list(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    now = int(emu.wall())
    muted = sorted((a, u) for a, u in _people(app, body).muted.items() if u > now)
    return {"MutedAccountList": [{"Member_Account": a, "MutedUntil": u} for a, u in muted]}


def _message(app: App, body: dict[str, Any], fields: tuple[str, ...]) -> None:
    people = _people(app, body)
    sender = body.get("Sender_Account")
    if not isinstance(sender, str) or not 1 <= len(sender.encode()) <= 32:
        raise ApiError(100002, "Sender_Account must be an account")
    for name in fields:
        if not isinstance(body.get(name), str):
            raise ApiError(100002, f"{name} must be a string")
    if sender in people.muted:
        raise ApiError(100002, "the sender is muted")
    people.messages.append({k: body[k] for k in ("Sender_Account", *fields)})


def send_text_msg(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    _message(app, body, ("TextContent",))
    return None


def send_custom_msg(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    _message(app, body, ("BusinessId", "Data"))
    return None


def get_room_stats(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    return {
        "TotalViewers": len(people.members),
        "TotalGiftsSent": 0,
        "TotalGiftCoins": 0,
        "TotalUniqueGiftSenders": 0,
        "TotalLikesReceived": 0,
        "TotalMsgCount": len(people.messages),
    }


def get_gift_count(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    account = body.get("From_Account")
    if not isinstance(account, str) or not 1 <= len(account.encode()) <= 32:
        raise ApiError(100002, "From_Account must be an account")
    totals = {"Sequence": 0, "TotalCount": 0, "TotalCoins": 0, "GiftSenderCount": 0}
    return {**totals, **people.gift_counts.get(account, {})}


def get_seat_list(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    return {"SeatList": [dict(seat) for seat in _people(app, body).seats]}


def _seat(people: People, body: dict[str, Any], name: str) -> dict[str, Any]:
    index = _int(body, name, high=len(people.seats) - 1)
    return people.seats[index]


def lock_seat(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    seat = _seat(people, body, "Index")
    for name in ("ForbidTaken", "ForbidVideo", "ForbidAudio"):
        if name in body and not isinstance(body[name], bool):
            raise ApiError(100002, f"{name} must be a boolean")
    seat.pop("Member_Account", None)
    seat["IsTakenDisabled"] = bool(body.get("ForbidTaken", seat["IsTakenDisabled"]))
    return None


def pick_user_on_seat(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    seat = _seat(people, body, "Index")
    account = body.get("Member_Account")
    if not isinstance(account, str) or account not in people.members:
        raise ApiError(100002, "Member_Account must be a member of the room")
    if seat.get("Member_Account") or seat["IsTakenDisabled"]:
        raise ApiError(100002, "the seat is taken or locked")
    seat["Member_Account"] = account
    return None


def kick_user_off_seat(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    account = body.get("Member_Account")
    if not isinstance(account, str) or not isinstance(body.get("Data"), str):
        raise ApiError(100002, "Member_Account and Data are required")
    for seat in people.seats:
        if seat.get("Member_Account") == account:
            del seat["Member_Account"]
    return None


def move_user_to_seat(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    target = _seat(people, body, "SeatIndex")
    account = body.get("Member_Account")
    policy = body.get("Policy")
    if not isinstance(account, str) or account not in people.members:
        raise ApiError(100002, "Member_Account must be a member of the room")
    if policy not in (0, 1, 2):
        raise ApiError(100002, "Policy must be 0 (cancel), 1 (force) or 2 (swap)")
    if target["IsTakenDisabled"]:
        raise ApiError(100002, "the seat is locked")
    current = next((s for s in people.seats if s.get("Member_Account") == account), None)
    occupant = target.get("Member_Account")
    if occupant and occupant != account:
        if policy == 0:
            raise ApiError(100002, "the seat is taken")
        if policy == 2 and current is not None:
            current["Member_Account"] = occupant
        elif current is not None:
            del current["Member_Account"]
    elif current is not None:
        del current["Member_Account"]
    target["Member_Account"] = account
    return None


def get_robot(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    return {"RobotList_Account": list(_people(app, body).robots)}


def add_robot(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    merged = list(dict.fromkeys([*people.robots, *_accounts(body, "RobotList_Account")]))
    if len(merged) > ROBOTS_MAX:
        raise ApiError(100002, f"a room has at most {ROBOTS_MAX} robots")
    people.robots = merged
    return None


def del_robot(emu: Clocked, app: App, body: dict[str, Any]) -> Reply | None:
    people = _people(app, body)
    gone = _accounts(body, "RobotList_Account")
    people.robots = [r for r in people.robots if r not in gone]
    return None


HANDLERS: dict[str, Callable[[Clocked, App, dict[str, Any]], Reply | None]] = {
    f.__name__: f
    for f in (
        get_member_list,
        get_admin_list,
        modify_admin,
        ban_member,
        unban_member,
        get_banned_member_list,
        mute_member,
        get_muted_member_list,
        send_text_msg,
        send_custom_msg,
        get_room_stats,
        get_gift_count,
        get_seat_list,
        lock_seat,
        pick_user_on_seat,
        kick_user_off_seat,
        move_user_to_seat,
        get_robot,
        add_robot,
        del_robot,
    )
}
API_QPS = {"get_room_list": 10, "get_room_stats": 100, "get_robot": 100, "add_robot": 100, "del_robot": 100}
WRITES = frozenset(
    {"modify_admin", "ban_member", "unban_member", "mute_member", "send_text_msg", "send_custom_msg"}
    | {"lock_seat", "pick_user_on_seat", "kick_user_off_seat", "move_user_to_seat", "add_robot", "del_robot"}
)
