"""Several real gateway processes on one Redis: one budget, one UserSig, one cache for the fleet."""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fleet import Fleet, Partition, fleet, stop
from tests.redis_servers import RedisServer, standalone
from tests.support import APP_ID, TOKENS, blast, drive

AUTH = {"authorization": f"Bearer {TOKENS['rw']}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_for_fleet() -> Iterator[RedisServer]:
    with standalone() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_for_fleet: RedisServer) -> Iterator[Fleet]:
    """Three gateway replicas, an emulator and one Redis, for this module."""
    with fleet(tmp_path_factory.mktemp("fleet"), redis_for_fleet.url, replicas=3, budget_max_wait=1.0) as running:
        yield running


def room(n: int) -> str:
    return f"/v1/tenants/acme/rooms/room-{n}"


async def test_budget_is_shared_by_the_fleet(replicas: Fleet) -> None:
    """600 writes/s offered for 10 s over 3 replicas: Tencent never sees more than 200 in a sliding
    second, never answers 60007, and the fleet's schedule puts at least 97% of the budget to use
    in steady state (the whole seconds between the first and the last: the first holds the load
    generator's ramp-up, the last is partial).

    "To use" counts the slots Tencent saw and the slots a replica forfeited because its process
    was not running when the slot came (``gateway_budget_slots_missed_total``): on this 2-core
    machine, shared by three replicas, the emulator, Redis and the load generator, a replica is
    sometimes off the CPU for tens of milliseconds, and how often depends on the neighbours, not
    on the gateway (on the same code, Tencent saw 90.9-98.3% here, with 0.9-8.4% of the slots
    forfeited). The forfeits are bounded at 15% of the slots granted, which a broken send window
    (every call late) would far exceed; the bench measures the arrivals alone, on a quieter
    machine (``bench/budget_fleet``)."""
    replicas.reset()
    grants = replicas.counter("gateway_budget_grants_total")
    missed = replicas.counter("gateway_budget_slots_missed_total")
    seconds = 10
    results = await steady_writes(replicas, seconds)
    stats = replicas.stats()
    grants = replicas.counter("gateway_budget_grants_total") - grants
    missed = replicas.counter("gateway_budget_slots_missed_total") - missed
    key = f"{APP_ID}:update_room_info"
    statuses = {status for status, _ in results}
    assert statuses <= {204, 429}
    assert stats["busiest_second"][key] <= 200
    assert stats["codes"].get("60007", 0) == 0
    arrivals = stats["arrivals"][key]
    steady = arrivals["per_second"][1:-1]
    seen = sum(steady) / len(steady) / 200
    forfeited = missed / seconds / 200  # the forfeits' share of the budget, per second of the run
    print(
        f"busiest second {stats['busiest_second'][key]}, Tencent saw {seen:.3f} of the budget, "
        f"forfeited {missed:.0f} of {grants:.0f} slots ({forfeited:.3f}); per second {arrivals['per_second']}"
    )
    assert len(steady) >= 4
    assert missed <= 0.15 * grants, f"{missed:.0f} of {grants:.0f} slots forfeited"
    assert seen + forfeited >= 0.97, f"budget used {seen:.3f} + forfeited {forfeited:.3f}: {arrivals['per_second']}"


async def test_one_upstream_call_for_concurrent_cold_reads_across_replicas(replicas: Fleet) -> None:
    """300 concurrent cold reads of one room spread over 3 replicas cost Tencent one call."""
    replicas.reset(latency_ms=200)
    statuses = await asyncio.gather(*(blast(url, [room(2)] * 100, token=TOKENS["rw"]) for url in replicas.urls))
    assert [s for batch in statuses for s in batch] == [200] * 300
    assert replicas.stats()["calls"] == {"get_room_info": 1}


def test_one_usersig_for_the_whole_fleet(replicas: Fleet) -> None:
    """Every replica signs with the same admin UserSig: Tencent sees exactly one."""
    replicas.reset()
    for url in replicas.urls:
        for n in range(3, 6):
            response = httpx.get(url + room(n), headers={**AUTH, "cache-control": "no-cache"})
            assert response.status_code == 200
    assert replicas.stats()["usersigs"] == {str(APP_ID): 1}


