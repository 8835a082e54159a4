"""The catalogue's entries (SPEC §8), each with its Structs: ours in snake_case, Tencent's with
the same field names, renamed to Tencent's by msgspec (``reference/tencent-live-engine.md`` §3
and §9 give the fields and limits).

Limits the reference does not give are marked "assumed" in the entry: the gateway then keeps
Tencent's nearest documented limit (20 accounts per call, as ban_member takes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

from msgspec import UNSET, Meta, Struct, UnsetType
from msgspec.structs import asdict

from gateway import errors, validation
from gateway.catalogue import Args, Confirm, Operation, Query, Split, Variant, tencent, tencent_reply
from gateway.models import (
    ACCOUNT_MAX,
    METADATA_KEY_MAX,
    METADATA_KEYS_MAX,
    NO_CONTROL,
    Account,
    Category,
    CoverUrl,
    Envelope,
    Metadata,
    MetadataItem,
    MetadataPatch,
    MetadataReply,
    NewRoomId,
    Room,
    RoomInfoReply,
    RoomName,
    RoomPatch,
    SetMetadataRequest,
    TakeSeatMode,
    account_text,
    room_from_wire,
    update_to_wire,
)

ACCOUNTS_PER_CALL = 20  # ban_member's documented batch; assumed for unban and mute
ACCOUNTS_MAX = 1000  # accounts one request may name (the gateway's bound; longer lists are split)
ADMINS_MAX = 5
ROBOTS_MAX = 3
ROOMS_PER_PAGE = 20  # get_room_list's Count
BANS_PER_PAGE = 100  # get_banned_member_list's Limit
CURSOR_MAX = 256  # bytes: a page cursor Tencent gave, sent back
SEAT_TEMPLATE_MAX = 64
REASON_MAX = 256
KICK_DATA_MAX = 1024
BUSINESS_ID_MAX = 128
MESSAGE_MAX = 12 * 1024  # IM's limit for one message body, bytes (assumed: the Live pages give none)
_Seconds = Annotated[int, Meta(ge=1, le=10 * 365 * 86400)]
_Accounts = Annotated[list[Account], Meta(min_length=1, max_length=ACCOUNTS_MAX)]
_Index = Annotated[int, Meta(ge=0, le=1000)]


def _texts(accounts: list[str | int]) -> list[str]:
    return [str(a) for a in accounts]  # (Tencent sends some accounts as JSON numbers)


# ---------------------------------------------------------------------- shared shapes


class AdminAccounts(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/admins``: the accounts (UserIDs) to make admins."""

    accounts: Annotated[list[Account], Meta(min_length=1, max_length=ADMINS_MAX)]


class RobotAccounts(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/robots``: the robots' accounts (imported UserIDs)."""

    accounts: Annotated[list[Account], Meta(min_length=1, max_length=ROBOTS_MAX)]


def _room(args: Args) -> None:
    validation.room_id(args.room_id)


def _query_accounts(most: int = ACCOUNTS_MAX) -> Callable[[Args], None]:
    """Check the room and the ``account`` parameters (kept distinct, in request order)."""

    def validate(args: Args) -> None:
        _room(args)
        args.query["account"] = validation.accounts(args.query.get("account", []), field="account", most=most)

    return validate


def _body_accounts(most: int) -> Callable[[Args], None]:
    def validate(args: Args) -> None:
        _room(args)
        validation.accounts(args.body.accounts, field="accounts", most=most)

    return validate


def _validate_members(args: Args) -> None:
    _room(args)
    validation.bounded("cursor", args.one("cursor"), CURSOR_MAX)


# ---------------------------------------------------------------------- the room and its metadata


def _room_reply(args: Args, reply: RoomInfoReply) -> Struct:
    if reply.Response is None:
        raise errors.UpstreamUnavailable("Tencent get_room_info: reply without RoomInfo")
    return room_from_wire(reply.Response.RoomInfo)


def _validate_patch(args: Args) -> None:
    _room(args)
    validation.room_patch(args.body)


def _keys(*, required: bool) -> Callable[[Args], None]:
    """Check the room and the ``key`` parameters (kept distinct, in request order)."""

    def validate(args: Args) -> None:
        _room(args)
        args.query["key"] = validation.metadata_keys(args.query.get("key", []), required=required)

    return validate


class _KeysRequest(Struct, kw_only=True, rename=tencent(key="Keys")):
    room_id: str
    key: list[str]


def _validate_metadata(args: Args) -> None:
    _room(args)
    validation.metadata_patch(args.body)


def _metadata(args: Args, reply: MetadataReply) -> Struct:
    items = reply.Response.Metadata if reply.Response is not None else []
    return Metadata(metadata={item.Key: item.Value for item in items})


def _set_metadata(args: Args) -> Struct:
    items = [MetadataItem(Key=k, Value=v) for k, v in args.body.metadata.items()]
    return SetMetadataRequest(RoomId=args.room_id, Metadata=items)


# ---------------------------------------------------------------------- create, destroy, list, stats


class CreateRoom(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms``: the room id and any of create_room's room fields."""

    room_id: NewRoomId
    room_name: RoomName | UnsetType = UNSET
    owner_account: Account | UnsetType = UNSET
    cover_url: CoverUrl | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET
    is_seat_enabled: bool | UnsetType = UNSET
    take_seat_mode: TakeSeatMode | UnsetType = UNSET
    max_seat_count: Annotated[int, Meta(ge=1, le=1000)] | UnsetType = UNSET
    max_member_count: Annotated[int, Meta(ge=0, le=2**31 - 1)] | UnsetType = UNSET
    activity_status: Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)] | UnsetType = UNSET
    seat_template: Annotated[str, Meta(min_length=1, max_length=SEAT_TEMPLATE_MAX)] | UnsetType = UNSET
    keep_owner_on_seat: bool | UnsetType = UNSET


