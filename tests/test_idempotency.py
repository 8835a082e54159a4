"""Writes exactly once (SPEC §10): which writes are retried, and Idempotency-Key, in one process
against the emulator over real HTTP (``test_idempotency_fleet.py`` runs the fleet-wide cases
across real processes)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway import errors, idempotency
from gateway.catalogue.operations import CATALOGUE
from gateway.metrics import Metrics
from gateway.stores.memory import MemoryKeyStore
from gateway.transport import OnTime, PooledTransport, Proxy, Reply, Sender
from live_engine_emulator import Emulator
from live_engine_emulator.state import APPLY_THEN_DROP, DROP, HTTP_502
from tests.redis_servers import free_port
from tests.support import APP_ID, TOKENS, Gateway, SkipClock, start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"
MESSAGES = ROOM + "/messages"
HELLO = {"sender": "administrator", "text": "hello"}


def messages(emulator: Emulator) -> list[str]:
    """The texts Tencent delivered in room-1, in order."""
    people = emulator.apps[APP_ID].people.get("room-1")
    return [m.get("TextContent", "") for m in people.messages] if people else []


def key(value: str) -> dict[str, str]:
    return {"idempotency-key": value}


# ---------------------------------------------------------------------- the header


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b"abc", "abc"),
        (b'"abc"', "abc"),
        (b'  "a\\"b\\\\c" ', 'a"b\\c'),
        (b"a b", "a b"),
        (b"x" * 255, "x" * 255),
        (b'"' + b"x" * 255 + b'"', "x" * 255),
    ],
)
def test_a_key_is_bare_or_a_quoted_string(raw: bytes, parsed: str) -> None:
    """A bare key and the same key as the draft's quoted string (with its two escapes) are one key."""
    assert idempotency.parse_key([raw]) == parsed


@pytest.mark.parametrize(
    "raw",
    [b"", b"  ", b'""', b"x" * 256, b'"abc', b'"a"b"', b'"a\\nb"', b'"ab\\"', b"caf\xc3\xa9", b"a\x01b", b"a\x7fb"],
)
def test_a_malformed_key_is_refused(raw: bytes) -> None:
    """Empty, too long, unbalanced or badly escaped quotes, control and non-ASCII characters: 400."""
    with pytest.raises(errors.InvalidRequest):
        idempotency.parse_key([raw])


def test_two_keys_are_refused() -> None:
    """A request that sends the header twice is refused: which key would it mean?"""
    with pytest.raises(errors.InvalidRequest):
        idempotency.parse_key([b"a", b"b"])


def test_every_write_is_declared_and_only_visible_repeats_are_not_repeatable() -> None:
    """The catalogue says which writes are not repeatable: messages (a viewer sees both) and
    seat moves (a second force or swap acts on whoever holds the seat by then); every other
    write repeats harmlessly."""
    not_repeatable = {op.id for op in CATALOGUE if not op.repeatable}
    assert not_repeatable == {"sendMessage", "moveSeat"}
    assert all(op.repeatable for op in CATALOGUE if op.method == "GET")


# ---------------------------------------------------------------------- retries of a write that is not repeatable


async def test_a_message_whose_reply_is_lost_is_sent_once(gateway: Gateway, emulator: Emulator) -> None:
    """Tencent applies the message and the connection drops before its reply: the gateway does
    not send it again, and says it may have applied (502)."""
    emulator.fail_next("send_text_msg", APPLY_THEN_DROP)
    response = await gateway.client.post(MESSAGES, json=HELLO)
    assert response.status_code == 502
    problem = response.json()
    assert problem["code"] == "upstream_unavailable"
    assert problem["may_have_applied"] is True
    assert messages(emulator) == ["hello"]
    assert emulator.calls["send_text_msg"] == 1


async def test_a_message_whose_reply_is_late_is_sent_once(emulator: Emulator, upstream_url: str) -> None:
    """Tencent applies the message but answers after the upstream timeout: 504 with
    may_have_applied at once, no second attempt."""
    async with start_gateway(upstream_url, upstream_timeout=3.2, deadline=10) as gw:
        emulator.faults.reply_latency = 3.5
        response = await gw.client.post(MESSAGES, json=HELLO)
    assert response.status_code == 504
    assert response.json()["may_have_applied"] is True
    assert emulator.calls["send_text_msg"] == 1


