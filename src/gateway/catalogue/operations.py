"""The catalogue's entries (SPEC §8), each with its Structs: ours in snake_case, Tencent's in its
own names (``reference/tencent-live-engine.md`` §3 and §9 give the fields and limits).

Limits the reference does not give are marked "assumed" in the entry: the gateway then keeps
Tencent's nearest documented limit (20 accounts per call, as ban_member takes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from gateway import errors, validation
from gateway.catalogue import Args, Operation, Query, chunks
from gateway.models import (
    Envelope,
    KeysRequest,
    Metadata,
    MetadataItem,
    MetadataPatch,
    MetadataReply,
    Room,
    RoomIdRequest,
    RoomInfoReply,
    RoomPatch,
    SetMetadataRequest,
    TakeSeatMode,
    account_text,
    room_from_wire,
    update_to_wire,
)

ACCOUNTS_PER_CALL = 20  # ban_member's documented batch; assumed for unban and mute
ADMINS_MAX = 5
ROBOTS_MAX = 3
_Seconds = Annotated[int, Meta(ge=1, le=10 * 365 * 86400)]

# ---------------------------------------------------------------------- shared shapes


class Accounts(Struct, kw_only=True, forbid_unknown_fields=True):
    """A body naming accounts (UserIDs)."""

    accounts: list[str]


def _room(args: Args) -> None:
    validation.room_id(args.room_id)


def _query_accounts(args: Args) -> list[str]:
    return validation.accounts(args.query.get("account", []), field="account")


def _validate_query_accounts(args: Args) -> None:
    _room(args)
    _query_accounts(args)


def _validate_members(args: Args) -> None:
    _room(args)
    validation.bounded("cursor", args.one("cursor"), 256)


def _done(args: Args, replies: list[Any]) -> None:
    return None


def _bare(args: Args) -> list[Struct]:
    return [RoomIdRequest(RoomId=args.room_id)]


# ---------------------------------------------------------------------- the room and its metadata


def _room_reply(args: Args, replies: list[Any]) -> Struct:
    reply: RoomInfoReply = replies[0]
    if reply.Response is None:
        raise errors.UpstreamUnavailable("Tencent get_room_info: reply without RoomInfo")
    return room_from_wire(reply.Response.RoomInfo)


def _validate_patch(args: Args) -> None:
    _room(args)
    validation.room_patch(args.body)


def _keys(args: Args, *, required: bool) -> list[str]:
    return validation.metadata_keys(args.query.get("key", []), required=required)


def _validate_keys(args: Args) -> None:
    _room(args)
    _keys(args, required=False)


def _validate_deleted_keys(args: Args) -> None:
    _room(args)
    _keys(args, required=True)


def _validate_metadata(args: Args) -> None:
    _room(args)
    validation.metadata_patch(args.body)


def _metadata(args: Args, replies: list[Any]) -> Struct:
    reply: MetadataReply = replies[0]
    items = reply.Response.Metadata if reply.Response is not None else []
    return Metadata(metadata={item.Key: item.Value for item in items})


def _set_metadata(args: Args) -> list[Struct]:
    items = [MetadataItem(Key=k, Value=v) for k, v in args.body.metadata.items()]
    return [SetMetadataRequest(RoomId=args.room_id, Metadata=items)]


# ---------------------------------------------------------------------- create, destroy, list, stats


class CreateRoom(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms``: the room id and any of create_room's room fields."""

    room_id: str
    room_name: str | UnsetType = UNSET
    owner_account: str | UnsetType = UNSET
    cover_url: str | UnsetType = UNSET
    category: list[Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)]] | UnsetType = UNSET
    is_message_disabled: bool | UnsetType = UNSET
    is_public_visible: bool | UnsetType = UNSET
    is_seat_enabled: bool | UnsetType = UNSET
    take_seat_mode: TakeSeatMode | UnsetType = UNSET
    max_seat_count: Annotated[int, Meta(ge=1, le=1000)] | UnsetType = UNSET
    max_member_count: Annotated[int, Meta(ge=0, le=2**31 - 1)] | UnsetType = UNSET
    activity_status: Annotated[int, Meta(ge=-(2**31), le=2**32 - 1)] | UnsetType = UNSET
    seat_template: str | UnsetType = UNSET
    keep_owner_on_seat: bool | UnsetType = UNSET


class Created(Struct, kw_only=True):
    room_id: str


