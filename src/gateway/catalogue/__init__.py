"""The operation catalogue: every room operation the gateway serves, declared once, as data.

An ``Operation`` says everything the gateway needs to serve one Tencent command, the way a
botocore service model describes an AWS operation: its HTTP method and path, the caller's
scope, the request (path parameter, query parameters, JSON body Struct) and the reply Struct,
the Tencent command it becomes and that command's request and reply Structs (Tencent's names
through msgspec ``rename``), Tencent's documented limits (checked before any budget is spent),
its budget rate, how many accounts one Tencent call takes (``split``: longer lists become
several budgeted calls), its cache effect, whether it is repeatable (safe to apply twice), its
retry rule and its error overrides. From the catalogue:

- ``api.py`` generates the routes and their OpenAPI documentation;
- ``service.RoomService.run`` validates, builds Tencent's request (``tencent_request``), splits
  it, calls Tencent (budgeted, signed, retried) and shapes the reply (``our_reply``);
- ``operations.DOCUMENTED`` names every command the gateway calls (the budget gauge's rows, the
  names a tenant's ``api_qps`` may use);
- the emulator's conformance test checks that it serves every command;
- ``tests/test_catalogue.py`` drives every entry over real HTTP.

Tencent's request is built by field name: each field of ``send`` takes the entry's ``fixed``
value, else the body's field, else the query parameter's value, else the path's room id. A
callable (``build``, ``respond``) remains only where Tencent's shape differs from ours.
Adding an operation is one entry in ``operations.py`` plus its Structs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

import msgspec

from gateway import validation
from gateway.errors import GatewayError
from gateway.models import Envelope, RoomIdRequest, Scope

# On the room cache: read through it (room), invalidate the room (invalidate), or read through a
# short cache of the operation's own (read: get_room_list's pages); or nothing.
Effect = Literal["none", "room", "invalidate", "read"]


class Args(msgspec.Struct, kw_only=True):
    """A request as an operation sees it: the path's room id, the query, the decoded body.
    Validation may normalise them (distinct accounts and keys) for the request built after."""

    room_id: str = ""
    query: dict[str, list[str]] = {}
    body: Any = None
    no_cache: bool = False  # Cache-Control: no-cache (a room read goes to Tencent and refreshes the cache)

    def one(self, name: str, default: str = "") -> str:
        values = self.query.get(name) or [default]
        return values[-1]


@dataclass(frozen=True)
class Query:
    """A documented query parameter; its value (``default`` when absent) fills a field of
    Tencent's request. ``limits`` (each value's) and ``count`` (how many values a repeated one
    takes) are the operation's ``validate`` rules as the OpenAPI document states them."""

    name: str
    description: str
    kind: Literal["string", "integer"] = "string"
    repeated: bool = False
    header: bool = False  # a request header, not a query parameter
    default: str = ""
    fills: str = ""  # the field of Tencent's request it fills (default: its name)
    required: bool = False
    limits: msgspec.Meta | None = None
    count: msgspec.Meta | None = None

    @property
    def annotation(self) -> Any:
        """The parameter's type with its limits, as msgspec makes a JSON Schema of it."""
        value: Any = int if self.kind == "integer" else str
        if self.limits is not None:
            value = Annotated[value, self.limits]
        if not self.repeated:
            return value
        return list[value] if self.count is None else Annotated[list[value], self.count]

    def value(self, args: Args) -> object:
        if self.repeated:
            return args.query.get(self.name, [])
        text = args.one(self.name, self.default)
        return int(text) if self.kind == "integer" else text


@dataclass(frozen=True)
class Split:
    """One Tencent call takes at most ``most`` accounts, in the request's field ``field``: a
    longer list is several calls, each budgeted (``RoomService`` splits)."""

    field: str
    most: int


@dataclass(frozen=True)
class Variant:
    """Another command the operation becomes when the body sets ``when``, with its request."""

    when: str
    api: str
    send: type[msgspec.Struct]


def tencent(**names: str) -> Callable[[str], str]:
    """A msgspec ``rename``: Tencent's name for each field, ``names``' where given, else the field
    in PascalCase (room_id: RoomId) with IM's account suffix (owner_account: Owner_Account)."""

    def rename(name: str) -> str:
        if name in names:
            return names[name]
        pascal = "".join(word.capitalize() for word in name.split("_"))
        return pascal.removesuffix("Account") + "_Account" if name.endswith("_account") else pascal

    return rename


