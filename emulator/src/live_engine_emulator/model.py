"""What every command handler shares: the ApiError they raise, an app with its rooms and the
people in them, and the room lookups Tencent answers 100002/100004 for.

The bottom of the package: ``members`` and ``state`` import it, it imports neither.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Reply = dict[str, Any]
SEATS = 8


class ApiError(Exception):
    """A call Tencent refuses: the ErrorCode and ErrorInfo of its ``FAIL`` reply."""

    def __init__(self, code: int, info: str) -> None:
        super().__init__(info)
        self.code = code
        self.info = info


class Clocked(Protocol):
    """What a handler needs of the emulator: its wall clock (unix seconds)."""

    wall: Callable[[], float]


@dataclass
class People:
    """Who is in a room and what they may do."""

    members: list[str] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)
    banned: dict[str, int] = field(default_factory=dict)  # account -> until (unix s)
    muted: dict[str, int] = field(default_factory=dict)
    robots: list[str] = field(default_factory=list)
    seats: list[dict[str, Any]] = field(
        default_factory=lambda: [{"Index": i, "IsTakenDisabled": False} for i in range(SEATS)]
    )
    messages: list[dict[str, Any]] = field(default_factory=list)
    gift_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # From_Account -> get_gift_count's totals


@dataclass
class App:
    sdkappid: int
    key: str
    admins: set[str]
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    sig_failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    callback_url: str = ""  # live_config: where Tencent sends callbacks, and which commands
    callback_commands: list[str] = field(default_factory=list)
    callback_token: str = ""
    callback_token_enabled: bool = False
    people: dict[str, People] = field(default_factory=dict)  # room id -> its members, admins, ...


def room_id(body: dict[str, Any]) -> str:
    """The body's ``RoomId``; 100002 unless it is a string of 1-48 bytes."""
    value = body.get("RoomId")
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= 48:
        raise ApiError(100002, "RoomId must be a string of 1-48 bytes")
    return value


def room(app: App, body: dict[str, Any]) -> dict[str, Any]:
    """The room the body names; 100004 when the app has none by that id."""
    found = app.rooms.get(room_id(body))
    if found is None:
        raise ApiError(100004, "room does not exist")
    return found


def people(app: App, body: dict[str, Any]) -> People:
    """The people of the room the body names (an empty room's, on first use)."""
    return app.people.setdefault(room(app, body)["RoomId"], People())
