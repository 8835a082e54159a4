"""The emulator's own strictness (SPEC §5: other teams test against it): Tencent's checks in
Tencent's order, with Tencent's ErrorCodes, and its fault knobs. Called in process, as its HTTP
server calls it; the suite's other tests reach it over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from live_engine_emulator import Emulator
from live_engine_emulator.state import DROP, HTTP_502, LOCKOUT_FAILURES
from live_engine_emulator.usersig import mint

APP, KEY = 1400000001, "k" * 32
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emu() -> Emulator:
    """An emulator with one app (admin "administrator"), one room and a clock the test moves."""
    emulator = Emulator(seed=1, clock=Clock(), wall=lambda: NOW)
    emulator.add_app(APP, KEY, {"administrator"})
    emulator.add_room(APP, "r1")
    return emulator


def query(**overrides: str) -> dict[str, str]:
    """A valid signed query for the app's admin, with ``overrides``."""
    sig = mint(APP, KEY, "administrator", issued=int(NOW) - 10, expire=3600)
    base = {"sdkappid": str(APP), "identifier": "administrator", "usersig": sig, "random": "7", "contenttype": "json"}
    return {**base, **overrides}


def code(emu: Emulator, api: str, body: Any, **overrides: str) -> int:
    reply = emu.handle(api, query(**overrides), body)
    return int(reply["ErrorCode"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"contenttype": "xml"}, 60002),
        ({"sdkappid": "nope"}, 60012),
        ({"random": "-1"}, 60002),
        ({"random": str(2**32)}, 60002),
        ({"sdkappid": "1400009999"}, 70020),
        ({"usersig": ""}, 70002),
        ({"identifier": "someone"}, 70013),
    ],
    ids=["contenttype", "sdkappid", "random-negative", "random-33-bit", "unknown-app", "no-sig", "wrong-identifier"],
)
def test_the_query_is_checked_as_tencent_checks_it(emu: Emulator, overrides: dict[str, str], expected: int) -> None:
    """Each malformed query parameter is refused with the ErrorCode Tencent answers for it."""
    assert code(emu, "get_room_info", {"RoomId": "r1"}, **overrides) == expected


def test_a_valid_sig_of_a_non_admin_is_60010(emu: Emulator) -> None:
    """A correctly signed call by an account that is not an app admin is refused with 60010."""
    sig = mint(APP, KEY, "viewer", issued=int(NOW) - 10, expire=3600)
    assert code(emu, "get_room_info", {"RoomId": "r1"}, identifier="viewer", usersig=sig) == 60010


def test_repeated_sig_failures_lock_the_app_out_for_a_minute(emu: Emulator) -> None:
    """LOCKOUT_FAILURES bad signatures within a minute: 70050 for every call, good ones too, until
    the minute has passed."""
    for _ in range(LOCKOUT_FAILURES):
        assert code(emu, "get_room_info", {"RoomId": "r1"}, usersig="garbage") == 70003
    assert code(emu, "get_room_info", {"RoomId": "r1"}) == 70050
    emu.clock.now += 61  # type: ignore[attr-defined]
    assert code(emu, "get_room_info", {"RoomId": "r1"}) == 0


def test_more_than_the_limit_in_a_second_is_60007(emu: Emulator) -> None:
    """200 calls of one API in a second are admitted, the 201st is 60007; a second later, again."""
    assert [code(emu, "get_room_info", {"RoomId": "r1"}) for _ in range(201)][-2:] == [0, 60007]
    emu.clock.now += 1.0  # type: ignore[attr-defined]
    assert code(emu, "get_room_info", {"RoomId": "r1"}) == 0
    assert [code(emu, "get_room_list", {}) for _ in range(11)][-2:] == [0, 60007]  # get_room_list: 10/s


def test_bodies_and_commands_tencent_cannot_read(emu: Emulator) -> None:
    """A body that is not a JSON object is 60003; an unknown command is 60009; a RoomId that is
    not a string is 100002."""
    assert code(emu, "get_room_info", ["RoomId"]) == 60003
    assert code(emu, "get_room_info", {"RoomId": ["r1"]}) == 100002
    assert code(emu, "destroy_room", {"RoomId": {"r": 1}}) == 100002
    assert code(emu, "no_such_api", {}) == 60009


