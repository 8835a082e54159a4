"""Overload (overload.py): the event loop's lag measured, new API work shed past a bound, readiness
false when it lasts, and recovery."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.overload import Overload
from live_engine_emulator import Emulator
from tests.support import start_gateway

ROOM = "/v1/tenants/acme/rooms/room-1"


def test_shedding_starts_past_the_bound_and_stops_under_half_of_it() -> None:
    """Two samples in a row past ``shed_at`` start shedding (one is a stall that has passed);
    it goes on until a sample is under half of the bound."""
    overload = Overload(shed_at=0.2, unready_after=1.0)
    overload.sample(0.15, now=0.0)
    overload.sample(0.9, now=0.9)
    overload.sample(0.0, now=0.95)
    assert not overload.shedding
    overload.sample(0.25, now=1.0)
    assert not overload.shedding
    overload.sample(0.25, now=1.3)
    assert overload.shedding
    overload.sample(0.15, now=1.1)
    assert overload.shedding
    overload.sample(0.05, now=1.2)
    assert not overload.shedding


def test_readiness_turns_false_only_when_shedding_lasts() -> None:
    """Shedding for ``unready_after`` seconds in a row makes the replica unready; recovery undoes it."""
    overload = Overload(shed_at=0.2, unready_after=1.0, over=1)
    overload.sample(0.5, now=10.0)
    assert overload.ready(10.5)
    assert not overload.ready(11.0)
    overload.sample(0.0, now=11.5)
    assert overload.ready(11.5)


def test_a_zero_bound_never_sheds() -> None:
    """GATEWAY_OVERLOAD_LAG=0 switches shedding off; the lag is still measured."""
    overload = Overload(shed_at=0.0, unready_after=1.0)
    overload.sample(5.0, now=0.0)
    assert overload.lag == 5.0
    assert not overload.shedding


async def test_the_monitor_sees_a_blocked_loop() -> None:
    """A loop kept busy for 200 ms shows as lag of about that much."""
    overload = Overload(shed_at=0.1, unready_after=1.0, every=0.01, over=1)
    task = asyncio.create_task(overload.run())
    await asyncio.sleep(0.03)
    time.sleep(0.2)  # noqa: ASYNC251 - the loop busy with work: nothing else runs meanwhile
    await asyncio.sleep(0.001)  # the monitor's overdue timer runs first
    assert overload.shedding
    assert overload.lag > 0.15
    for _ in range(100):  # prompt samples end it (within a second even on a busy machine)
        if not overload.shedding:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert not overload.shedding


async def test_an_overloaded_replica_sheds_api_work_but_not_health_or_callbacks(
    upstream_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While shedding: API requests get 503 overloaded with Retry-After, on a connection that
    closes, and nothing reaches Tencent;
    /livez, /metrics and Tencent's callbacks still answer; /readyz turns 503 once it lasts; when
    the lag falls, requests are served again and the replica is ready. (The samples are the
    test's: the monitor itself is ``test_the_monitor_sees_a_blocked_loop``'s.)"""

    async def by_hand(self: Overload) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Overload, "run", by_hand)
    async with start_gateway(upstream_url, overload_lag=0.25, overload_unready_after=0.2) as gw:
        overload: Overload = gw.app.state.gateway.overload
        loop = asyncio.get_running_loop()
        overload.sample(1.0, loop.time())
        overload.sample(1.0, loop.time())
        shed = await gw.client.get(ROOM, headers={"cache-control": "no-cache"})
        assert shed.status_code == 503
        assert shed.json()["code"] == "overloaded"
        assert shed.headers["retry-after"] == "1"
        assert shed.headers["connection"] == "close"  # the next request may land on another replica
        assert (await gw.client.get("/livez")).status_code == 200
        callback = await gw.client.post("/v1/callbacks/tencent?SdkAppid=1&CallbackCommand=x&Sign=x&RequestTime=1")
        assert callback.status_code != 503
        assert emulator.calls["get_room_info"] == 0
        assert (await gw.client.get("/readyz")).status_code == 200  # not for long yet
        await asyncio.sleep(0.25)
        ready = await gw.client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (503, "overloaded")
        overload.sample(0.0, loop.time())
        assert (await gw.client.get(ROOM)).status_code == 200
        assert (await gw.client.get("/readyz")).status_code == 200
        metrics = (await gw.client.get("/metrics")).text
        assert "gateway_overload_shed_total 1.0" in metrics
        assert "gateway_event_loop_lag_seconds" in metrics