class _WireRoomInfo(Struct, kw_only=True, omit_defaults=True):
    RoomId: str
    RoomType: str  # always "Live"
    RoomName: str | UnsetType = UNSET
    Owner_Account: str | UnsetType = UNSET
    CoverURL: str | UnsetType = UNSET
    Category: list[int] | UnsetType = UNSET
    IsMessageDisabled: bool | UnsetType = UNSET
    IsPublicVisible: bool | UnsetType = UNSET
    IsSeatEnabled: bool | UnsetType = UNSET
    TakeSeatMode: str | UnsetType = UNSET
    MaxSeatCount: int | UnsetType = UNSET
    MaxMemberCount: int | UnsetType = UNSET
    ActivityStatus: int | UnsetType = UNSET
    SeatTemplate: str | UnsetType = UNSET
    KeepOwnerOnSeat: bool | UnsetType = UNSET


class _CreateRequest(Struct, kw_only=True):
    RoomInfo: _WireRoomInfo


def _validate_create(args: Args) -> None:
    body: CreateRoom = args.body
    args.room_id = validation.room_id(body.room_id)
    validation.room_fields(room_name=body.room_name, cover_url=body.cover_url, category=body.category)
    if body.owner_account is not UNSET:
        validation.account(body.owner_account, field="owner_account")
    if body.seat_template is not UNSET:
        validation.bounded("seat_template", body.seat_template, 64, minimum=1)


def _create(args: Args) -> list[Struct]:
    b: CreateRoom = args.body
    info = _WireRoomInfo(
        RoomId=b.room_id,
        RoomType="Live",
        RoomName=b.room_name,
        Owner_Account=b.owner_account,
        CoverURL=b.cover_url,
        Category=b.category,
        IsMessageDisabled=b.is_message_disabled,
        IsPublicVisible=b.is_public_visible,
        IsSeatEnabled=b.is_seat_enabled,
        TakeSeatMode=b.take_seat_mode,
        MaxSeatCount=b.max_seat_count,
        MaxMemberCount=b.max_member_count,
        ActivityStatus=b.activity_status,
        SeatTemplate=b.seat_template,
        KeepOwnerOnSeat=b.keep_owner_on_seat,
    )
    return [_CreateRequest(RoomInfo=info)]


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


class _WireSummary(Struct, kw_only=True):
    RoomId: str | int
    RoomName: str | UnsetType = UNSET
    Owner_Account: str | int | UnsetType = UNSET
    CoverURL: str | UnsetType = UNSET
    Category: list[int] | UnsetType = UNSET
    CreateTime: int | UnsetType = UNSET
    ActivityStatus: int | UnsetType = UNSET
    ViewCount: int | UnsetType = UNSET


class _RoomListBody(Struct, kw_only=True):
    Next: str = ""
    RoomList: list[_WireSummary] = []


class _RoomListReply(Envelope, kw_only=True):
    Response: _RoomListBody | None = None


class _RoomListRequest(Struct, kw_only=True):
    Next: str
    Count: int


def _validate_list(args: Args) -> None:
    validation.integer(args.one("limit", "20"), field="limit", low=1, high=20)
    validation.bounded("cursor", args.one("cursor"), 256)


def _list(args: Args) -> list[Struct]:
    return [_RoomListRequest(Next=args.one("cursor"), Count=int(args.one("limit", "20")))]


def _room_list(args: Args, replies: list[Any]) -> Struct:
    body = replies[0].Response or _RoomListBody()
    rooms = [
        RoomSummary(
            room_id=str(r.RoomId),
            room_name=r.RoomName,
            owner_account=account_text(r.Owner_Account),
            cover_url=r.CoverURL,
            category=r.Category,
            create_time=r.CreateTime,
            activity_status=r.ActivityStatus,
            view_count=r.ViewCount,
        )
        for r in body.RoomList
    ]
    return RoomList(rooms=rooms, next_cursor=body.Next or None)


class RoomStats(Struct, kw_only=True):
    total_viewers: int = 0
    total_gifts_sent: int = 0
    total_gift_coins: int = 0
    total_unique_gift_senders: int = 0
    total_likes_received: int = 0
    total_msg_count: int = 0


class _StatsBody(Struct, kw_only=True):
    TotalViewers: int = 0
    TotalGiftsSent: int = 0
    TotalGiftCoins: int = 0
    TotalUniqueGiftSenders: int = 0
    TotalLikesReceived: int = 0
    TotalMsgCount: int = 0