def test_create_list_and_destroy(emu: Emulator) -> None:
    """create_room needs RoomType Live and a new id (100010 for an id the same owner holds,
    100003 for another owner's); the list pages public rooms by view count; destroy removes the
    room and its metadata (100004 after)."""
    assert code(emu, "create_room", {"RoomInfo": {"RoomId": "r2"}}) == 100002
    assert code(emu, "create_room", {"RoomInfo": {"RoomId": "r1", "RoomType": "Live"}}) == 100010
    assert code(emu, "create_room", {"RoomInfo": {"RoomId": "r1", "RoomType": "Live", "Owner_Account": "x"}}) == 100003
    created = {"RoomId": "r2", "RoomType": "Live", "RoomName": "two", "Owner_Account": 144115233775727695}
    assert code(emu, "create_room", {"RoomInfo": created}) == 0
    assert emu.apps[APP].rooms["r2"]["Owner_Account"] == "144115233775727695"
    first = emu.handle("get_room_list", query(), {"Count": 1})
    assert first["Response"]["Next"] == "1"
    assert len(first["Response"]["RoomList"]) == 1
    last = emu.handle("get_room_list", query(), {"Count": 1, "Next": "1"})
    assert last["Response"]["Next"] == ""
    assert code(emu, "get_room_list", {"Count": 21}) == 100002
    assert code(emu, "destroy_room", {"RoomId": "r2"}) == 0
    assert code(emu, "destroy_room", {"RoomId": "r2"}) == 100004
    assert ("destroy_room", {"RoomId": "r2"}) in emu.applied


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"RoomName": 5}, 100002),
        ({"MaxMemberCount": True}, 100002),
        ({"RoomName": "é" * 51}, 100002),
        ({"Category": [1, 2, 3, 4]}, 100009),
        ({"Category": [1, "2"]}, 100002),
        ({"TakeSeatMode": "Whatever"}, 100002),
        ({"RoomName": "fine", "Unknown": 1}, 0),
    ],
    ids=["wrong-type", "bool-for-int", "name-over-100-bytes", "four-categories", "category-not-int", "seat-mode", "ok"],
)
def test_room_fields_are_checked_on_update(emu: Emulator, info: dict[str, Any], expected: int) -> None:
    """update_room_info checks each field's type and size (in UTF-8 bytes) as Tencent does, and
    ignores fields it does not know."""
    assert code(emu, "update_room_info", {"RoomInfo": {"RoomId": "r1", **info}}) == expected


def test_fault_rates_and_scripts(emu: Emulator) -> None:
    """Scripted faults come first, in order; then each call rolls against the rates."""
    emu.fail_next("get_room_info", HTTP_502, 100001)
    assert [emu.fault_for("get_room_info"), emu.fault_for("get_room_info")] == [HTTP_502, 100001]
    assert emu.fault_for("get_room_info") is None
    emu.faults.drop_rate, emu.faults.http_502_rate, emu.faults.error_rate = 0.2, 0.2, 0.2
    faults = [emu.fault_for("get_room_info") for _ in range(1000)]
    for fault in (DROP, HTTP_502, emu.faults.error_code):
        assert 120 < faults.count(fault) < 280, fault
    assert 300 < faults.count(None) < 500


def test_counters_reset(emu: Emulator) -> None:
    """reset_counters forgets calls, codes, arrivals, signatures seen and writes applied."""
    emu.arrive("get_room_info", query())
    emu.handle("update_room_info", query(), {"RoomId": "r1", "RoomInfo": {"RoomId": "r1", "RoomName": "x"}})
    kept = (emu.calls, emu.codes, emu.arrivals, emu.usersigs, emu.randoms, emu.applied)
    assert all(kept)
    emu.reset_counters()
    assert not any(kept)