class Created(Struct, kw_only=True):
    room_id: str


class _WireRoomInfo(Struct, kw_only=True, omit_defaults=True, rename=tencent(cover_url="CoverURL")):
    room_id: str
    room_type: Literal["Live"]
    room_name: str | UnsetType = UNSET
    owner_account: str | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET
    is_seat_enabled: bool | UnsetType = UNSET
    take_seat_mode: str | UnsetType = UNSET
    max_seat_count: int | UnsetType = UNSET
    max_member_count: int | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    seat_template: str | UnsetType = UNSET
    keep_owner_on_seat: bool | UnsetType = UNSET


class _CreateRequest(Struct, kw_only=True):
    RoomInfo: _WireRoomInfo


def _validate_create(args: Args) -> None:
    body: CreateRoom = args.body
    args.room_id = validation.room_id(body.room_id)
    validation.room_fields(room_name=body.room_name, cover_url=body.cover_url, category=body.category)
    if body.owner_account is not UNSET:
        validation.account(body.owner_account, field="owner_account")
    if body.seat_template is not UNSET:
        validation.bounded("seat_template", body.seat_template, SEAT_TEMPLATE_MAX, minimum=1)


class RoomSummary(Struct, kw_only=True, omit_defaults=True):
    """A room in the list, as get_room_list gives it (snake_case; the owner always a string)."""

    room_id: str
    room_name: str | UnsetType = UNSET
    owner_account: str | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    create_time: int | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    view_count: int | UnsetType = UNSET


class RoomList(Struct, kw_only=True):
    rooms: list[RoomSummary]
    next_cursor: str | None


class _WireSummary(Struct, kw_only=True, rename=tencent(cover_url="CoverURL")):
    room_id: str | int
    room_name: str | UnsetType = UNSET
    owner_account: str | int | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[int] | UnsetType = UNSET
    create_time: int | UnsetType = UNSET
    activity_status: int | UnsetType = UNSET
    view_count: int | UnsetType = UNSET


class _RoomListBody(Struct, kw_only=True, rename=tencent(rooms="RoomList")):
    next: str = ""
    rooms: list[_WireSummary] = []


class _RoomListReply(Envelope, kw_only=True):
    Response: _RoomListBody | None = None


class _RoomListRequest(Struct, kw_only=True, rename=tencent(cursor="Next", limit="Count")):
    cursor: str
    limit: int


def _validate_list(args: Args) -> None:
    validation.integer(args.one("limit", "20"), field="limit", low=1, high=ROOMS_PER_PAGE)
    validation.bounded("cursor", args.one("cursor"), CURSOR_MAX)


def _room_list(args: Args, reply: _RoomListReply) -> Struct:
    body = reply.Response or _RoomListBody()
    rooms = [
        RoomSummary(**{**asdict(r), "room_id": str(r.room_id), "owner_account": account_text(r.owner_account)})
        for r in body.rooms
    ]
    return RoomList(rooms=rooms, next_cursor=body.next or None)


