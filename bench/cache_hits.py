"""Cache-hit reads against a bare Litestar route in the same server, same run (issue bar: >= 0.6).

GET room answered from the cache (auth, validation, cache lookup, metrics, access log) against a
route that returns the same constant bytes (metrics and access log too: the edge wraps both).
Embedded mode (in-process cache) and Redis mode (hits made in one event-loop turn share a
pipeline, and one call per room); reads of one hot room, and spread over 100 rooms. With the
default 1 s TTL each room is refilled from the emulator once a second: the 100-room run with a
60 s TTL is all hits, the one with 1 s includes ~100 misses (fills) a second.

    python -m bench cache_hits        (env: ROUNDS=3 SECONDS=4 CONCURRENCY=64)
"""

from __future__ import annotations

import os
import sys

from tests.redis_servers import standalone
from tests.support import KEY, TOKENS

from bench._harness import GATEWAY, free_port, load, median, process

AUTH = {"Authorization": f"Bearer {TOKENS['rw']}"}


def measure(
    env: dict[str, str], rounds: int, seconds: float, concurrency: int, rooms: int
) -> list[tuple[float, float]]:
    port = free_port()
    with process([sys.executable, "-m", "bench.apps", str(port)], port=port, env=env):
        base = f"http://127.0.0.1:{port}"
        reads = [f"{base}/v1/tenants/acme/rooms/room-{n}" for n in range(1, rooms + 1)]
        load(reads, concurrency=4, seconds=1, headers=AUTH)  # warm
        pairs = []
        targets = {"hit": (reads, AUTH), "bare": ([f"{base}/bare/rooms/room-1"], {})}
        for n in range(rounds):
            # Alternate which goes first, so a drift in the machine's speed favours neither side.
            rps: dict[str, float] = {}
            for which in ("hit", "bare") if n % 2 == 0 else ("bare", "hit"):
                urls, headers = targets[which]
                result = load(urls, concurrency=concurrency, seconds=seconds, headers=headers)
                rps[which] = float(result["rps"])  # type: ignore[arg-type]
            pairs.append((rps["hit"], rps["bare"]))
    return pairs


def main() -> None:
    rounds, seconds = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("SECONDS", "4"))
    concurrency = int(os.environ.get("CONCURRENCY", "64"))
    emu_port = free_port()
    emulator = [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit", "--rooms", "100"]
    env = {
        "BENCH_UPSTREAM": f"http://127.0.0.1:{emu_port}",
        "GATEWAY_LOG_LEVEL": "info",
        "EMULATOR_SECRET_KEY": KEY,
    }
    with process(emulator, port=emu_port, env=env), standalone() as redis:
        for mode, extra in (("embedded", {}), ("redis", {"GATEWAY_REDIS_URL": redis.url})):
            for rooms, ttl in ((1, "1"), (100, "60"), (100, "1")):
                pairs = measure({**env, **extra, "GATEWAY_CACHE_TTL": ttl}, rounds, seconds, concurrency, rooms)
                ratio = median([h / b for h, b in pairs])
                print(
                    f"{mode:8s} {rooms:3d} room(s), TTL {ttl:>2s} s: cache hit {median([h for h, _ in pairs]):7.0f} "
                    "req/s, bare route "
                    f"{median([b for _, b in pairs]):7.0f} req/s: ratio {ratio:.2f} (median of {rounds} paired "
                    f"rounds, {concurrency} connections)"
                )


if __name__ == "__main__":
    main()