def tencent_reply(ours: type[msgspec.Struct], **names: str) -> type[Envelope]:
    """Tencent's reply whose ``Response`` holds the fields of ``ours`` under Tencent's names
    (``tencent``): an operation Tencent answers in our shape needs no reply Structs of its own."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(ours):
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, f.type))
    response = msgspec.defstruct(f"Tencent{ours.__name__}", fields, rename=tencent(**names), kw_only=True)
    reply = msgspec.defstruct(f"Tencent{ours.__name__}Reply", [("Response", response | None, None)], bases=(Envelope,))
    return cast(type[Envelope], reply)


def _room(args: Args) -> None:
    validation.room_id(args.room_id)


@dataclass(frozen=True)
class Confirm:
    """How a write that Tencent refused on a retry, after an attempt that may have applied, is
    found done after all: by the catalogue's read ``read`` (an operation id, called with the
    write's arguments), whose reply, shaped as ours, ``done`` judges from the write's arguments
    and the tenant's admin account. ``when``: the ErrorCodes it checks (empty: any caller error)."""

    read: str
    done: Callable[[Args, Any, str], bool]
    when: frozenset[int] = frozenset()


@dataclass(frozen=True, kw_only=True)
class Operation:
    id: str  # the OpenAPI operationId, e.g. createRoom
    method: Literal["GET", "POST", "DELETE", "PATCH"]
    path: str  # under /v1/tenants/{tenant}, e.g. /rooms/{room_id}/admins
    scope: Scope
    summary: str
    api: str  # Tencent's command, e.g. create_room
    service: str = "live_engine_http_srv"  # v4/<service>/<api>
    body: type[msgspec.Struct] | None = None  # the JSON request body (snake_case)
    query: tuple[Query, ...] = ()
    send: type[msgspec.Struct] = RoomIdRequest  # Tencent's request, built by field name (module docstring)
    fixed: Mapping[str, object] = field(default_factory=dict)  # fields of ``send`` the entry sets itself
    variant: Variant | None = None  # another command, chosen by the body (send text or custom)
    build: Callable[[Args], msgspec.Struct] | None = None  # instead of ``send``, where the shapes differ
    reply: type[msgspec.Struct] | None = None  # None: 204 No Content
    wire: type[Envelope] = Envelope  # Tencent's reply
    respond: Callable[[Args, Any], msgspec.Struct] | None = None  # default: the reply's Response by field name
    status: int = 200  # with a reply (an operation without one answers 204)
    qps: int = 200  # Tencent's documented limit per SDKAppID (the tenant's api_qps overrides it)
    split: Split | None = None
    cache: Effect = "none"
    # Applying it twice leaves Tencent as applying it once (SPEC §10). A write that is not is retried
    # only when an attempt certainly did not reach Tencent; otherwise its error says may_have_applied.
    repeatable: bool = True
    applied_if_retried: frozenset[int] = frozenset()  # codes meaning "done" once an attempt may have applied
    confirm: Confirm | None = None  # a refusal on a retry checked by a read (create: the room's owner)
    errors: Mapping[int, type[GatewayError]] = field(default_factory=dict)  # overrides of upstream.ERROR_CODES
    validate: Callable[[Args], None] = _room  # Tencent's documented limits, before any budget is spent

    def __post_init__(self) -> None:
        if self.reply is None:
            if self.status != 200 or self.respond is not None:
                raise ValueError(f"{self.id}: an operation without a reply answers 204 and shapes nothing")
            object.__setattr__(self, "status", 204)
        fields = self.send.__struct_fields__
        if not set(self.fixed) <= set(fields) or (self.split is not None and self.split.field not in fields):
            raise ValueError(f"{self.id}: fixed and split name fields of {self.send.__name__}")

    @property
    def apis(self) -> tuple[str, ...]:
        """Every Tencent command the operation may call."""
        return (self.api,) if self.variant is None else (self.api, self.variant.api)


def tencent_request(op: Operation, args: Args) -> tuple[str, msgspec.Struct]:
    """The Tencent command and its request (before splitting), from the validated ``args``."""
    if op.build is not None:
        return op.api, op.build(args)
    api, send = op.api, op.send
    body = {} if args.body is None else msgspec.structs.asdict(args.body)
    if op.variant is not None and body.get(op.variant.when, msgspec.UNSET) is not msgspec.UNSET:
        api, send = op.variant.api, op.variant.send
    given = {"room_id": args.room_id, **{q.fills or q.name: q.value(args) for q in op.query if not q.header}, **body}
    given.update(op.fixed)
    return api, send(**{name: given[name] for name in send.__struct_fields__ if name in given})


def our_reply(op: Operation, args: Args, reply: Envelope) -> msgspec.Struct | None:
    """Our reply from Tencent's last one: ``respond``'s, or its ``Response`` taken field by field
    (an absent ``Response`` gives the reply's defaults)."""
    if op.reply is None:
        return None
    if op.respond is not None:
        return op.respond(args, reply)
    response = getattr(reply, "Response", None)
    return msgspec.convert({} if response is None else response, op.reply, from_attributes=True)