def test_read_your_writes_across_replicas(replicas: Fleet) -> None:
    """A write through one replica is seen by a read through any other, cache or no cache."""
    replicas.reset()
    a, b, c = replicas.urls
    for n in range(6, 11):
        assert httpx.get(a + room(n), headers=AUTH).status_code == 200  # cached on the fleet
        assert httpx.get(c + room(n), headers=AUTH).headers["x-cache"] == "hit"
        assert httpx.patch(b + room(n), headers=AUTH, json={"room_name": f"renamed {n}"}).status_code == 204
        after = httpx.get(c + room(n), headers=AUTH)
        assert after.json()["room_name"] == f"renamed {n}"


def steady_writes(
    running: Fleet, seconds: float, arrivals: list[float] | None = None
) -> asyncio.Task[list[tuple[int, float]]]:
    """3x the budget of writes over every replica, for ``seconds``, in the background."""
    return asyncio.create_task(
        drive(
            running.urls,
            [room(1)],
            token=TOKENS["rw"],
            rate=600,
            seconds=seconds,
            method="PATCH",
            json={"activity_status": 4},
            arrivals=arrivals,
        )
    )


async def readiness(running: Fleet) -> list[dict[str, str]]:
    async with httpx.AsyncClient() as client:
        return [(await client.get(url + "/readyz")).json() for url in running.urls]


@pytest.mark.parametrize("max_replicas", [3, 1], ids=["fleet-size-set", "fleet-size-unset"])
async def test_redis_restart_mid_run(tmp_path: Path, max_replicas: int) -> None:
    """Redis killed for 3 s and restarted empty (it keeps nothing on disk) during steady 3x-budget
    load: no 5xx, readiness stays up (degraded), Tencent never sees more than 200 in a sliding
    second (an empty schedule gives no burst), shared state resumes. So
    also when GATEWAY_MAX_REPLICAS is left at its default (1) in a fleet of 3: each replica paces
    at the budget over the largest fleet it saw in the heartbeats."""
    with (
        standalone() as redis,
        fleet(tmp_path, redis.url, replicas=3, budget_max_wait=1.0, max_replicas=max_replicas) as running,
    ):
        running.reset()
        load = steady_writes(running, seconds=9)
        await asyncio.sleep(2.5)
        redis.kill()
        await asyncio.sleep(1.5)
        assert await readiness(running) == [{"status": "ready", "mode": "degraded"}] * 3
        await asyncio.sleep(1.5)
        redis.start()
        results = await load
        after = await readiness(running)
        stats = running.stats()
    statuses = [status for status, _ in results]
    assert set(statuses) <= {204, 429}, {s: statuses.count(s) for s in set(statuses)}
    busiest = stats["busiest_second"][f"{APP_ID}:update_room_info"]
    print(f"busiest second {busiest}, statuses {sorted((s, statuses.count(s)) for s in set(statuses))}")
    assert busiest <= 200
    assert stats["codes"].get("60007", 0) == 0
    assert after == [{"status": "ready", "mode": "shared"}] * 3


