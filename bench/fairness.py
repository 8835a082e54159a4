"""Fair share between callers (SPEC §7), fleet-wide: 2 replicas on one Redis, open-loop load.

One run, the same load generator for every column:
- checkout (20% of the budget) alone, then beside a batch writer at 3× the budget (equal
  weights), each caller spread over both replicas and then pinned to one replica each: checkout's
  success rate and p50/p99, and the ratio of its p99 beside the writer to its p99 alone;
- weights 3:1, both callers at 2× the budget: the writer's share of the successes (target 0.75).

    python -m bench fairness        (env: SECONDS=6)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from tests.fleet import Fleet, fleet
from tests.redis_servers import standalone
from tests.support import APP_ID, TOKENS, drive

WRITE = {"method": "PATCH", "json": {"activity_status": 1}}
PATHS = [f"/v1/tenants/acme/rooms/room-{n}" for n in (1, 2, 3)]


async def offer(
    running: Fleet, spread: str, rates: dict[str, float], seconds: float
) -> dict[str, list[tuple[int, float]]]:
    """Each caller ("wo": the writer, "rw": checkout) at its rate, at once."""
    urls = (
        {"wo": running.urls, "rw": running.urls}
        if spread == "even"
        else {"wo": running.urls[:1], "rw": running.urls[1:]}
    )
    runs = [
        drive(urls[who], PATHS, token=TOKENS[who], rate=rate, seconds=seconds, **WRITE)  # type: ignore[arg-type]
        for who, rate in rates.items()
    ]
    return dict(zip(rates, await asyncio.gather(*runs), strict=True))


def latency(results: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Success rate, p50 and p99 in ms."""
    took = sorted(seconds for _, seconds in results)
    ok = sum(status == 204 for status, _ in results) / max(len(results), 1)
    return ok, statistics.median(took) * 1000, took[int(0.99 * (len(took) - 1))] * 1000


def main() -> None:
    seconds = float(os.environ.get("SECONDS", "6"))
    with standalone() as redis:
        with fleet(Path(tempfile.mkdtemp()), redis.url, replicas=2, budget_max_wait=1.0) as running:
            for spread in ("even", "pinned"):
                running.reset()
                alone = asyncio.run(offer(running, spread, {"rw": 40}, seconds))["rw"]
                running.reset()
                both = asyncio.run(offer(running, spread, {"wo": 600, "rw": 40}, seconds))
                busiest = running.stats()["busiest_second"][f"{APP_ID}:update_room_info"]
                a, b = latency(alone), latency(both["rw"])
                writer_ok = sum(status == 204 for status, _ in both["wo"])
                print(
                    f"{spread:6s} checkout alone: {a[0]:.1%} ok, p50 {a[1]:.1f} ms, p99 {a[2]:.1f} ms; beside the "
                    f"writer at 3x: {b[0]:.1%} ok, p50 {b[1]:.1f} ms, p99 {b[2]:.1f} ms; p99 ratio {b[2] / a[2]:.2f}; "
                    f"writer {writer_ok} ok; Tencent's busiest second {busiest}"
                )
        with fleet(
            Path(tempfile.mkdtemp()), redis.url, replicas=2, budget_max_wait=1.0, weights={"writer": 3}
        ) as running:
            for spread in ("even", "pinned"):
                running.reset()
                both = asyncio.run(offer(running, spread, {"wo": 400, "rw": 400}, seconds))
                ok = {who: sum(status == 204 for status, _ in results) for who, results in both.items()}
                busiest = running.stats()["busiest_second"][f"{APP_ID}:update_room_info"]
                print(
                    f"{spread:6s} weights 3:1, both at 2x: writer {ok['wo']}, checkout {ok['rw']}: "
                    f"{ok['wo'] / (ok['wo'] + ok['rw']):.3f} to the writer (target 0.75); busiest second {busiest}"
                )


if __name__ == "__main__":
    main()
