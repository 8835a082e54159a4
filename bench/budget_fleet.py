"""Budget exactness across replicas: N gateway processes on one Redis, 3x the budget offered.

Prints Tencent's (the emulator's) busiest sliding second and the share of the budget used, for
the gateway's GCRA schedule. Needs the test extras (it reuses the test suite's fleet helpers).

    python -m bench budget_fleet        (env: REPLICAS=4 SECONDS=20 RATE=600)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import httpx
from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.support import APP_ID, TOKENS, drive


async def run(replicas: int, seconds: float, rate: float) -> None:
    with (
        standalone() as redis,
        fleet(Path(tempfile.mkdtemp()), redis.url, replicas=replicas, budget_max_wait=1.0) as running,
    ):
        running.reset()
        results = await drive(
            running.urls,
            ["/v1/tenants/acme/rooms/room-1"],
            token=TOKENS["rw"],
            rate=rate,
            seconds=seconds,
            method="PATCH",
            json={"activity_status": 1},
        )
        stats = running.stats()
        missed = sum(_missed(url) for url in running.urls)
    key = f"{APP_ID}:update_room_info"
    arrivals = stats["arrivals"][key]
    steady = arrivals["per_second"][1:-1]  # the first second holds the ramp-up, the last is partial
    used = sum(steady) / len(steady) / 200
    statuses = sorted({s for s, _ in results})
    print(
        f"{replicas} replicas, {rate:.0f}/s offered for {seconds:.0f} s: busiest sliding second at Tencent "
        f"{stats['busiest_second'][key]} (limit 200), budget used in steady state {used:.1%}, 60007s "
        f"{stats['codes'].get('60007', 0)}, slots missed (sent nothing, booked again) {missed:.0f}, "
        f"caller statuses {statuses}"
    )


def _missed(url: str) -> float:
    """The replica's slots forfeited because their call could not leave in its send window."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(_MISSED))


_MISSED = "gateway_budget_slots_missed_total{"


def main() -> None:
    asyncio.run(
        run(
            int(os.environ.get("REPLICAS", "4")),
            float(os.environ.get("SECONDS", "20")),
            float(os.environ.get("RATE", "600")),
        )
    )


if __name__ == "__main__":
    main()
