"""Coalescing over 4 replicas on one Redis (issue bars: 1 upstream call; <= 1 per room per TTL).

Cold: 1,000 concurrent reads of one room spread over the replicas (Tencent slowed to 100 ms so
they overlap). Hot: 10 s of reads over 100 rooms from 64 callers.

    python -m bench coalescing
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from tests.fleet import fleet
from tests.redis_servers import standalone
from tests.support import TOKENS, blast

from bench._harness import load


async def cold(urls: list[str]) -> list[int]:
    per = 1000 // len(urls)
    batches = await asyncio.gather(
        *(blast(u, ["/v1/tenants/acme/rooms/room-1"] * per, token=TOKENS["rw"]) for u in urls)
    )
    return [s for batch in batches for s in batch]


def main() -> None:
    with standalone() as redis, fleet(Path(tempfile.mkdtemp()), redis.url, replicas=4, rooms=100) as running:
        running.reset(latency_ms=100)
        statuses = asyncio.run(cold(running.urls))
        calls = running.stats()["calls"].get("get_room_info", 0)
        print(
            f"cold: 1000 concurrent reads of one room over 4 replicas: {statuses.count(200)} answered 200, "
            f"{calls} upstream call(s)"
        )
        running.reset()
        urls = [f"{u}/v1/tenants/acme/rooms/room-{n}" for n in range(1, 101) for u in running.urls]
        result = load(urls, concurrency=64, seconds=10, headers={"Authorization": f"Bearer {TOKENS['rw']}"})
        calls = running.stats()["calls"].get("get_room_info", 0)
        ttl_periods = float(result["seconds"]) / 1.0  # type: ignore[arg-type]
        print(
            f"hot: {result['requests']} reads of 100 rooms in {result['seconds']} s ({result['rps']} req/s): "
            f"{calls} upstream calls = {calls / 100 / ttl_periods:.2f} per room per TTL (1 s)"
        )


if __name__ == "__main__":
    main()