@pytest.mark.parametrize("code", [60007, 70001, HTTP_502, DROP])
async def test_a_message_is_retried_when_tencent_said_it_was_not_applied(
    gateway: Gateway, emulator: Emulator, code: int
) -> None:
    """Tencent's "too frequent" and a rejected UserSig say the message was not applied: it is
    sent again, once, to success. An HTTP 502 or a dropped connection may hide an applied
    message: those are not retried (502, may_have_applied)."""
    emulator.fail_next("send_text_msg", code)
    response = await gateway.client.post(MESSAGES, json=HELLO)
    if code in (HTTP_502, DROP):
        assert response.status_code == 502
        assert response.json()["may_have_applied"] is True
        assert emulator.calls["send_text_msg"] == 1
    else:
        assert response.status_code == 204
        assert emulator.calls["send_text_msg"] == 2
    assert messages(emulator) == ([] if code in (HTTP_502, DROP) else ["hello"])


class Unreachable:
    """The production transport, except that the first ``failures`` calls find no connection:
    they fail before the request is written (``on_time`` is never asked), as a refused connect does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self._real = PooledTransport(connections=8)

    async def post(
        self, origin: str, target: str, body: bytes, on_time: OnTime | None = None, *, proxy: Proxy | None = None
    ) -> Reply:
        if self.failures:
            self.failures -= 1
            raise httpx.ConnectError("connection refused")
        return await self._real.post(origin, target, body, on_time, proxy=proxy)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_a_message_is_retried_when_no_connection_was_made(emulator: Emulator, upstream_url: str) -> None:
    """A message whose attempts found no connection never reached Tencent: retried to success."""
    transport = Unreachable(2)
    factory: Callable[[], Sender] = lambda: transport  # noqa: E731
    async with start_gateway(upstream_url, transport_factory=factory) as gw:
        response = await gw.client.post(MESSAGES, json=HELLO)
    assert response.status_code == 204
    assert messages(emulator) == ["hello"]


async def test_a_repeatable_write_still_retries_a_lost_reply_to_success(gateway: Gateway, emulator: Emulator) -> None:
    """A room update whose reply was lost is sent again (applying it twice is harmless): 204."""
    emulator.fail_next("update_room_info", APPLY_THEN_DROP)
    response = await gateway.client.patch(ROOM, json={"room_name": "again"})
    assert response.status_code == 204
    assert emulator.calls["update_room_info"] == 2


async def test_a_repeatable_write_that_keeps_failing_says_it_may_have_applied(
    gateway: Gateway, emulator: Emulator
) -> None:
    """After every attempt failed, one of which Tencent may have applied, the problem says so."""
    emulator.fail_next("update_room_info", APPLY_THEN_DROP, 100001, 100001, 100001)
    response = await gateway.client.patch(ROOM, json={"room_name": "again"})
    assert response.status_code == 502
    assert response.json()["may_have_applied"] is True


# ---------------------------------------------------------------------- Idempotency-Key


async def test_a_repeat_gets_the_kept_answer_and_tencent_sees_one_message(gateway: Gateway, emulator: Emulator) -> None:
    """The first request with a key runs; a repeat gets its answer with Idempotent-Replayed and
    calls nobody."""
    first = await gateway.client.post(MESSAGES, json=HELLO, headers=key("msg-1"))
    again = await gateway.client.post(MESSAGES, json=HELLO, headers=key('"msg-1"'))
    assert first.status_code == again.status_code == 204
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["x-upstream-request-id"] == again.headers["x-upstream-request-id"]
    assert messages(emulator) == ["hello"]
    metrics = (await gateway.client.get("/metrics")).text
    assert 'gateway_idempotency_total{outcome="stored",tenant="acme"} 1.0' in metrics
    assert 'gateway_idempotency_total{outcome="replayed",tenant="acme"} 1.0' in metrics


async def test_a_key_sent_with_another_request_is_422(gateway: Gateway, emulator: Emulator) -> None:
    """The same key with another body (or path, or query) is a mistake, not a repeat: 422."""
    assert (await gateway.client.post(MESSAGES, json=HELLO, headers=key("k"))).status_code == 204
    other = await gateway.client.post(MESSAGES, json={**HELLO, "text": "bye"}, headers=key("k"))
    elsewhere = await gateway.client.post("/v1/tenants/acme/rooms/room-2/messages", json=HELLO, headers=key("k"))
    for response in (other, elsewhere):
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
    assert messages(emulator) == ["hello"]


async def test_keys_belong_to_the_caller(gateway: Gateway, emulator: Emulator) -> None:
    """Two callers sending the same key are two requests: both run."""
    writer = {"authorization": f"Bearer {TOKENS['wo']}"}
    assert (await gateway.client.post(MESSAGES, json=HELLO, headers=key("shared"))).status_code == 204
    response = await gateway.client.post(MESSAGES, json=HELLO, headers={**key("shared"), **writer})
    assert response.status_code == 204
    assert "idempotent-replayed" not in response.headers
    assert messages(emulator) == ["hello", "hello"]


async def test_a_bad_key_is_400_before_any_call(gateway: Gateway, emulator: Emulator) -> None:
    """A malformed key is refused before anything is sent to Tencent."""
    for bad in ("", "x" * 256, '"open', "tab\there"):
        response = await gateway.client.post(MESSAGES, json=HELLO, headers=key(bad))
        assert response.status_code == 400, bad
        assert response.json()["code"] == "invalid_request"
    assert emulator.calls["send_text_msg"] == 0


async def test_concurrent_repeats_send_once(gateway: Gateway, emulator: Emulator) -> None:
    """Ten copies of a keyed request at once: Tencent sees one, all ten get its answer."""
    emulator.faults.latency = 0.1
    responses = await asyncio.gather(
        *(gateway.client.post(MESSAGES, json=HELLO, headers=key("burst")) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [204] * 10
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
    assert messages(emulator) == ["hello"]


async def test_a_repeat_while_the_first_runs_past_the_wait_cap_is_409(emulator: Emulator, upstream_url: str) -> None:
    """A repeat waits for the first within the wait cap, then gets 409 with Retry-After."""
    async with start_gateway(upstream_url, budget_max_wait=0.2) as gw:
        emulator.faults.latency = 1.0
        first = asyncio.create_task(gw.client.post(MESSAGES, json=HELLO, headers=key("slow")))
        await asyncio.sleep(0.3)
        repeat = await gw.client.post(MESSAGES, json=HELLO, headers=key("slow"))
        assert repeat.status_code == 409
        assert repeat.json()["code"] == "idempotency_key_in_use"
        assert repeat.headers["retry-after"] == "1"
        assert (await first).status_code == 204
    assert messages(emulator) == ["hello"]


async def test_a_may_have_applied_message_is_kept_so_a_key_never_sends_twice(
    gateway: Gateway, emulator: Emulator
) -> None:
    """A keyed message whose reply was lost: the 502 with may_have_applied is the key's answer,
    so its repeat sends nothing."""
    emulator.fail_next("send_text_msg", APPLY_THEN_DROP)
    first = await gateway.client.post(MESSAGES, json=HELLO, headers=key("lost"))
    again = await gateway.client.post(MESSAGES, json=HELLO, headers=key("lost"))
    assert first.status_code == again.status_code == 502
    assert again.json()["may_have_applied"] is True
    assert again.headers["idempotent-replayed"] == "true"
    assert messages(emulator) == ["hello"]


async def test_a_repeatable_writes_5xx_is_not_kept(gateway: Gateway, emulator: Emulator) -> None:
    """A room update that failed (502 after its retries) runs again on a repeat: that is safe."""
    emulator.fail_next("update_room_info", *[100001] * 4)
    first = await gateway.client.patch(ROOM, json={"room_name": "n"}, headers=key("upd"))
    again = await gateway.client.patch(ROOM, json={"room_name": "n"}, headers=key("upd"))
    assert first.status_code == 502
    assert again.status_code == 204
    assert "idempotent-replayed" not in again.headers


async def test_a_4xx_is_kept_and_a_request_failing_validation_holds_no_key(
    gateway: Gateway, emulator: Emulator
) -> None:
    """Tencent's 404 is the key's answer (replayed); a body the gateway refuses before any call
    (400) does not use up the key, so the corrected request runs."""
    gone = "/v1/tenants/acme/rooms/no-such-room"
    assert (await gateway.client.patch(gone, json={"room_name": "n"}, headers=key("nf"))).status_code == 404
    again = await gateway.client.patch(gone, json={"room_name": "n"}, headers=key("nf"))
    assert again.status_code == 404
    assert again.headers["idempotent-replayed"] == "true"
    bad = await gateway.client.post(MESSAGES, json={"sender": "administrator"}, headers=key("fix"))
    assert bad.status_code == 400
    assert (await gateway.client.post(MESSAGES, json=HELLO, headers=key("fix"))).status_code == 204


async def test_a_keyed_create_replays_its_201_and_a_keyless_one_is_409(gateway: Gateway, emulator: Emulator) -> None:
    """A create retried with its key gets its own 201 (Location and body); without a key, the
    second create is 409 room_exists, as before."""
    body = {"room_id": "made-once"}
    first = await gateway.client.post("/v1/tenants/acme/rooms", json=body, headers=key("create-1"))
    again = await gateway.client.post("/v1/tenants/acme/rooms", json=body, headers=key("create-1"))
    keyless = await gateway.client.post("/v1/tenants/acme/rooms", json=body)
    assert first.status_code == again.status_code == 201
    assert again.headers["location"] == first.headers["location"] == "/v1/tenants/acme/rooms/made-once"
    assert again.json() == first.json() == {"room_id": "made-once"}
    assert again.headers["idempotent-replayed"] == "true"
    assert keyless.status_code == 409
    assert keyless.json()["code"] == "room_exists"
    assert emulator.calls["create_room"] == 2


async def test_one_key_never_sends_twice_through_a_replica_while_redis_is_unreachable(
    emulator: Emulator, upstream_url: str
) -> None:
    """With Redis configured but down, the replica's own keys decide: a repeat is replayed, not sent."""
    async with start_gateway(upstream_url, redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout=0.1) as gw:
        first = await gw.client.post(MESSAGES, json=HELLO, headers=key("outage"))
        again = await gw.client.post(MESSAGES, json=HELLO, headers=key("outage"))
    assert first.status_code == again.status_code == 204
    assert again.headers["idempotent-replayed"] == "true"
    assert messages(emulator) == ["hello"]


