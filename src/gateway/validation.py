"""Every limit the gateway checks before spending budget or calling Tencent.

Sizes are UTF-8 bytes, as Tencent counts them, not characters. Each check names the field.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from gateway.errors import InvalidRequest
from gateway.models import (
    ACCOUNT_MAX,
    CATEGORY_MAX,
    COVER_URL_MAX,
    METADATA_KEY_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_MAX,
    ROOM_ID_MAX,
    ROOM_NAME_MAX,
    MetadataPatch,
    RoomPatch,
)

METADATA_TOTAL_MAX = 16384


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def room_id(value: str) -> str:
    """A room id of 1-48 bytes without control characters."""
    size = _size(value)
    if not 1 <= size <= ROOM_ID_MAX:
        raise InvalidRequest(f"room_id must be 1-{ROOM_ID_MAX} UTF-8 bytes, got {size}")
    if _has_control(value):
        raise InvalidRequest("room_id must not contain control characters")
    return value


def bounded(field: str, value: str, limit: int, *, minimum: int = 0) -> None:
    size = _size(value)
    if not minimum <= size <= limit:
        raise InvalidRequest(f"{field} must be {minimum}-{limit} UTF-8 bytes, got {size}")


def room_fields(*, room_name: str | UnsetType, cover_url: str | UnsetType, category: list[int] | UnsetType) -> None:
    """The room fields create_room and update_room_info share, within Tencent's limits."""
    if room_name is not UNSET:
        bounded("room_name", room_name, ROOM_NAME_MAX)
    if cover_url is not UNSET:
        bounded("cover_url", cover_url, COVER_URL_MAX)
    if category is not UNSET and len(category) > CATEGORY_MAX:
        raise InvalidRequest(f"category holds at most {CATEGORY_MAX} integers, got {len(category)}")


def room_patch(patch: RoomPatch) -> RoomPatch:
    """A non-empty patch within Tencent's field limits."""
    if patch == RoomPatch():
        raise InvalidRequest("give at least one field to update")
    room_fields(room_name=patch.room_name, cover_url=patch.cover_url, category=patch.category)
    return patch


def account(value: str, *, field: str) -> str:
    """An account (IM UserID): 1-32 bytes, no control characters."""
    bounded(field, value, ACCOUNT_MAX, minimum=1)
    if _has_control(value):
        raise InvalidRequest(f"{field} must not contain control characters")
    return value


def accounts(values: list[str], *, field: str, most: int = 1000) -> list[str]:
    """1 to ``most`` accounts as sent (as the OpenAPI document's maxItems counts them), kept
    distinct, in request order."""
    if not values:
        raise InvalidRequest(f"give at least one {field}")
    if len(values) > most:
        raise InvalidRequest(f"{field}: at most {most} accounts per request, got {len(values)}")
    unique = list(dict.fromkeys(values))
    for value in unique:
        account(value, field=field)
    return unique


def integer(value: str, *, field: str, low: int, high: int) -> int:
    """A decimal integer query parameter within [low, high], in ASCII digits (``str.isdigit``
    alone takes "²", which ``int`` refuses, and "٣", which it reads as 3)."""
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise InvalidRequest(f"{field} must be an integer {low}-{high}, got {value[:20]!r}")
    return int(value)


def metadata_keys(keys: list[str], *, required: bool) -> list[str]:
    """1-10 keys as sent (or none where ``required`` is false), kept distinct, in request order."""
    if required and not keys:
        raise InvalidRequest("give at least one 'key' query parameter")
    if len(keys) > METADATA_KEYS_MAX:
        raise InvalidRequest(f"at most {METADATA_KEYS_MAX} keys per request, got {len(keys)}")
    unique = list(dict.fromkeys(keys))
    for key in unique:
        bounded(f"metadata key {key[:60]!r}", key, METADATA_KEY_MAX, minimum=1)
    return unique


def metadata_patch(patch: MetadataPatch) -> MetadataPatch:
    """1-10 keys of 1-50 bytes, values of at most 2048 bytes and 16384 bytes together."""
    if not patch.metadata:
        raise InvalidRequest("metadata must hold at least one key")
    metadata_keys(list(patch.metadata), required=True)
    total = 0
    for key, value in patch.metadata.items():
        size = _size(value)
        if size > METADATA_VALUE_MAX:
            raise InvalidRequest(f"metadata value of {key[:60]!r} is {size} bytes; the limit is {METADATA_VALUE_MAX}")
        total += size
    if total > METADATA_TOTAL_MAX:
        raise InvalidRequest(f"metadata values total {total} bytes; the limit is {METADATA_TOTAL_MAX}")
    return patch
