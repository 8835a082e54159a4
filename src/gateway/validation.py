"""Every limit the gateway checks before spending budget or calling Tencent.

Sizes are UTF-8 bytes, as Tencent counts them, not characters. Each check names the field.
"""

from __future__ import annotations

from msgspec import UNSET

from gateway.errors import InvalidRequest
from gateway.models import MetadataPatch, RoomPatch

ROOM_ID_MAX = 48
ROOM_NAME_MAX = 100
COVER_URL_MAX = 200
CATEGORY_MAX = 3
METADATA_KEYS_MAX = 10
METADATA_KEY_MAX = 50
METADATA_VALUE_MAX = 2048
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


def _bounded(field: str, value: str, limit: int, *, minimum: int = 0) -> None:
    size = _size(value)
    if not minimum <= size <= limit:
        raise InvalidRequest(f"{field} must be {minimum}-{limit} UTF-8 bytes, got {size}")


def room_patch(patch: RoomPatch) -> RoomPatch:
    """A non-empty patch within Tencent's field limits."""
    if patch == RoomPatch():
        raise InvalidRequest("give at least one field to update")
    if patch.room_name is not UNSET:
        _bounded("room_name", patch.room_name, ROOM_NAME_MAX)
    if patch.cover_url is not UNSET:
        _bounded("cover_url", patch.cover_url, COVER_URL_MAX)
    if patch.category is not UNSET and len(patch.category) > CATEGORY_MAX:
        raise InvalidRequest(f"category holds at most {CATEGORY_MAX} integers, got {len(patch.category)}")
    return patch


def metadata_keys(keys: list[str], *, required: bool) -> list[str]:
    """Distinct keys in request order: 1-10 of them (or none where ``required`` is false)."""
    unique = list(dict.fromkeys(keys))
    if required and not unique:
        raise InvalidRequest("give at least one 'key' query parameter")
    if len(unique) > METADATA_KEYS_MAX:
        raise InvalidRequest(f"at most {METADATA_KEYS_MAX} keys per request, got {len(unique)}")
    for key in unique:
        _bounded(f"metadata key {key[:60]!r}", key, METADATA_KEY_MAX, minimum=1)
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
