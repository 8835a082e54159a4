"""Wire shapes: the gateway's own API, and small views of Tencent's requests and replies.

Our API uses Tencent's field names in snake_case; Tencent's side keeps its own names through
explicit ``rename`` maps (``CoverURL`` and ``Owner_Account`` defeat any automatic rule).
Tencent's type quirks (``Owner_Account`` as a number, ``TakeSeatMode`` as 1 | 2, booleans as
strings) are absorbed here by ``room_from_wire`` and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

TakeSeatMode = Literal["FreeToTake", "ApplyToTake"]

Scope = Literal["read", "write", "events"]

# Tencent's limits (reference §3 and §9), in UTF-8 bytes as Tencent counts them; ``validation``
# checks the bytes. JSON Schema can only count characters, so the types below carry each limit as
# a length in characters: a bound every valid value meets (N bytes never hold more than N
# characters), exact for ASCII, which the OpenAPI document is generated from.
ROOM_ID_MAX = 48
ROOM_NAME_MAX = 100
COVER_URL_MAX = 200
CATEGORY_MAX = 3
METADATA_KEYS_MAX = 10
METADATA_KEY_MAX = 50
METADATA_VALUE_MAX = 2048
ACCOUNT_MAX = 32  # an IM UserID
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # (validation also refuses the newline Python's "$" lets through)

ADDRESSABLE = r"^[^/\\\x00-\x1f\x7f]*$"  # ... nor "/" or "\\": no path could address the room (api._SEGMENT)

RoomId = Annotated[str, Meta(min_length=1, max_length=ROOM_ID_MAX, pattern=NO_CONTROL)]
NewRoomId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=ROOM_ID_MAX,
        pattern=ADDRESSABLE,
        description="1-48 bytes, no control characters, no '/' or '\\' (no path could address the room)",
    ),
]
Account = Annotated[str, Meta(min_length=1, max_length=ACCOUNT_MAX, pattern=NO_CONTROL)]
RoomName = Annotated[str, Meta(max_length=ROOM_NAME_MAX)]
CoverUrl = Annotated[str, Meta(max_length=COVER_URL_MAX)]
Category = Annotated[list[Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)]], Meta(max_length=CATEGORY_MAX)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=METADATA_KEY_MAX)]


# --------------------------------------------------------------------------- our API


class Room(Struct, kw_only=True, omit_defaults=True):
    """A live room as callers see it; a field Tencent omitted stays omitted."""

    room_id: str
    room_name: str | UnsetType = UNSET
    room_type: str | UnsetType = UNSET
    owner_account: str | UnsetType = UNSET
    create_time: int | UnsetType = UNSET
    is_seat_enabled: bool | UnsetType = UNSET
    take_seat_mode: TakeSeatMode | UnsetType = UNSET
    max_seat_count: int | UnsetType = UNSET
    max_member_count: int | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    view_count: int | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET


class RoomPatch(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Body of ``PATCH /rooms/{room_id}``: a non-empty subset of the updatable fields."""

    # JSON Schema keywords for a rule over the fields together: the OpenAPI document adds them.
    json_schema_extra: ClassVar[dict[str, object]] = {"minProperties": 1}

    room_name: RoomName | UnsetType = UNSET
    max_member_count: Annotated[int, Meta(ge=0, le=2**31 - 1)] | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    cover_url: CoverUrl | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    activity_status: Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)] | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET
    take_seat_mode: TakeSeatMode | UnsetType = UNSET