# ---------------------------------------------------------------------- claims: their lease and the in-process bound


async def test_a_claim_holds_for_every_call_of_the_write_and_one_more() -> None:
    """A write of three Tencent calls holds its key for four leases (one call's deadline each):
    a repeat meanwhile is 409, not a second run; after them, a repeatable write's key is
    claimed again, and the first's end leaves the second's claim alone."""
    clock = SkipClock()
    store = MemoryKeyStore(clock=clock)
    metrics = Metrics(CollectorRegistry())
    keys = idempotency.Keys(
        store=store, ttl=60.0, lease=1.0, wait=0.0, metrics=metrics, clock=clock, sleep=asyncio.sleep
    )
    keyed = idempotency.Keyed(key="k", fingerprint="f", tenant="acme")
    release_first, release_second = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    def work(name: str, release: asyncio.Event) -> Callable[[], Any]:
        async def run() -> idempotency.Answer:
            runs.append(name)
            await release.wait()
            return idempotency.Answer(status=204)

        return run

    first = asyncio.create_task(keys.run(keyed, repeatable=True, work=work("first", release_first), calls=3))
    await asyncio.sleep(0)
    clock.skip(3.9)
    with pytest.raises(errors.IdempotencyKeyInUse):
        await keys.run(keyed, repeatable=True, work=work("early", release_second))
    clock.skip(0.2)
    second = asyncio.create_task(keys.run(keyed, repeatable=True, work=work("second", release_second)))
    await asyncio.sleep(0)
    release_first.set()
    assert await first == (idempotency.Answer(status=204), False)
    release_second.set()
    assert (await second)[1] is False
    assert runs == ["first", "second"]


async def test_the_in_process_bound_never_evicts_a_claim_still_running() -> None:
    """Past ``max_keys`` the oldest answers go first; a claim still running stays (the store is
    over its bound until it ends), so its key cannot run twice here meanwhile."""
    store = MemoryKeyStore(clock=SkipClock(), max_keys=2)
    claim = functools.partial(store.claim, lease=10.0, ttl=60.0, repeatable=False)
    assert (await claim("running", "f", "o1")).state == "claimed"
    assert (await claim("answered", "f", "o2")).state == "claimed"
    await store.keep("answered", "o2", b"kept", 60.0)
    assert (await claim("newer", "f", "o3")).state == "claimed"  # evicts "answered", not "running"
    assert (await claim("running", "f", "o4")).state == "running"
    assert (await claim("answered", "f", "o5")).state == "claimed"  # (gone: claimed afresh)
    assert (await claim("running", "f", "o6")).state == "running"
