"""The operation catalogue: every room operation the gateway serves, declared once.

An ``Operation`` says everything the gateway needs to serve one Tencent command, the way a
botocore service model describes an AWS operation: its HTTP method and path, the caller's
scope, the request (path parameter, query parameters, JSON body Struct) and the reply Struct,
the Tencent command it becomes, Tencent's documented limits (checked before any budget is
spent), its budget rate, how many accounts one Tencent call takes (longer lists become several
budgeted calls), its cache effect, whether it is repeatable (safe to apply twice), its retry
rule and its error overrides. From the catalogue:

- ``api.py`` generates the routes and their OpenAPI documentation;
- ``service.RoomService.run`` validates, calls Tencent (budgeted, signed, retried) and shapes
  the reply;
- the emulator's conformance test checks that it serves every command;
- ``tests/test_catalogue.py`` drives every entry over real HTTP.

Adding an operation is one entry in ``operations.py`` plus its Structs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from gateway.errors import GatewayError
from gateway.models import Envelope, Scope

# On the room cache: read through it (room), invalidate the room (invalidate), or read through a
# short cache of the operation's own (read: get_room_list's pages); or nothing.
Effect = Literal["none", "room", "invalidate", "read"]


class Args(msgspec.Struct, kw_only=True):
    """A request as an operation sees it: the path's room id, the query, the decoded body."""

    room_id: str = ""
    query: Mapping[str, list[str]] = {}
    body: Any = None
    no_cache: bool = False  # Cache-Control: no-cache (a room read goes to Tencent and refreshes the cache)

    def one(self, name: str, default: str = "") -> str:
        values = self.query.get(name) or [default]
        return values[-1]


@dataclass(frozen=True)
class Query:
    """A documented query parameter."""

    name: str
    description: str
    kind: Literal["string", "integer"] = "string"
    repeated: bool = False
    header: bool = False  # a request header, not a query parameter


@dataclass(frozen=True, kw_only=True)
class Operation:
    id: str  # the OpenAPI operationId, e.g. createRoom
    method: Literal["GET", "POST", "DELETE", "PATCH"]
    path: str  # under /v1/tenants/{tenant}, e.g. /rooms/{room_id}/admins
    scope: Scope
    summary: str
    api: str  # Tencent's command, e.g. create_room
    service: str = "live_engine_http_srv"  # v4/<service>/<api>
    api_for: Callable[[Args], str] | None = None  # when the command depends on the body (send text or custom)
    body: type[msgspec.Struct] | None = None  # the JSON request body (snake_case)
    query: tuple[Query, ...] = ()
    reply: type[msgspec.Struct] | None = None  # None: 204 No Content
    wire: type[Envelope] = Envelope  # Tencent's reply
    status: int = 200
    qps: int = 200  # Tencent's documented limit per SDKAppID (the tenant's api_qps overrides it)
    split: int | None = None  # accounts one Tencent call takes; longer lists are several calls
    cache: Effect = "none"
    # Applying it twice leaves Tencent as applying it once (SPEC §10). A write that is not is retried
    # only when an attempt certainly did not reach Tencent; otherwise its error says may_have_applied.
    repeatable: bool = True
    applied_if_retried: frozenset[int] = frozenset()  # codes meaning "done" once an attempt may have applied
    owned_if_exists: bool = False  # create: a retried 100003 for a room the tenant's admin owns is done
    errors: Mapping[int, type[GatewayError]] = field(default_factory=dict)  # overrides of upstream.ERROR_CODES
    validate: Callable[[Args], None]
    request: Callable[[Args], list[msgspec.Struct]]  # Tencent's request bodies (several when split)
    respond: Callable[[Args, list[Any]], msgspec.Struct | None]  # our reply from Tencent's replies


def chunks(items: list[str], size: int | None) -> list[list[str]]:
    """``items`` in lists of at most ``size`` (one Tencent call each)."""
    if size is None:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]
