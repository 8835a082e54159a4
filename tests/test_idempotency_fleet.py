"""Writes exactly once across a fleet (SPEC §10): two real gateway processes on one Redis, in
front of the emulator process. Each test starts from reset emulator counters and faults."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fleet import Fleet, fleet
from tests.redis_servers import RedisServer
from tests.support import TOKENS

MESSAGES = "/v1/tenants/acme/rooms/room-1/messages"
HELLO = {"sender": "administrator", "text": "hello"}
RW = {"authorization": f"Bearer {TOKENS['rw']}"}
APPLY_THEN_DROP = "apply_then_drop"  # the emulator's fault: the call is applied, then the connection drops


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Fleet]:
    """Two replicas on one Redis, and the emulator."""
    with fleet(tmp_path_factory.mktemp("idem"), redis_server.url, replicas=2, rooms=5) as running:
        yield running


@pytest.fixture
def gw(two: Fleet) -> Fleet:
    """The fleet, its emulator's counters and faults reset."""
    two.reset()
    return two


def post(url: str, key: str | None, body: object = HELLO, path: str = MESSAGES, token: str = "rw") -> httpx.Response:
    headers = {"authorization": f"Bearer {TOKENS[token]}"}
    if key is not None:
        headers["idempotency-key"] = key
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def calls(gw: Fleet, api: str) -> int:
    return int(gw.stats()["calls"].get(api, 0))


def fail_next(gw: Fleet, api: str, *codes: int | str) -> None:
    httpx.post(f"{gw.emulator_url}/_emulator/fail_next", json={"api": api, "codes": list(codes)})


def test_a_message_whose_reply_is_lost_after_tencent_applied_it_is_sent_once(gw: Fleet) -> None:
    """Tencent applies the message, then the connection drops: one call, and the caller gets
    502 with may_have_applied (no retry by the gateway)."""
    fail_next(gw, "send_text_msg", APPLY_THEN_DROP)
    response = post(gw.urls[0], None)
    assert response.status_code == 502
    assert response.json()["may_have_applied"] is True
    assert calls(gw, "send_text_msg") == 1


def test_the_same_key_on_both_replicas_at_once_sends_once(gw: Fleet) -> None:
    """The same keyed message sent to both replicas at the same moment (Tencent slow to answer):
    one call at Tencent, both callers get its 204, one of them replayed."""
    httpx.post(f"{gw.emulator_url}/_emulator/faults", json={"latency_ms": 300})
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda url: post(url, key), [*gw.urls, *gw.urls]))
    assert [r.status_code for r in responses] == [204] * 4
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 3
    assert calls(gw, "send_text_msg") == 1


def test_a_replay_from_the_other_replica(gw: Fleet) -> None:
    """A key answered by one replica is replayed by the other, with the same upstream request id."""
    key = uuid.uuid4().hex
    first = post(gw.urls[0], key)
    again = post(gw.urls[1], key)
    assert first.status_code == again.status_code == 204
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-upstream-request-id"] == first.headers["x-upstream-request-id"]
    assert calls(gw, "send_text_msg") == 1


def test_a_reuse_is_422_on_any_replica(gw: Fleet) -> None:
    """The key sent again with another body, to the other replica: 422 idempotency_key_reused."""
    key = uuid.uuid4().hex
    assert post(gw.urls[0], key).status_code == 204
    reused = post(gw.urls[1], key, body={**HELLO, "text": "other"})
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert calls(gw, "send_text_msg") == 1


def test_keys_are_per_caller(gw: Fleet) -> None:
    """Two callers with the same key are two requests, on whichever replicas."""
    key = uuid.uuid4().hex
    assert post(gw.urls[0], key).status_code == 204
    other = post(gw.urls[1], key, token="wo")
    assert other.status_code == 204
    assert "idempotent-replayed" not in other.headers
    assert calls(gw, "send_text_msg") == 2


def test_a_keyed_create_replays_its_201(gw: Fleet) -> None:
    """A keyed create repeated on the other replica gets the same 201 and Location; without a key
    the create is 409 room_exists."""
    key, room = uuid.uuid4().hex, {"room_id": f"r-{uuid.uuid4().hex[:8]}"}
    first = post(gw.urls[0], key, body=room, path="/v1/tenants/acme/rooms")
    again = post(gw.urls[1], key, body=room, path="/v1/tenants/acme/rooms")
    keyless = post(gw.urls[1], None, body=room, path="/v1/tenants/acme/rooms")
    assert first.status_code == again.status_code == 201
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert keyless.status_code == 409
    assert calls(gw, "create_room") == 2


def test_bad_keys_are_400_with_no_upstream_call(gw: Fleet) -> None:
    """Malformed keys are refused before anything reaches Tencent."""
    for bad in ("x" * 256, '"unterminated', '"bad\\escape"'):
        response = post(gw.urls[0], bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "invalid_request"
    assert calls(gw, "send_text_msg") == 0


def test_a_repeatable_operation_still_retries_a_transient_failure(gw: Fleet) -> None:
    """A keyed room update meets Tencent's 100001, then a lost reply: retried to 204."""
    fail_next(gw, "update_room_info", 100001, APPLY_THEN_DROP)
    response = httpx.patch(
        f"{gw.urls[1]}/v1/tenants/acme/rooms/room-1",
        json={"room_name": "retried"},
        headers={**RW, "idempotency-key": uuid.uuid4().hex},
        timeout=30,
    )
    assert response.status_code == 204
    assert calls(gw, "update_room_info") == 3


def test_the_fleet_counts_keys(gw: Fleet) -> None:
    """Stored, replayed and reused keys are counted (gateway_idempotency_total)."""
    key = uuid.uuid4().hex
    post(gw.urls[0], key)
    post(gw.urls[1], key)
    post(gw.urls[1], key, body={**HELLO, "text": "x"})
    assert gw.counter("gateway_idempotency_total") >= 3
    text = "".join(httpx.get(f"{url}/metrics").text for url in gw.urls)
    for outcome in ("stored", "replayed", "reused"):
        assert f'outcome="{outcome}"' in text


def test_paths_are_unchanged_for_reads(gw: Fleet) -> None:
    """A GET ignores the header (reads are repeatable by nature): no key is stored."""
    response = httpx.get(
        f"{gw.urls[0]}/v1/tenants/acme/rooms/room-1", headers={**RW, "idempotency-key": "read"}, timeout=30
    )
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