class MetadataPatch(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /rooms/{room_id}/metadata``: keys to upsert with their values (all the
    values together at most 16384 bytes, which ``validation`` checks: JSON Schema cannot say it)."""

    metadata: Annotated[
        dict[MetadataKey, Annotated[str, Meta(max_length=METADATA_VALUE_MAX)]],
        Meta(min_length=1, max_length=METADATA_KEYS_MAX),
    ]


class CallbackBody(Struct, kw_only=True, omit_defaults=True):
    """What Tencent posts to the callback URL (documented for clients; the receiver reads only
    the room and the event time, leniently, and keeps the rest of the body as it came)."""

    CallbackCommand: str | UnsetType = UNSET
    RoomId: str | UnsetType = UNSET
    EventTime: int | UnsetType = UNSET
    Operator_Account: str | UnsetType = UNSET


class CallbackAck(Struct, kw_only=True):
    """What Tencent expects back from a callback (``callbacks.ACK``)."""

    ActionStatus: str = "OK"
    ErrorInfo: str = ""
    ErrorCode: int = 0


class Metadata(Struct, kw_only=True):
    """Reply of ``GET /rooms/{room_id}/metadata``."""

    metadata: dict[str, str]


class RoomEvent(Struct):
    """The data of an event on ``GET /v1/tenants/{tenant}/events``: a callback the gateway
    accepted (``payload``: Tencent's JSON body, as it came)."""

    command: str
    room_id: str | None
    event_time: int | None
    payload: msgspec.Raw


class EventsLost(Struct):
    """The data of an ``event: lost`` on the events stream: events after ``after`` (through
    ``through``, when known) are no longer kept; the stream goes on from the oldest one kept."""

    code: Literal["events_lost"]
    after: str
    through: str | None
    detail: str


class Problem(Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document with the gateway's stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | UnsetType = UNSET
    upstream_code: int | UnsetType = UNSET
    upstream_request_id: str | UnsetType = UNSET
    request_id: str | UnsetType = UNSET
    may_have_applied: bool | UnsetType = UNSET  # true: an attempt at Tencent may have taken effect


# --------------------------------------------------------------------------- Tencent's side

_ROOM_WIRE_NAMES = {
    "room_id": "RoomId",
    "room_name": "RoomName",
    "room_type": "RoomType",
    "owner_account": "Owner_Account",
    "create_time": "CreateTime",
    "is_seat_enabled": "IsSeatEnabled",
    "take_seat_mode": "TakeSeatMode",
    "max_seat_count": "MaxSeatCount",
    "max_member_count": "MaxMemberCount",
    "is_message_disabled": "IsMessageDisabled",
    "cover_url": "CoverURL",
    "category": "Category",
    "activity_status": "ActivityStatus",
    "view_count": "ViewCount",
    "is_public_visible": "IsPublicVisible",
}

# Booleans Tencent has been seen to send as strings or integers.
_Flag = bool | int | str


class Envelope(Struct, kw_only=True):
    """The part of every Tencent reply that says whether the call worked."""

    ActionStatus: str = ""
    ErrorCode: int | None = None
    ErrorInfo: str = ""
    RequestId: str = ""


class RoomInfoWire(Struct, kw_only=True, rename=_ROOM_WIRE_NAMES):
    """``Response.RoomInfo`` of get_room_info, accepting every type Tencent has been seen to use."""

    room_id: str
    room_name: str | UnsetType = UNSET
    room_type: str | UnsetType = UNSET
    owner_account: str | int | UnsetType = UNSET
    create_time: int | UnsetType = UNSET
    is_seat_enabled: _Flag | UnsetType = UNSET
    take_seat_mode: int | str | UnsetType = UNSET
    max_seat_count: int | UnsetType = UNSET
    max_member_count: int | UnsetType = UNSET
    is_message_disabled: _Flag | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    view_count: int | UnsetType = UNSET
    is_public_visible: _Flag | UnsetType = UNSET


class RoomInfoBody(Struct, kw_only=True):
    RoomInfo: RoomInfoWire


class RoomInfoReply(Envelope, kw_only=True):
    Response: RoomInfoBody | None = None


class MetadataItem(Struct, kw_only=True):
    Key: str
    Value: str


class MetadataBody(Struct, kw_only=True):
    Metadata: list[MetadataItem] = []


class MetadataReply(Envelope, kw_only=True):
    Response: MetadataBody | None = None


class RoomIdRequest(Struct, kw_only=True, rename={"room_id": "RoomId"}):
    room_id: str


class SetMetadataRequest(Struct, kw_only=True):
    RoomId: str
    Metadata: list[MetadataItem]


class RoomInfoUpdate(Struct, kw_only=True, omit_defaults=True, rename=_ROOM_WIRE_NAMES):
    """``RoomInfo`` of update_room_info; ``TakeSeatMode`` goes as the string enum."""

    room_id: str
    room_name: str | UnsetType = UNSET
    max_member_count: int | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET
    take_seat_mode: TakeSeatMode | UnsetType = UNSET


class UpdateRoomRequest(Struct, kw_only=True):
    RoomInfo: RoomInfoUpdate


# --------------------------------------------------------------------------- conversions

_SEAT_MODES: dict[int | str, TakeSeatMode] = {
    1: "FreeToTake",
    2: "ApplyToTake",
    "1": "FreeToTake",
    "2": "ApplyToTake",
    "FreeToTake": "FreeToTake",
    "ApplyToTake": "ApplyToTake",
}


def _flag(value: _Flag | UnsetType) -> bool | UnsetType:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    if isinstance(value, int):  # bool is an int too
        return bool(value)
    return value


def account_text(value: str | int | UnsetType) -> str | UnsetType:
    """An account as a string: Tencent sends some as JSON numbers (too large for JavaScript)."""
    return value if isinstance(value, UnsetType) else str(value)


def room_from_wire(wire: RoomInfoWire) -> Room:
    """Normalise Tencent's room into ours: owner as a string, seat mode as the string enum."""
    owner = wire.owner_account
    mode = wire.take_seat_mode
    return Room(
        room_id=wire.room_id,
        room_name=wire.room_name,
        room_type=wire.room_type,
        owner_account=account_text(owner),
        create_time=wire.create_time,
        is_seat_enabled=_flag(wire.is_seat_enabled),
        take_seat_mode=UNSET if isinstance(mode, UnsetType) else _SEAT_MODES.get(mode, UNSET),
        max_seat_count=wire.max_seat_count,
        max_member_count=wire.max_member_count,
        is_message_disabled=_flag(wire.is_message_disabled),
        cover_url=wire.cover_url,
        category=wire.category,
        activity_status=wire.activity_status,
        view_count=wire.view_count,
        is_public_visible=_flag(wire.is_public_visible),
    )


def update_to_wire(room_id: str, patch: RoomPatch) -> UpdateRoomRequest:
    """Build update_room_info's body from a validated patch."""
    fields = msgspec.structs.asdict(patch)
    return UpdateRoomRequest(RoomInfo=RoomInfoUpdate(room_id=room_id, **fields))


# ---------------------------------------------------------------------- live_config: callback settings


class CallbackSettings(Struct, kw_only=True):
    """set_callback / update_callback's body, and get_callback's Response."""

    Url: str = ""
    CallbackCommandList: list[str] = []


class CallbackSettingsReply(Envelope, kw_only=True):
    Response: CallbackSettings | None = None


class CallbackTokenRequest(Struct, kw_only=True):
    Token: str
    IsTokenEnable: bool
