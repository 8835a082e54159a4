"""Budget exactness across replicas: N gateway processes on one Redis, 3x the budget offered.

Prints Tencent's (the emulator's) busiest sliding second and the share of the budget used, for
the gateway's GCRA schedule. Needs the test extras (it reuses the test suite's fleet helpers).

    python -m bench budget_fleet        (env: REPLICAS=4 SECONDS=20 RATE=600)

The load is offered open loop by ``tests.openloop`` (the test suite's ``drive``);
BENCH_LOADGEN=aiohttp offers it with an aiohttp client instead (the generator until the fifth
session), which takes three times the CPU, on two cores the replicas' (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import tempfile
from pathlib import Path

import aiohttp
import uvloop
from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.support import APP_ID, TOKENS, drive

from bench._harness import Steal

PATH = "/v1/tenants/acme/rooms/room-1"
BODY = {"activity_status": 1}


async def run(replicas: int, seconds: float, rate: float, generator: str) -> None:
    with (
        standalone() as redis,
        fleet(Path(tempfile.mkdtemp()), redis.url, replicas=replicas, budget_max_wait=1.0) as running,
    ):
        running.reset()
        cpu = _cpu()
        with Steal() as steal:
            if generator == "aiohttp":
                results = await _aiohttp(running.urls, rate, seconds)
            else:
                results = await drive(
                    running.urls, [PATH], token=TOKENS["rw"], rate=rate, seconds=seconds, method="PATCH", json=BODY
                )
        cpu = _cpu() - cpu
        stats = running.stats()
        missed = running.counter("gateway_budget_slots_missed_total")
    key = f"{APP_ID}:update_room_info"
    arrivals = stats["arrivals"][key]
    steady = arrivals["per_second"][1:-1]  # the first second holds the ramp-up, the last is partial
    used = sum(steady) / len(steady) / 200
    jitter = float(os.environ.get("GATEWAY_BUDGET_JITTER", "0.017"))
    statuses = sorted({s for s, _ in results})
    print(
        f"{replicas} replicas, {rate:.0f}/s offered for {seconds:.0f} s: busiest sliding second at Tencent "
        f"{stats['busiest_second'][key]} (limit 200), budget used in steady state {used:.1%} (the spacing's "
        f"ceiling: {1 / (1 + jitter):.1%}), 60007s {stats['codes'].get('60007', 0)}, caller statuses {statuses}\n"
        f"  calls a second at Tencent: {steady} (median {statistics.median(steady):g}, the typical second; "
        f"the mean above is the issue's figure)\n"
        f"  slots missed (the replica was off the CPU: it sent nothing and booked again): {missed:.0f}; "
        f"{steal}\n"
        f"  load generator ({generator}): {cpu / len(results) * 1e6:.0f} µs of CPU a request"
    )


async def _aiohttp(urls: list[str], rate: float, seconds: float) -> list[tuple[int, float]]:
    """The same offer from an aiohttp client: a task per request, sleeping until its moment."""
    headers = {"authorization": f"Bearer {TOKENS['rw']}"}
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> tuple[int, float]:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            began = loop.time()
            try:
                async with session.patch(urls[i % len(urls)] + PATH, headers=headers, json=BODY) as response:
                    await response.read()
                    return response.status, loop.time() - began
            except aiohttp.ClientError:
                return 0, loop.time() - began

        return list(await asyncio.gather(*(one(i) for i in range(int(rate * seconds)))))


def _cpu() -> float:
    """CPU seconds this process (the load generator) has spent, user and kernel."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    generator = os.environ.get("BENCH_LOADGEN", "openloop")
    replicas, seconds = int(os.environ.get("REPLICAS", "4")), float(os.environ.get("SECONDS", "20"))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(replicas, seconds, float(os.environ.get("RATE", "600")), generator))


if __name__ == "__main__":
    main()