class _StatsReply(Envelope, kw_only=True):
    Response: _StatsBody | None = None


def _stats(args: Args, replies: list[Any]) -> Struct:
    s = replies[0].Response or _StatsBody()
    return RoomStats(
        total_viewers=s.TotalViewers,
        total_gifts_sent=s.TotalGiftsSent,
        total_gift_coins=s.TotalGiftCoins,
        total_unique_gift_senders=s.TotalUniqueGiftSenders,
        total_likes_received=s.TotalLikesReceived,
        total_msg_count=s.TotalMsgCount,
    )


# ---------------------------------------------------------------------- members and admins


class Members(Struct, kw_only=True):
    members: list[str]
    member_count: int
    next_cursor: str | None


class _Member(Struct):
    Member_Account: str | int = ""


class _MembersBody(Struct, kw_only=True):
    Next: str = ""
    MemberCount: int = 0
    MemberList: list[_Member] = []


class _MembersReply(Envelope, kw_only=True):
    Response: _MembersBody | None = None


class _MembersRequest(Struct, kw_only=True):
    RoomId: str
    Next: str


def _members(args: Args, replies: list[Any]) -> Struct:
    b = replies[0].Response or _MembersBody()
    names = [str(m.Member_Account) for m in b.MemberList]
    return Members(members=names, member_count=b.MemberCount, next_cursor=b.Next or None)


class Admins(Struct, kw_only=True):
    admins: list[str]


class _AdminsBody(Struct, kw_only=True):
    Admin_Account: list[str | int] = []


class _AdminsReply(Envelope, kw_only=True):
    Response: _AdminsBody | None = None


class _ModifyAdmin(Struct, kw_only=True):
    RoomId: str
    Admin_Account: list[str]
    OpType: str


def _validate_add_admins(args: Args) -> None:
    _room(args)
    validation.accounts(args.body.accounts, field="accounts", most=ADMINS_MAX)


def _validate_remove_admins(args: Args) -> None:
    _room(args)
    validation.accounts(args.query.get("account", []), field="account", most=ADMINS_MAX)


# ---------------------------------------------------------------------- bans and mutes