async def test_slow_redis_mid_run(tmp_path: Path) -> None:
    """Redis stuck for 2 s (DEBUG SLEEP) during steady 3x-budget load: no 5xx, no request waits
    longer than its budget wait cap plus two Redis timeouts, Tencent never sees more than 200 in a
    sliding second, and the replicas go back to shared state."""
    max_wait, redis_timeout = 1.0, 0.25
    with (
        standalone() as redis,
        fleet(tmp_path, redis.url, replicas=3, budget_max_wait=max_wait, redis_timeout=redis_timeout) as running,
    ):
        running.reset()
        arrivals: list[float] = []
        began = asyncio.get_running_loop().time()
        load = steady_writes(running, seconds=7, arrivals=arrivals)
        await asyncio.sleep(2.0)
        blocker = redis.client()
        stalled, stalled_at = asyncio.get_running_loop().time() - began, time.monotonic()  # (the emulator's clock)
        await asyncio.to_thread(blocker.execute_command, "DEBUG", "SLEEP", "2")
        blocker.close()
        results = await load
        await asyncio.sleep(1.5)
        after = await readiness(running)
        stats = running.stats()
        retries = running.counter("gateway_upstream_retries_total")
        missed = running.counter("gateway_budget_missed_total")
    statuses = [status for status, _ in results]
    slowest = max(seconds for _, seconds in results)
    busiest = stats["busiest_second"][f"{APP_ID}:update_room_info"]
    print(f"busiest second {busiest}, slowest request {slowest:.2f} s, statuses {sorted(set(statuses))}")
    print(f"Tencent answered {stats['codes']}; upstream retries {retries:g}, slots missed {missed:g}")
    print(f"Redis stalled {stalled:.2f}-{stalled + 2:.2f} s into the load; the slowest (sent at, took, status):")
    for (status, took), at in sorted(zip(results, arrivals, strict=True), key=lambda r: -r[0][1])[:8]:
        print(f"  {at - took:.2f} s  {took:.2f} s  {status}")
    times = stats["arrivals"][f"{APP_ID}:update_room_info"]["times"]
    tenth = Counter(math.floor((at - stalled_at) * 10) for at in times)  # a tenth of a second, from the stall
    print("Tencent's arrivals per 100 ms from the stall:", [(k / 10, n) for k, n in sorted(tenth.items())])
    first = max(range(len(times)), key=lambda i: bisect.bisect_left(times, times[i] + 1.0) - i)
    start = times[first]
    late = [(round(at - stalled_at, 3), late) for at, late in stats["stalls"] if start - 0.1 <= at <= start + 1.1]
    print(f"the busiest second began {start - stalled_at:.3f} s from the stall; Tencent's loop ran late then: {late}")
    assert set(statuses) <= {204, 429}
    assert slowest < max_wait + 2 * redis_timeout + 0.5
    assert busiest <= 200
    assert stats["codes"].get("60007", 0) == 0
    assert after == [{"status": "ready", "mode": "shared"}] * 3


async def test_a_replica_cut_off_from_redis_stays_within_the_fleet_budget(tmp_path: Path) -> None:
    """One of three replicas loses its road to Redis for 4 s while the others keep theirs, under
    steady 3x-budget load. The others see it fall silent and leave room for its share; it waits
    until they have before pacing on its own; mended, it pushes the shared schedule past its own
    slots before it rejoins. Tencent never sees more than 200 in a sliding second, callers get
    only 204s and 429s, and all three end in shared mode."""
    with standalone() as redis:
        partition = Partition(redis.port)
        try:
            with fleet(tmp_path, redis.url, replicas=3, redis_urls={0: partition.url}, budget_max_wait=1.0) as running:
                running.reset()
                load = steady_writes(running, seconds=11)
                await asyncio.sleep(2.0)
                partition.cut()
                # Noticed within 0.5 s of its last beat (at most 0.1 s before the cut) plus the
                # others' next beat and a Redis timeout: 1.2 s at the latest; read at 2.5 s.
                await asyncio.sleep(2.5)
                during = await readiness(running)
                lapsed = [_gauge(url, "gateway_fleet_lapsed_replicas") for url in running.urls[1:]]
                await asyncio.sleep(1.5)
                partition.mend()
                results = await load
                await asyncio.sleep(1.5)
                after = await readiness(running)
                stats = running.stats()
        finally:
            partition.close()
    key = f"{APP_ID}:update_room_info"
    statuses = [status for status, _ in results]
    print(f"busiest second {stats['busiest_second'][key]}, per second {stats['arrivals'][key]['per_second']}")
    assert during == [{"status": "ready", "mode": "degraded"}] + [{"status": "ready", "mode": "shared"}] * 2
    assert lapsed == [1.0, 1.0]
    assert set(statuses) <= {204, 429}
    assert stats["busiest_second"][key] <= 200
    assert stats["codes"].get("60007", 0) == 0
    assert after == [{"status": "ready", "mode": "shared"}] * 3


def _gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_replica_that_shuts_down_cleanly_costs_the_others_nothing(tmp_path: Path) -> None:
    """A replica stopped with SIGTERM (a rolling update) leaves the heartbeat set: the others do
    not count it as lapsed, so the whole budget stays theirs."""
    with standalone() as redis, fleet(tmp_path, redis.url, replicas=2) as running:
        stop(running.procs[2])  # [0] is the emulator
        time.sleep(2.5)  # past the lapse (0.5 s) and the survivor's next beat
        assert _gauge(running.urls[0], "gateway_fleet_lapsed_replicas") == 0.0
        beats = _gauge(running.urls[0], "gateway_fleet_heartbeats_total")
        assert beats >= 4
