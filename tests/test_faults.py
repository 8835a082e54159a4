"""Upstream faults under load: callers still succeed, every retry is budgeted, no connection leaks,
and no write is lost: a 2xx means applied at Tencent, a 4xx or 429 means not."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from live_engine_emulator import Emulator
from live_engine_emulator.state import APPLY_THEN_DROP
from tests.support import APP_ID, TOKENS, Gateway, blast, drive, start_gateway

pytestmark = pytest.mark.slow  # load against the emulator: it needs the CPU it measures


def grants(gateway: Gateway) -> float:
    """Budget slots spent on calls: booked, less those forfeited because the call could not
    leave in time (those sent nothing)."""
    total = 0.0
    for family in gateway.app.state.gateway.metrics.registry.collect():
        sign = {"gateway_budget_grants": 1, "gateway_budget_slots_missed": -1}.get(family.name, 0)
        total += sign * sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def test_30_percent_internal_errors_still_succeed_and_every_retry_is_budgeted(
    gateway: Gateway, emulator: Emulator
) -> None:
    """With Tencent answering 100001 to 30% of calls, callers get their answers within the deadline:
    all but those whose four attempts all failed (0.3^4, under 1%), which get a clean 502. The
    budget granted exactly one slot per call Tencent saw."""
    emulator.faults.error_rate = 0.3
    results = await drive(
        [gateway.url],
        [f"/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)],
        token=TOKENS["rw"],
        rate=100,
        seconds=3,
        method="PATCH",
        json={"activity_status": 9},
    )
    statuses = [s for s, _ in results]
    assert set(statuses) <= {204, 502}
    assert statuses.count(502) <= 0.03 * len(statuses)
    assert max(t for _, t in results) < 10.0
    assert emulator.codes[100001] > 0
    assert grants(gateway) == sum(emulator.calls.values())


async def test_502s_and_dropped_connections_leak_no_connections(gateway: Gateway, emulator: Emulator) -> None:
    """After each of two storms of HTTP 502s and dropped connections, every socket the pool counts
    is a live idle one (failed connections are closed and uncounted, not kept), and the second
    storm leaves no more than the first."""
    emulator.faults.http_502_rate = 0.25
    emulator.faults.drop_rate = 0.25
    transports = gateway.app.state.gateway.service._upstream._transports  # base URL -> PooledTransport
    paths = [f"/v1/tenants/acme/rooms/room-{n % 3 + 1}" for n in range(150)]

    def sockets() -> tuple[int, int]:
        """(sockets the pool counts, live idle sockets it holds): equal when nothing leaked."""
        (transport,) = transports.values()
        (pool,) = transport._pools.values()
        live = [c for c in pool._idle if not c.closed and c.transport is not None and not c.transport.is_closing()]
        return pool.open, len(live)

    first = await blast(gateway.url, paths, token=TOKENS["rw"], method="PATCH", json={"room_name": "s"})
    after_first, live_first = sockets()
    second = await blast(gateway.url, paths, token=TOKENS["rw"], method="PATCH", json={"room_name": "s"})
    after_second, live_second = sockets()
    assert set(first + second) <= {204, 502}
    assert emulator.codes[0] > 0
    assert (after_first, after_second) == (live_first, live_second), "a counted socket is not a live one"
    assert after_second <= max(after_first, 64), (after_first, after_second)


async def test_no_write_is_lost_under_load_and_faults(upstream_url: str, emulator: Emulator) -> None:
    """3x the budget of uniquely marked writes while Tencent fails 20% of calls (some after
    applying them): every 204 is applied, every 4xx/429 is not."""
    emulator.faults.error_rate = 0.1
    emulator.faults.drop_rate = 0.05
    emulator.fail_next("update_room_info", *[APPLY_THEN_DROP] * 20)
    async with start_gateway(upstream_url, budget_max_wait=1.0) as gateway:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async with aiohttp.ClientSession(
            base_url=gateway.url,
            headers={"authorization": f"Bearer {TOKENS['rw']}"},
            connector=aiohttp.TCPConnector(limit=0),
        ) as session:

            async def write(i: int) -> tuple[str, int]:
                await asyncio.sleep(max(0.0, start + i / 600 - loop.time()))
                marker = f"w{i}"
                async with session.patch(f"/v1/tenants/acme/rooms/room-{i % 3 + 1}", json={"room_name": marker}) as r:
                    await r.read()
                    return marker, r.status

            outcomes = await asyncio.gather(*(write(i) for i in range(1800)))
    applied = {body["RoomInfo"]["RoomName"] for api, body in emulator.applied if api == "update_room_info"}
    answered = {marker for marker, status in outcomes if status == 204}
    refused = {marker for marker, status in outcomes if 400 <= status < 500}
    assert answered, "some writes went through"
    assert refused, "the budget refused some"
    assert answered <= applied, sorted(answered - applied)[:5]
    assert not refused & applied, sorted(refused & applied)[:5]
    assert {s for _, s in outcomes} <= {204, 429, 502, 504}
    assert emulator.busiest_second(f"{APP_ID}:update_room_info") <= 200