class RoomStats(Struct, kw_only=True):
    total_viewers: int = 0
    total_gifts_sent: int = 0
    total_gift_coins: int = 0
    total_unique_gift_senders: int = 0
    total_likes_received: int = 0
    total_msg_count: int = 0


class GiftCount(Struct, kw_only=True):
    """A member's gift totals in a room, as get_gift_count gives them."""

    sequence: int = 0
    total_count: int = 0
    total_coins: int = 0
    gift_sender_count: int = 0


class _GiftCountRequest(Struct, kw_only=True, rename=tencent(account="From_Account")):
    room_id: str
    account: str


def _validate_gift_count(args: Args) -> None:
    _room(args)
    validation.account(args.one("account"), field="account")


# ---------------------------------------------------------------------- members and admins


class Members(Struct, kw_only=True):
    members: list[str]
    member_count: int
    next_cursor: str | None


class _Member(Struct, rename=tencent()):
    member_account: str | int = ""


class _MembersBody(Struct, kw_only=True, rename=tencent(members="MemberList")):
    next: str = ""
    member_count: int = 0
    members: list[_Member] = []


class _MembersReply(Envelope, kw_only=True):
    Response: _MembersBody | None = None


class _MembersRequest(Struct, kw_only=True, rename=tencent(cursor="Next")):
    room_id: str
    cursor: str


def _members(args: Args, reply: _MembersReply) -> Struct:
    b = reply.Response or _MembersBody()
    names = [str(m.member_account) for m in b.members]
    return Members(members=names, member_count=b.member_count, next_cursor=b.next or None)


class Admins(Struct, kw_only=True):
    admins: list[str]


class _AdminsBody(Struct, kw_only=True, rename=tencent(admins="Admin_Account")):
    admins: list[str | int] = []


class _AdminsReply(Envelope, kw_only=True):
    Response: _AdminsBody | None = None


class _ModifyAdmin(Struct, kw_only=True, rename=tencent(accounts="Admin_Account")):
    room_id: str
    accounts: list[str]
    op_type: Literal["add", "delete"]


# ---------------------------------------------------------------------- bans and mutes