class Ban(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms/{room_id}/bans``: who, for how many seconds, and why."""

    accounts: list[str]
    duration: _Seconds
    reason: str | UnsetType = UNSET


class BannedMember(Struct, kw_only=True):
    account: str
    banned_until: int


class Bans(Struct, kw_only=True):
    bans: list[BannedMember]
    next_offset: int | None


class _Banned(Struct, kw_only=True):
    Member_Account: str | int = ""
    BannedUntil: int = 0


class _BansBody(Struct, kw_only=True):
    BannedAccountList: list[_Banned] = []
    NextOffset: int = 0


class _BansReply(Envelope, kw_only=True):
    Response: _BansBody | None = None


class _BansRequest(Struct, kw_only=True):
    RoomId: str
    Offset: int
    Limit: int


class _BanRequest(Struct, kw_only=True, omit_defaults=True):
    RoomId: str
    MemberList_Account: list[str]
    Duration: int
    Reason: str | UnsetType = UNSET


class _UnbanRequest(Struct, kw_only=True):
    RoomId: str
    MemberList_Account: list[str]


def _validate_bans(args: Args) -> None:
    _room(args)
    validation.integer(args.one("offset", "0"), field="offset", low=0, high=2**31 - 1)
    validation.integer(args.one("limit", "100"), field="limit", low=1, high=100)


def _validate_ban(args: Args) -> None:
    _room(args)
    body: Ban = args.body
    validation.accounts(body.accounts, field="accounts", most=1000)
    if body.reason is not UNSET:
        validation.bounded("reason", body.reason, 256)


def _bans(args: Args, replies: list[Any]) -> Struct:
    b = replies[0].Response or _BansBody()
    found = [BannedMember(account=str(x.Member_Account), banned_until=x.BannedUntil) for x in b.BannedAccountList]
    return Bans(bans=found, next_offset=b.NextOffset or None)


class Mute(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/mutes``: who, and for how many seconds."""

    accounts: list[str]
    duration: _Seconds


class MutedMember(Struct, kw_only=True):
    account: str
    muted_until: int


class Mutes(Struct, kw_only=True):
    mutes: list[MutedMember]


class _Muted(Struct, kw_only=True):
    Member_Account: str | int = ""
    MutedUntil: int = 0


class _MutesBody(Struct, kw_only=True):
    MutedAccountList: list[_Muted] = []


class _MutesReply(Envelope, kw_only=True):
    Response: _MutesBody | None = None


class _MuteRequest(Struct, kw_only=True):
    RoomId: str
    MemberList_Account: list[str]
    MuteTime: int


def _validate_mute(args: Args) -> None:
    _room(args)
    validation.accounts(args.body.accounts, field="accounts", most=1000)


def _mutes(args: Args, replies: list[Any]) -> Struct:
    b = replies[0].Response or _MutesBody()
    found = [MutedMember(account=str(x.Member_Account), muted_until=x.MutedUntil) for x in b.MutedAccountList]
    return Mutes(mutes=found)


# ---------------------------------------------------------------------- messages


class Message(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /rooms/{room_id}/messages``: a text message (``text``) or a custom one
    (``business_id`` and ``data``), sent as ``sender``."""

    sender: str
    text: str | UnsetType = UNSET
    business_id: str | UnsetType = UNSET
    data: str | UnsetType = UNSET


class _TextRequest(Struct, kw_only=True):
    RoomId: str
    Sender_Account: str
    TextContent: str


class _CustomRequest(Struct, kw_only=True):
    RoomId: str
    Sender_Account: str
    BusinessId: str
    Data: str


MESSAGE_MAX = 12 * 1024  # IM's limit for one message body, bytes (assumed: the Live pages give none)


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
        validation.bounded("business_id", m.business_id, 128, minimum=1)
        validation.bounded("data", m.data, MESSAGE_MAX)


def _message(args: Args) -> list[Struct]:
    m: Message = args.body
    if m.text is not UNSET:
        return [_TextRequest(RoomId=args.room_id, Sender_Account=m.sender, TextContent=m.text)]
    assert m.business_id is not UNSET and m.data is not UNSET  # noqa: PT018
    return [_CustomRequest(RoomId=args.room_id, Sender_Account=m.sender, BusinessId=m.business_id, Data=m.data)]


def _message_api(args: Args) -> str:
    return "send_text_msg" if args.body.text is not UNSET else "send_custom_msg"


# ---------------------------------------------------------------------- seats and robots


class Seat(Struct, kw_only=True):
    index: int
    account: str | UnsetType = UNSET
    is_taken_disabled: bool = False
    is_video_disabled: bool = False
    is_audio_disabled: bool = False


class Seats(Struct, kw_only=True):
    seats: list[Seat]


class _WireSeat(Struct, kw_only=True):
    Index: int
    Member_Account: str | int | UnsetType = UNSET
    IsTakenDisabled: bool = False
    IsVideoDisabled: bool = False
    IsAudioDisabled: bool = False


class _SeatsBody(Struct, kw_only=True):
    SeatList: list[_WireSeat] = []


class _SeatsReply(Envelope, kw_only=True):
    Response: _SeatsBody | None = None


def _seats(args: Args, replies: list[Any]) -> Struct:
    b = replies[0].Response or _SeatsBody()
    return Seats(
        seats=[
            Seat(
                index=s.Index,
                account=account_text(s.Member_Account),
                is_taken_disabled=s.IsTakenDisabled,
                is_video_disabled=s.IsVideoDisabled,
                is_audio_disabled=s.IsAudioDisabled,
            )
            for s in b.SeatList
        ]
    )


class SeatLock(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``PATCH /rooms/{room_id}/seats``: lock a seat (whoever is on it leaves it)."""

    index: Annotated[int, Meta(ge=0, le=1000)]
    forbid_taken: bool | UnsetType = UNSET
    forbid_video: bool | UnsetType = UNSET
    forbid_audio: bool | UnsetType = UNSET


class _LockRequest(Struct, kw_only=True, omit_defaults=True):
    RoomId: str
    Index: int
    ForbidTaken: bool | UnsetType = UNSET
    ForbidVideo: bool | UnsetType = UNSET
    ForbidAudio: bool | UnsetType = UNSET


class SeatTake(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/seats/members``: put a member on a seat."""

    account: str
    index: Annotated[int, Meta(ge=0, le=1000)]


class SeatMove(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /rooms/{room_id}/seats/moves``: move a member to a seat; ``if_taken`` says
    what happens when someone is on it: cancel the move, force (that member leaves), or swap."""

    account: str
    index: Annotated[int, Meta(ge=0, le=1000)]
    if_taken: Literal["cancel", "force", "swap"] = "cancel"


class _MoveRequest(Struct, kw_only=True):
    RoomId: str
    SeatIndex: int
    Member_Account: str
    Policy: int  # 0 cancel, 1 force, 2 swap


_POLICIES = {"cancel": 0, "force": 1, "swap": 2}


class _PickRequest(Struct, kw_only=True):
    RoomId: str
    Member_Account: str
    Index: int


class _KickRequest(Struct, kw_only=True):
    RoomId: str
    Member_Account: str
    Data: str


def _validate_take(args: Args) -> None:
    _room(args)
    validation.account(args.body.account, field="account")


def _validate_kick(args: Args) -> None:
    _room(args)
    validation.accounts(args.query.get("account", []), field="account", most=1)
    validation.bounded("data", args.one("data"), 1024)


def _validate_add_robots(args: Args) -> None:
    _room(args)
    validation.accounts(args.body.accounts, field="accounts", most=ROBOTS_MAX)


def _validate_remove_robots(args: Args) -> None:
    _room(args)
    validation.accounts(args.query.get("account", []), field="account", most=ROBOTS_MAX)


class Robots(Struct, kw_only=True):
    robots: list[str]


class _RobotsBody(Struct, kw_only=True):
    RobotList_Account: list[str | int] = []


class _RobotsReply(Envelope, kw_only=True):
    Response: _RobotsBody | None = None


class _RobotsRequest(Struct, kw_only=True):
    RoomId: str
    RobotList_Account: list[str]


# ---------------------------------------------------------------------- the catalogue

_ROOM = "/rooms/{room_id}"
_ACCOUNT = Query("account", "an account (UserID); repeat it for several", repeated=True)
_EXISTS = dict.fromkeys((100003, 100010, 100011), errors.RoomExists)

_KEY = Query("key", "a metadata key; repeat it for several", repeated=True)

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
        cache="room",
        validate=_room,
        request=_bare,
        respond=_room_reply,
    ),
    Operation(
        id="updateRoom",
        method="PATCH",
        path=_ROOM,
        scope="write",
        summary="Update a room (update_room_info); the cached copy is invalidated before the 204",
        api="update_room_info",
        body=RoomPatch,
        status=204,
        cache="invalidate",
        validate=_validate_patch,
        request=lambda args: [update_to_wire(args.room_id, args.body)],
        respond=_done,
    ),
    Operation(
        id="getRoomMetadata",
        method="GET",
        path=_ROOM + "/metadata",
        scope="read",
        summary="Get room metadata (get_room_metadata): the given keys, or all without 'key'",
        api="get_room_metadata",
        query=(_KEY,),
        reply=Metadata,
        wire=MetadataReply,
        validate=_validate_keys,
        request=lambda args: [KeysRequest(RoomId=args.room_id, Keys=_keys(args, required=False))],
        respond=_metadata,
    ),
    Operation(
        id="setRoomMetadata",
        method="PATCH",
        path=_ROOM + "/metadata",
        scope="write",
        summary="Upsert room metadata keys (set_room_metadata)",
        api="set_room_metadata",
        body=MetadataPatch,
        status=204,
        validate=_validate_metadata,
        request=_set_metadata,
        respond=_done,
    ),
    Operation(
        id="deleteRoomMetadata",
        method="DELETE",
        path=_ROOM + "/metadata",
        scope="write",
        summary="Delete room metadata keys (del_room_metadata); at least one 'key'",
        api="del_room_metadata",
        query=(_KEY,),
        status=204,
        applied_if_retried=frozenset({100503}),
        validate=_validate_deleted_keys,
        request=lambda args: [KeysRequest(RoomId=args.room_id, Keys=_keys(args, required=True))],
        respond=_done,
    ),
    Operation(
        id="createRoom",
        method="POST",
        path="/rooms",
        scope="write",
        summary="Create a room (create_room); a retry that finds its own room answers 201",
        api="create_room",
        body=CreateRoom,
        reply=Created,
        status=201,
        cache="invalidate",
        applied_if_retried=frozenset({100010}),
        owned_if_exists=True,
        errors=_EXISTS,
        validate=_validate_create,
        request=_create,
        respond=lambda args, _: Created(room_id=args.room_id),
    ),
    Operation(
        id="destroyRoom",
        method="DELETE",
        path=_ROOM,
        scope="write",
        summary="Destroy a room (destroy_room); the cached room is invalidated first on every replica",
        api="destroy_room",
        status=204,
        cache="invalidate",
        applied_if_retried=frozenset({100004}),
        validate=_room,
        request=_bare,
        respond=_done,
    ),
    Operation(
        id="listRooms",
        method="GET",
        path="/rooms",
        scope="read",
        summary="List public rooms by view count (get_room_list, 10/s), through a short shared cache",
        api="get_room_list",
        query=(
            Query("limit", "rooms per page, 1-20 (default 20)", kind="integer"),
            Query("cursor", "the previous page's next_cursor (absent: the first page)"),
        ),
        reply=RoomList,
        wire=_RoomListReply,
        qps=10,
        cache="read",
        validate=_validate_list,
        request=_list,
        respond=_room_list,
    ),
    Operation(
        id="getRoomStats",
        method="GET",
        path=_ROOM + "/stats",
        scope="read",
        summary="Room totals (get_room_stats, 100/s)",
        api="get_room_stats",
        reply=RoomStats,
        wire=_StatsReply,
        qps=100,
        validate=_room,
        request=_bare,
        respond=_stats,
    ),
    Operation(
        id="listMembers",
        method="GET",
        path=_ROOM + "/members",
        scope="read",
        summary="Online members (get_member_list; Tencent refreshes it about every 40 s, at most 1000)",
        api="get_member_list",
        query=(Query("cursor", "the previous page's next_cursor"),),
        reply=Members,
        wire=_MembersReply,
        validate=_validate_members,
        request=lambda args: [_MembersRequest(RoomId=args.room_id, Next=args.one("cursor"))],
        respond=_members,
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
        validate=_room,
        request=_bare,
        respond=lambda args, r: Admins(admins=[str(a) for a in (r[0].Response or _AdminsBody()).Admin_Account]),
    ),
    Operation(
        id="addAdmins",
        method="POST",
        path=_ROOM + "/admins",
        scope="write",
        summary=f"Make members admins (modify_admin add); a room has at most {ADMINS_MAX}",
        api="modify_admin",
        body=Accounts,
        status=204,
        errors={100020: errors.AdminLimitExceeded},
        validate=_validate_add_admins,
        request=lambda args: [_ModifyAdmin(RoomId=args.room_id, Admin_Account=args.body.accounts, OpType="add")],
        respond=_done,
    ),
    Operation(
        id="removeAdmins",
        method="DELETE",
        path=_ROOM + "/admins",
        scope="write",
        summary="Remove admins (modify_admin delete)",
        api="modify_admin",
        query=(_ACCOUNT,),
        status=204,
        validate=_validate_remove_admins,
        request=lambda args: [_ModifyAdmin(RoomId=args.room_id, Admin_Account=_query_accounts(args), OpType="delete")],
        respond=_done,
    ),
    Operation(
        id="listBans",
        method="GET",
        path=_ROOM + "/bans",
        scope="read",
        summary="Banned members (get_banned_member_list), a page at a time",
        api="get_banned_member_list",
        query=(
            Query("offset", "0 first, then the previous page's next_offset", kind="integer"),
            Query("limit", "1-100 (default 100)", kind="integer"),
        ),
        reply=Bans,
        wire=_BansReply,
        validate=_validate_bans,
        request=lambda args: [
            _BansRequest(RoomId=args.room_id, Offset=int(args.one("offset", "0")), Limit=int(args.one("limit", "100")))
        ],
        respond=_bans,
    ),
    Operation(
        id="banMembers",
        method="POST",
        path=_ROOM + "/bans",
        scope="write",
        summary=f"Ban members (ban_member): removed and kept out; {ACCOUNTS_PER_CALL} accounts per Tencent call",
        api="ban_member",
        body=Ban,
        status=204,
        split=ACCOUNTS_PER_CALL,
        validate=_validate_ban,
        request=lambda args: [
            _BanRequest(
                RoomId=args.room_id, MemberList_Account=part, Duration=args.body.duration, Reason=args.body.reason
            )
            for part in chunks(args.body.accounts, ACCOUNTS_PER_CALL)
        ],
        respond=_done,
    ),
    Operation(
        id="unbanMembers",
        method="DELETE",
        path=_ROOM + "/bans",
        scope="write",
        summary="Lift bans (unban_member)",
        api="unban_member",
        query=(_ACCOUNT,),
        status=204,
        split=ACCOUNTS_PER_CALL,
        validate=_validate_query_accounts,
        request=lambda args: [
            _UnbanRequest(RoomId=args.room_id, MemberList_Account=part)
            for part in chunks(_query_accounts(args), ACCOUNTS_PER_CALL)
        ],
        respond=_done,
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
        validate=_room,
        request=_bare,
        respond=_mutes,
    ),
    Operation(
        id="muteMembers",
        method="POST",
        path=_ROOM + "/mutes",
        scope="write",
        summary="Mute members for a while (mute_member)",
        api="mute_member",
        body=Mute,
        status=204,
        split=ACCOUNTS_PER_CALL,
        validate=_validate_mute,
        request=lambda args: [
            _MuteRequest(RoomId=args.room_id, MemberList_Account=part, MuteTime=args.body.duration)
            for part in chunks(args.body.accounts, ACCOUNTS_PER_CALL)
        ],
        respond=_done,
    ),
    Operation(
        id="unmuteMembers",
        method="DELETE",
        path=_ROOM + "/mutes",
        scope="write",
        summary="Unmute members (mute_member with MuteTime 0)",
        api="mute_member",
        query=(_ACCOUNT,),
        status=204,
        split=ACCOUNTS_PER_CALL,
        validate=_validate_query_accounts,
        request=lambda args: [
            _MuteRequest(RoomId=args.room_id, MemberList_Account=part, MuteTime=0)
            for part in chunks(_query_accounts(args), ACCOUNTS_PER_CALL)
        ],
        respond=_done,
    ),
    Operation(
        id="sendMessage",
        method="POST",
        path=_ROOM + "/messages",
        scope="write",
        summary="Send a text (send_text_msg) or custom (send_custom_msg) message as a member",
        api="send_text_msg",
        api_for=_message_api,
        body=Message,
        status=204,
        repeatable=False,  # every viewer sees a message sent twice
        validate=_validate_message,
        request=_message,
        respond=_done,
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
        validate=_room,
        request=_bare,
        respond=_seats,
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
        status=204,
        validate=_room,
        request=lambda args: [
            _LockRequest(
                RoomId=args.room_id,
                Index=args.body.index,
                ForbidTaken=args.body.forbid_taken,
                ForbidVideo=args.body.forbid_video,
                ForbidAudio=args.body.forbid_audio,
            )
        ],
        respond=_done,
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
        status=204,
        validate=_validate_take,
        request=lambda args: [
            _PickRequest(RoomId=args.room_id, Member_Account=args.body.account, Index=args.body.index)
        ],
        respond=_done,
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
            Query("account", "the member to take off their seat"),
            Query("data", "sent to the room in the notification (optional)"),
        ),
        status=204,
        validate=_validate_kick,
        request=lambda args: [
            _KickRequest(RoomId=args.room_id, Member_Account=_query_accounts(args)[0], Data=args.one("data"))
        ],
        respond=_done,
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
        status=204,
        repeatable=False,  # a second swap moves the two members back (one rule for every if_taken)
        validate=_validate_take,
        request=lambda args: [
            _MoveRequest(
                RoomId=args.room_id,
                SeatIndex=args.body.index,
                Member_Account=args.body.account,
                Policy=_POLICIES[args.body.if_taken],
            )
        ],
        respond=_done,
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
        qps=100,
        validate=_room,
        request=_bare,
        respond=lambda args, r: Robots(robots=[str(a) for a in (r[0].Response or _RobotsBody()).RobotList_Account]),
    ),
    Operation(
        id="addRobots",
        method="POST",
        path=_ROOM + "/robots",
        scope="write",
        summary=f"Add robots (add_robot, 100/s; at most {ROBOTS_MAX} a room, imported accounts)",
        api="add_robot",
        body=Accounts,
        status=204,
        qps=100,
        validate=_validate_add_robots,
        request=lambda args: [_RobotsRequest(RoomId=args.room_id, RobotList_Account=args.body.accounts)],
        respond=_done,
    ),
    Operation(
        id="removeRobots",
        method="DELETE",
        path=_ROOM + "/robots",
        scope="write",
        summary="Remove robots (del_robot, 100/s)",
        api="del_robot",
        query=(_ACCOUNT,),
        status=204,
        qps=100,
        validate=_validate_remove_robots,
        request=lambda args: [_RobotsRequest(RoomId=args.room_id, RobotList_Account=_query_accounts(args))],
        respond=_done,
    ),
)

BY_ID = {op.id: op for op in CATALOGUE}