class Ban(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms/{room_id}/bans``: who, for how many seconds, and why."""

    accounts: _Accounts
    duration: _Seconds
    reason: Annotated[str, Meta(max_length=REASON_MAX)] | UnsetType = UNSET


class BannedMember(Struct, kw_only=True):
    account: str
    banned_until: int


class Bans(Struct, kw_only=True):
    bans: list[BannedMember]
    next_offset: int | None


class _Banned(Struct, kw_only=True, rename=tencent(account="Member_Account")):
    account: str | int = ""
    banned_until: int = 0


class _BansBody(Struct, kw_only=True, rename=tencent(bans="BannedAccountList")):
    bans: list[_Banned] = []
    next_offset: int = 0


class _BansReply(Envelope, kw_only=True):
    Response: _BansBody | None = None


class _BansRequest(Struct, kw_only=True, rename=tencent()):
    room_id: str
    offset: int
    limit: int


class _BanRequest(Struct, kw_only=True, omit_defaults=True, rename=tencent(accounts="MemberList_Account")):
    room_id: str
    accounts: list[str]
    duration: int
    reason: str | UnsetType = UNSET


class _UnbanRequest(Struct, kw_only=True, rename=tencent(accounts="MemberList_Account")):
    room_id: str
    accounts: list[str]


def _validate_bans(args: Args) -> None:
    _room(args)
    validation.integer(args.one("offset", "0"), field="offset", low=0, high=2**31 - 1)
    validation.integer(args.one("limit", "100"), field="limit", low=1, high=BANS_PER_PAGE)


def _validate_ban(args: Args) -> None:
    _body_accounts(ACCOUNTS_MAX)(args)
    if args.body.reason is not UNSET:
        validation.bounded("reason", args.body.reason, REASON_MAX)


def _bans(args: Args, reply: _BansReply) -> Struct:
    b = reply.Response or _BansBody()
    found = [BannedMember(account=str(x.account), banned_until=x.banned_until) for x in b.bans]
    return Bans(bans=found, next_offset=b.next_offset or None)


class Mute(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/mutes``: who, and for how many seconds."""

    accounts: _Accounts
    duration: _Seconds


class MutedMember(Struct, kw_only=True):
    account: str
    muted_until: int


class Mutes(Struct, kw_only=True):
    mutes: list[MutedMember]


class _Muted(Struct, kw_only=True, rename=tencent(account="Member_Account")):
    account: str | int = ""
    muted_until: int = 0


class _MutesBody(Struct, kw_only=True, rename=tencent(mutes="MutedAccountList")):
    mutes: list[_Muted] = []


class _MutesReply(Envelope, kw_only=True):
    Response: _MutesBody | None = None


class _MuteRequest(Struct, kw_only=True, rename=tencent(accounts="MemberList_Account", duration="MuteTime")):
    room_id: str
    accounts: list[str]
    duration: int  # seconds; 0 unmutes


def _mutes(args: Args, reply: _MutesReply) -> Struct:
    b = reply.Response or _MutesBody()
    return Mutes(mutes=[MutedMember(account=str(x.account), muted_until=x.muted_until) for x in b.mutes])


# ---------------------------------------------------------------------- messages


class Message(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms/{room_id}/messages``: a text message (``text``) or a custom one
    (``business_id`` and ``data``), sent as ``sender``."""

    # JSON Schema keywords for a rule over the fields together (``_validate_message``'s), which the
    # OpenAPI document adds: something besides the sender, business_id and data together, never
    # with text. (Not a oneOf: client generators then make no type of the body.)
    json_schema_extra: ClassVar[dict[str, object]] = {
        "minProperties": 2,
        "dependentRequired": {"business_id": ["data"], "data": ["business_id"]},
        "not": {"required": ["text", "business_id"]},
    }

    sender: Account
    text: Annotated[str, Meta(min_length=1, max_length=MESSAGE_MAX)] | UnsetType = UNSET
    business_id: Annotated[str, Meta(min_length=1, max_length=BUSINESS_ID_MAX)] | UnsetType = UNSET
    data: Annotated[str, Meta(max_length=MESSAGE_MAX)] | UnsetType = UNSET


class _TextRequest(Struct, kw_only=True, rename=tencent(sender="Sender_Account", text="TextContent")):
    room_id: str
    sender: str
    text: str


class _CustomRequest(Struct, kw_only=True, rename=tencent(sender="Sender_Account")):
    room_id: str
    sender: str
    business_id: str
    data: str


def _validate_message(args: Args) -> None:
    _room(args)
    m: Message = args.body
    validation.account(m.sender, field="sender")
    custom = m.business_id is not UNSET or m.data is not UNSET
    if (m.text is UNSET) == (not custom) or (custom and (m.business_id is UNSET or m.data is UNSET)):
        raise errors.InvalidRequest("give either text, or business_id and data")
    if m.text is not UNSET:
        validation.bounded("text", m.text, MESSAGE_MAX, minimum=1)
    else:
        assert m.business_id is not UNSET and m.data is not UNSET  # noqa: PT018 - (narrowed above)
        validation.bounded("business_id", m.business_id, BUSINESS_ID_MAX, minimum=1)
        validation.bounded("data", m.data, MESSAGE_MAX)


# ---------------------------------------------------------------------- seats and robots


class Seat(Struct, kw_only=True):
    index: int
    account: str | UnsetType = UNSET
    is_taken_disabled: bool = False
    is_video_disabled: bool = False
    is_audio_disabled: bool = False


class Seats(Struct, kw_only=True):
    seats: list[Seat]


class _WireSeat(Struct, kw_only=True, rename=tencent(account="Member_Account")):
    index: int
    account: str | int | UnsetType = UNSET
    is_taken_disabled: bool = False
    is_video_disabled: bool = False
    is_audio_disabled: bool = False


class _SeatsBody(Struct, kw_only=True, rename=tencent(seats="SeatList")):
    seats: list[_WireSeat] = []


class _SeatsReply(Envelope, kw_only=True):
    Response: _SeatsBody | None = None


def _seats(args: Args, reply: _SeatsReply) -> Struct:
    b = reply.Response or _SeatsBody()
    return Seats(seats=[Seat(**{**asdict(s), "account": account_text(s.account)}) for s in b.seats])


class SeatLock(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``PATCH /rooms/{room_id}/seats``: lock a seat (whoever is on it leaves it)."""

    index: _Index
    forbid_taken: bool | UnsetType = UNSET
    forbid_video: bool | UnsetType = UNSET
    forbid_audio: bool | UnsetType = UNSET


class _LockRequest(Struct, kw_only=True, omit_defaults=True, rename=tencent()):
    room_id: str
    index: int
    forbid_taken: bool | UnsetType = UNSET
    forbid_video: bool | UnsetType = UNSET
    forbid_audio: bool | UnsetType = UNSET


class SeatTake(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/seats/members``: put a member on a seat."""

    account: Account
    index: _Index


class SeatMove(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/seats/moves``: move a member to a seat; ``if_taken`` says
    what happens when someone is on it: cancel the move, force (that member leaves), or swap."""

    account: Account
    index: _Index
    if_taken: Literal["cancel", "force", "swap"] = "cancel"


class _MoveRequest(Struct, kw_only=True, rename=tencent(index="SeatIndex", account="Member_Account")):
    room_id: str
    index: int
    account: str
    policy: int  # 0 cancel, 1 force, 2 swap


_POLICIES = {"cancel": 0, "force": 1, "swap": 2}


def _move(args: Args) -> Struct:
    move: SeatMove = args.body
    return _MoveRequest(room_id=args.room_id, index=move.index, account=move.account, policy=_POLICIES[move.if_taken])


class _MemberOnSeat(Struct, kw_only=True, rename=tencent(account="Member_Account")):
    room_id: str
    account: str
    index: int


class _KickRequest(Struct, kw_only=True, rename=tencent(account="Member_Account")):
    room_id: str
    account: str
    data: str


def _validate_take(args: Args) -> None:
    _room(args)
    validation.account(args.body.account, field="account")


def _validate_kick(args: Args) -> None:
    _query_accounts(most=1)(args)
    validation.bounded("data", args.one("data"), KICK_DATA_MAX)


class Robots(Struct, kw_only=True):
    robots: list[str]


class _RobotsBody(Struct, kw_only=True, rename=tencent(robots="RobotList_Account")):
    robots: list[str | int] = []


class _RobotsReply(Envelope, kw_only=True):
    Response: _RobotsBody | None = None


class _RobotsRequest(Struct, kw_only=True, rename=tencent(accounts="RobotList_Account")):
    room_id: str
    accounts: list[str]


# ---------------------------------------------------------------------- the catalogue

_ROOM = "/rooms/{room_id}"


def _owner(args: Args, admin: str) -> str:
    """The owner a create asked for (by default the tenant's admin account)."""
    owner = getattr(args.body, "owner_account", UNSET)
    return admin if owner is UNSET else str(owner)


def _seated(body: SeatTake, seats: Seats) -> bool:
    """Whether the member is on the seat a take asked for."""
    return any(s.index == body.index and s.account == body.account for s in seats.seats)


_ACCOUNT_LIMITS = Meta(min_length=1, max_length=ACCOUNT_MAX, pattern=NO_CONTROL)  # (the models' Account)


def _accounts_query(most: int = ACCOUNTS_MAX) -> Query:
    return Query(
        "account",
        f"an account (UserID); repeat it for several (at most {most}; one of 1-{ACCOUNT_MAX} UTF-8 bytes each)",
        repeated=True,
        fills="accounts",
        required=True,
        limits=_ACCOUNT_LIMITS,
        count=Meta(min_length=1, max_length=most),
    )


def _cursor(description: str) -> Query:
    return Query("cursor", f"{description}; at most {CURSOR_MAX} UTF-8 bytes", limits=Meta(max_length=CURSOR_MAX))


def _key_query(*, required: bool) -> Query:
    return Query(
        "key",
        f"a metadata key (1-{METADATA_KEY_MAX} UTF-8 bytes); repeat it for several (at most {METADATA_KEYS_MAX})",
        repeated=True,
        required=required,
        limits=Meta(min_length=1, max_length=METADATA_KEY_MAX),
        count=Meta(min_length=1 if required else None, max_length=METADATA_KEYS_MAX),
    )


_EXISTS = dict.fromkeys((100003, 100010, 100011), errors.RoomExists)
_BATCH = Split("accounts", ACCOUNTS_PER_CALL)

CATALOGUE: tuple[Operation, ...] = (
    Operation(
        id="getRoom",
        method="GET",
        path=_ROOM,
        scope="read",
        summary="Get a room (get_room_info), through the shared short-TTL cache",
        api="get_room_info",
        query=(Query("cache-control", "'no-cache' reads through to Tencent and refreshes the cache", header=True),),
        reply=Room,
        wire=RoomInfoReply,
        respond=_room_reply,
        cache="room",
    ),
    Operation(
        id="updateRoom",
        method="PATCH",
        path=_ROOM,
        scope="write",
        summary="Update a room (update_room_info); the cached copy is invalidated before the 204",
        api="update_room_info",
        body=RoomPatch,
        build=lambda args: update_to_wire(args.room_id, args.body),  # (RoomInfo nested)
        cache="invalidate",
        validate=_validate_patch,
    ),
    Operation(
        id="getRoomMetadata",
        method="GET",
        path=_ROOM + "/metadata",
        scope="read",
        summary="Get room metadata (get_room_metadata): the given keys, or all without 'key'",
        api="get_room_metadata",
        query=(_key_query(required=False),),
        send=_KeysRequest,
        reply=Metadata,
        wire=MetadataReply,
        respond=_metadata,  # (Tencent's list of pairs, our object)
        validate=_keys(required=False),
    ),
    Operation(
        id="setRoomMetadata",
        method="PATCH",
        path=_ROOM + "/metadata",
        scope="write",
        summary="Upsert room metadata keys (set_room_metadata)",
        api="set_room_metadata",
        body=MetadataPatch,
        build=_set_metadata,  # (our object, Tencent's list of pairs)
        validate=_validate_metadata,
    ),
    Operation(
        id="deleteRoomMetadata",
        method="DELETE",
        path=_ROOM + "/metadata",
        scope="write",
        summary="Delete room metadata keys (del_room_metadata); at least one 'key'",
        api="del_room_metadata",
        query=(_key_query(required=True),),
        send=_KeysRequest,
        applied_if_retried=frozenset({100503}),
        validate=_keys(required=True),
    ),
    Operation(
        id="createRoom",
        method="POST",
        path="/rooms",
        scope="write",
        summary="Create a room (create_room); a retry that finds its own room answers 201",
        api="create_room",
        body=CreateRoom,
        build=lambda args: _CreateRequest(RoomInfo=_WireRoomInfo(room_type="Live", **asdict(args.body))),  # (nested)
        reply=Created,
        respond=lambda args, _: Created(room_id=args.room_id),
        status=201,
        cache="invalidate",
        applied_if_retried=frozenset({100010}),
        confirm=Confirm(
            "getRoom", lambda args, room, admin: room.owner_account == _owner(args, admin), frozenset({100003})
        ),
        errors=_EXISTS,
        validate=_validate_create,
    ),
    Operation(
        id="destroyRoom",
        method="DELETE",
        path=_ROOM,
        scope="write",
        summary="Destroy a room (destroy_room); the cached room is invalidated first on every replica",
        api="destroy_room",
        cache="invalidate",
        applied_if_retried=frozenset({100004}),
    ),
    Operation(
        id="listRooms",
        method="GET",
        path="/rooms",
        scope="read",
        summary="List public rooms by view count (get_room_list, 10/s), through a short shared cache",
        api="get_room_list",
        query=(
            Query(
                "limit",
                f"rooms per page, 1-{ROOMS_PER_PAGE} (default {ROOMS_PER_PAGE})",
                kind="integer",
                default=str(ROOMS_PER_PAGE),
                limits=Meta(ge=1, le=ROOMS_PER_PAGE),
            ),
            _cursor("the previous page's next_cursor (absent: the first page)"),
        ),
        send=_RoomListRequest,
        reply=RoomList,
        wire=_RoomListReply,
        respond=_room_list,  # (numeric ids and owners as strings, the last page's "" as null)
        qps=10,
        cache="read",
        validate=_validate_list,
    ),
    Operation(
        id="getRoomStats",
        method="GET",
        path=_ROOM + "/stats",
        scope="read",
        summary="Room totals (get_room_stats, 100/s)",
        api="get_room_stats",
        reply=RoomStats,
        wire=tencent_reply(RoomStats),
        qps=100,
    ),
    Operation(
        id="getGiftCount",
        method="GET",
        path=_ROOM + "/gifts",
        scope="read",
        summary="A member's gift totals in the room (get_gift_count)",
        api="get_gift_count",
        query=(
            Query(
                "account",
                f"the member (Tencent's From_Account), 1-{ACCOUNT_MAX} UTF-8 bytes",
                required=True,
                limits=_ACCOUNT_LIMITS,
            ),
        ),
        send=_GiftCountRequest,
        reply=GiftCount,
        wire=tencent_reply(GiftCount),
        validate=_validate_gift_count,
    ),
    Operation(
        id="listMembers",
        method="GET",
        path=_ROOM + "/members",
        scope="read",
        summary="Online members (get_member_list; Tencent refreshes it about every 40 s, at most 1000)",
        api="get_member_list",
        query=(_cursor("the previous page's next_cursor"),),
        send=_MembersRequest,
        reply=Members,
        wire=_MembersReply,
        respond=_members,  # (member objects as account strings, the last page's "" as null)
        validate=_validate_members,
    ),
    Operation(
        id="listAdmins",
        method="GET",
        path=_ROOM + "/admins",
        scope="read",
        summary="Room admins (get_admin_list)",
        api="get_admin_list",
        reply=Admins,
        wire=_AdminsReply,
        respond=lambda args, r: Admins(admins=_texts((r.Response or _AdminsBody()).admins)),
    ),
    Operation(
        id="addAdmins",
        method="POST",
        path=_ROOM + "/admins",
        scope="write",
        summary=f"Make members admins (modify_admin add); a room has at most {ADMINS_MAX}",
        api="modify_admin",
        body=AdminAccounts,
        send=_ModifyAdmin,
        fixed={"op_type": "add"},
        errors={100020: errors.AdminLimitExceeded},
        validate=_body_accounts(ADMINS_MAX),
    ),
    Operation(
        id="removeAdmins",
        method="DELETE",
        path=_ROOM + "/admins",
        scope="write",
        summary="Remove admins (modify_admin delete)",
        api="modify_admin",
        query=(_accounts_query(ADMINS_MAX),),
        send=_ModifyAdmin,
        fixed={"op_type": "delete"},
        validate=_query_accounts(ADMINS_MAX),
    ),
    Operation(
        id="listBans",
        method="GET",
        path=_ROOM + "/bans",
        scope="read",
        summary="Banned members (get_banned_member_list), a page at a time",
        api="get_banned_member_list",
        query=(
            Query(
                "offset",
                "0 first, then the previous page's next_offset",
                kind="integer",
                default="0",
                limits=Meta(ge=0, le=2**31 - 1),
            ),
            Query(
                "limit",
                f"1-{BANS_PER_PAGE} (default {BANS_PER_PAGE})",
                kind="integer",
                default=str(BANS_PER_PAGE),
                limits=Meta(ge=1, le=BANS_PER_PAGE),
            ),
        ),
        send=_BansRequest,
        reply=Bans,
        wire=_BansReply,
        respond=_bans,  # (numeric accounts as strings, the last page's 0 as null)
        validate=_validate_bans,
    ),
    Operation(
        id="banMembers",
        method="POST",
        path=_ROOM + "/bans",
        scope="write",
        summary=f"Ban members (ban_member): removed and kept out; {ACCOUNTS_PER_CALL} accounts per Tencent call",
        api="ban_member",
        body=Ban,
        send=_BanRequest,
        split=_BATCH,
        validate=_validate_ban,
    ),
    Operation(
        id="unbanMembers",
        method="DELETE",
        path=_ROOM + "/bans",
        scope="write",
        summary="Lift bans (unban_member)",
        api="unban_member",
        query=(_accounts_query(),),
        send=_UnbanRequest,
        split=_BATCH,
        validate=_query_accounts(),
    ),
    Operation(
        id="listMutes",
        method="GET",
        path=_ROOM + "/mutes",
        scope="read",
        summary="Muted members (get_muted_member_list)",
        api="get_muted_member_list",
        reply=Mutes,
        wire=_MutesReply,
        respond=_mutes,  # (numeric accounts as strings)
    ),
    Operation(
        id="muteMembers",
        method="POST",
        path=_ROOM + "/mutes",
        scope="write",
        summary="Mute members for a while (mute_member)",
        api="mute_member",
        body=Mute,
        send=_MuteRequest,
        split=_BATCH,
        validate=_body_accounts(ACCOUNTS_MAX),
    ),
    Operation(
        id="unmuteMembers",
        method="DELETE",
        path=_ROOM + "/mutes",
        scope="write",
        summary="Unmute members (mute_member with MuteTime 0)",
        api="mute_member",
        query=(_accounts_query(),),
        send=_MuteRequest,
        fixed={"duration": 0},
        split=_BATCH,
        validate=_query_accounts(),
    ),
    Operation(
        id="sendMessage",
        method="POST",
        path=_ROOM + "/messages",
        scope="write",
        summary="Send a text (send_text_msg) or custom (send_custom_msg) message as a member",
        api="send_text_msg",
        body=Message,
        send=_TextRequest,
        variant=Variant("business_id", "send_custom_msg", _CustomRequest),
        repeatable=False,  # every viewer sees a message sent twice
        validate=_validate_message,
    ),
    Operation(
        id="listSeats",
        method="GET",
        path=_ROOM + "/seats",
        scope="read",
        summary="Seats and who is on them (room_engine_http_mic/get_seat_list)",
        api="get_seat_list",
        service="room_engine_http_mic",
        reply=Seats,
        wire=_SeatsReply,
        respond=_seats,  # (numeric accounts as strings)
    ),
    Operation(
        id="lockSeat",
        method="PATCH",
        path=_ROOM + "/seats",
        scope="write",
        summary="Lock a seat (room_engine_http_mic/lock_seat); whoever is on it leaves it",
        api="lock_seat",
        service="room_engine_http_mic",
        body=SeatLock,
        send=_LockRequest,
    ),
    Operation(
        id="takeSeat",
        method="POST",
        path=_ROOM + "/seats/members",
        scope="write",
        summary="Put a member on a seat (room_engine_http_mic/pick_user_on_seat)",
        api="pick_user_on_seat",
        service="room_engine_http_mic",
        body=SeatTake,
        send=_MemberOnSeat,
        confirm=Confirm("listSeats", lambda args, seats, _: _seated(args.body, seats)),  # (a seat taken: by us?)
        validate=_validate_take,
    ),
    Operation(
        id="leaveSeat",
        method="DELETE",
        path=_ROOM + "/seats/members",
        scope="write",
        summary="Take a member off their seat (room_engine_http_mic/kick_user_off_seat)",
        api="kick_user_off_seat",
        service="room_engine_http_mic",
        query=(
            Query(
                "account",
                f"the member to take off their seat, 1-{ACCOUNT_MAX} UTF-8 bytes",
                required=True,
                limits=_ACCOUNT_LIMITS,
            ),
            Query(
                "data",
                f"sent to the room in the notification (optional), at most {KICK_DATA_MAX} UTF-8 bytes",
                limits=Meta(max_length=KICK_DATA_MAX),
            ),
        ),
        send=_KickRequest,
        validate=_validate_kick,
    ),
    Operation(
        id="moveSeat",
        method="POST",
        path=_ROOM + "/seats/moves",
        scope="write",
        summary="Move a member to a seat (room_engine_http_mic/move_user_to_seat)",
        api="move_user_to_seat",
        service="room_engine_http_mic",
        body=SeatMove,
        build=_move,  # (if_taken's names, Tencent's Policy numbers)
        # Between two attempts others may move: a second force or swap acts on whoever holds the
        # seat then, and Tencent does not say that moving a member to their own seat is a no-op.
        repeatable=False,
        validate=_validate_take,
    ),
    Operation(
        id="listRobots",
        method="GET",
        path=_ROOM + "/robots",
        scope="read",
        summary="The room's robots (get_robot, 100/s)",
        api="get_robot",
        reply=Robots,
        wire=_RobotsReply,
        respond=lambda args, r: Robots(robots=_texts((r.Response or _RobotsBody()).robots)),
        qps=100,
    ),
    Operation(
        id="addRobots",
        method="POST",
        path=_ROOM + "/robots",
        scope="write",
        summary=f"Add robots (add_robot, 100/s; at most {ROBOTS_MAX} a room, imported accounts)",
        api="add_robot",
        body=RobotAccounts,
        send=_RobotsRequest,
        qps=100,
        validate=_body_accounts(ROBOTS_MAX),
    ),
    Operation(
        id="removeRobots",
        method="DELETE",
        path=_ROOM + "/robots",
        scope="write",
        summary="Remove robots (del_robot, 100/s)",
        api="del_robot",
        query=(_accounts_query(ROBOTS_MAX),),
        send=_RobotsRequest,
        qps=100,
        validate=_query_accounts(ROBOTS_MAX),
    ),
)

BY_ID = {op.id: op for op in CATALOGUE}

# The commands the gateway calls outside the catalogue: the tenant's callback settings
# (RoomService.get_callback and register_callback, live_config, 200/s each; reference §8.2).
CALLBACK_COMMANDS = ("get_callback", "set_callback", "update_callback", "set_callback_token")

# Every command the gateway calls, with Tencent's documented limit per second: the budget gauge's
# rows, and the names a tenant's ``api_qps`` may use.
DOCUMENTED: dict[str, int] = dict(
    sorted({**{api: op.qps for op in CATALOGUE for api in op.apis}, **dict.fromkeys(CALLBACK_COMMANDS, 200)}.items())
)
